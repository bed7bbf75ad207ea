"""AutoPrune's token schedule reproduces the authors' simulation (reference §4.7, §5, §10).

Feasibility (used by the budget tests). total(s) = sum of the simulated counts is a non-decreasing step function
of the scale s: each keep_l = ceil((K0-1)*min(1, s*rho(l))) is non-decreasing in s, and one more kept token or one
more token entering a layer changes that layer's count by 0 or +1 (a recycled count grows by at most 1 per pruned
token). The solver probes s in (0, 20], so the achievable totals run from
  t_min = total(s -> 0+): every layer l >= 1 keeps 1 token (ceil of a tiny positive number) plus its recycled ones,
  t_max = total(20): the flattest schedule the search allows.
When t_min <= L*T <= t_max the bisection ends on two adjacent floats lo < hi with total(lo) < L*T <= total(hi), both
probed; between them each of the L-1 keeps moves by at most one, so total(hi) - total(lo) <= L-1 and the chosen total
is within (L-1)/2 of L*T (within 1 via the s = 1 shortcut): the mean is within max((L-1)/2, 1)/L <= 0.5 token of T.
Outside that range the budget is infeasible and the solver returns the closest achievable total (t_min or t_max).
Genuinely infeasible cases exist: L = 1 (the mean is K0 = int(2.5*T)), very few layers, or T near Nv with a steep
curve (20*rho(l) < 1 for deep layers).
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune_ros.pruning.flops import prefill_flops, sequence_lengths, visual_counts_entering
from autoprune_ros.pruning.schedule import (
    keep_count,
    layer0_keep,
    plan_keep_fractions,
    plan_schedule,
    plan_token_counts,
    recycle_sizes,
    recycled_count,
    retention_curve,
    simulate_counts,
    solve_scale,
)

L7B, NV, D7B, M7B = 32, 576, 4096, 11008


def totals_range(num_layers: int, num_visual: int, budget: float, slope: float) -> tuple[int, int]:
    """(t_min, t_max): the smallest and largest totals the solver can reach (see the module docstring)."""
    k0 = layer0_keep(num_visual, budget)
    curve = retention_curve(num_layers, slope)
    low = sum(simulate_counts(num_layers, num_visual, k0, 20.0 * 2.0**-200, curve))
    high = sum(simulate_counts(num_layers, num_visual, k0, 20.0, curve))
    return low, high


def literal_solve(num_layers: int, num_visual: int, k0: int, curve: list[float], budget: float) -> float:
    """Reference §5.5 word for word: no shortcut beyond the documented ones, all 200 iterations."""
    target = num_layers * budget

    def total(scale: float) -> int:
        return sum(simulate_counts(num_layers, num_visual, k0, scale, curve,
                                   cap=min(int(2.5 * target), num_visual)))

    if abs(total(1.0) - target) < 1:
        return 1.0
    low, high, best, best_err = 0.0, 20.0, None, math.inf
    for _ in range(200):
        mid = (low + high) / 2
        t = total(mid)
        if abs(t - target) < best_err:
            best, best_err = mid, abs(t - target)
        if best_err < 0.01:
            break
        if t < target:
            low = mid
        else:
            high = mid
    return best


def replay(plan, recycle: bool = True) -> list[int]:
    """What a pruner does at run time with the keep fractions: n_keep = min(ceil((K0-1)*r_l), V), + recycled.

    Without recycling the fraction must be clipped at 1 first (as the simulation does): otherwise layer 1 would
    keep all K0 tokens where the plan keeps K0 - 1.
    """
    counts = [plan.k0_keep]
    for layer in range(1, plan.num_layers):
        current = counts[-1]
        fraction = plan.keep_fractions[layer] if recycle else min(1.0, plan.keep_fractions[layer])
        kept = keep_count(plan.k0_keep, fraction, current)
        counts.append(kept + (recycled_count(current - kept) if recycle else 0))
    return counts


# ---- worked checks: LLaVA-1.5-7B (L = 32, Nv = 576) -------------------------------------------------------------


@pytest.mark.parametrize(("budget", "k0"), [(64, 160), (128, 320), (192, 480), (576, 576), (0.5, 1), (0.3, 0)])
def test_layer0_keep(budget: float, k0: int) -> None:
    assert layer0_keep(NV, budget) == k0


def test_layer0_keep_llava_next() -> None:
    assert [layer0_keep(2880, t) for t in (160, 320, 640)] == [400, 800, 1600]


@pytest.mark.parametrize("budget", [64, 128, 192])
@pytest.mark.parametrize("slope", [0.0, 0.1, 0.2, 0.3, 0.4])
def test_llava_mean_meets_budget(budget: int, slope: float) -> None:
    # Feasible here: L*T lies inside [t_min, t_max], so the mean is within (L-1)/(2L) < 0.5 token of T.
    t_min, t_max = totals_range(L7B, NV, budget, slope)
    assert t_min <= L7B * budget <= t_max
    counts = plan_token_counts(L7B, NV, budget, slope)
    assert len(counts) == L7B and counts[0] == layer0_keep(NV, budget)
    assert abs(sum(counts) / L7B - budget) <= 0.5
    if slope > 0:  # the curve is strictly decreasing, one keep moves at a time: the budget is met exactly
        assert sum(counts) == L7B * budget


def test_flat_curve_at_zero_slope() -> None:
    curve = retention_curve(L7B, 0.0)
    assert math.isnan(curve[0]) and curve[1:] == [0.375] * (L7B - 1)
    plan = plan_schedule(L7B, NV, 64, 0.0)
    assert list(plan.keep_fractions[1:]) == [0.375 * plan.scale] * (L7B - 1)
    # Same keep at every layer: after layer 1's big drop the count settles at keep + recycled(small d).
    assert len(set(plan.counts[2:])) == 1


def test_curve_midpoint_is_x0_plus_k() -> None:
    k = 0.4
    curve = retention_curve(40, k, x0=14.9)
    # rho(x0 + k) would be exactly A/2; layers 15 and 16 straddle the midpoint 15.3.
    assert curve[15] > 0.375 > curve[16]
    assert curve[15] == pytest.approx(0.75 / (1 + math.exp(k * (15 - 15.3))))
    assert all(a > b for a, b in zip(curve[1:], curve[2:], strict=False))


def test_steep_curve_does_not_overflow() -> None:
    curve = retention_curve(200, 50.0)  # exp(50*(199 - 64.9)) overflows a float: the curve is 0 there
    assert curve[199] == 0.0 and curve[1] == 0.75


@pytest.mark.parametrize("d", range(0, 400))
def test_recycled_count_formula(d: int) -> None:
    m = int(0.3 * d) + 1
    assert recycled_count(d) == (0 if d == 0 else min((int(0.3 * d) + 1) // 10 + 1, m))
    assert recycle_sizes(d) == ((0, 0) if d == 0 else (m, min(m // 10 + 1, m)))
    assert recycled_count(d) <= d


def test_known_recycled_counts() -> None:
    # d=4: m=int(1.2)+1=2 -> c=1; d=30: m=10 -> c=2; d=64: m=20 -> c=3; d=416: m=125 -> c=13.
    assert [recycled_count(d) for d in (0, 1, 2, 3, 4, 29, 30, 63, 64, 416)] == [0, 1, 1, 1, 1, 1, 2, 2, 3, 13]


def test_solver_shortcut_and_bisection() -> None:
    k0 = layer0_keep(NV, 64)
    curve = retention_curve(L7B, 0.4)
    scale = solve_scale(L7B, NV, k0, curve, 64)
    assert scale == literal_solve(L7B, NV, k0, curve, 64)
    assert 0 < scale < 20 and sum(simulate_counts(L7B, NV, k0, scale, curve)) == L7B * 64
    # Budget chosen as the s = 1 total: no search.
    total_at_one = sum(simulate_counts(L7B, NV, k0, 1.0, curve))
    assert solve_scale(L7B, NV, k0, curve, total_at_one / L7B + 0.01) == 1.0


def test_cap_never_binds() -> None:
    k0 = layer0_keep(NV, 64)
    curve = retention_curve(L7B, 0.2)
    for scale in (0.01, 0.5, 1.0, 3.0, 20.0):
        assert simulate_counts(L7B, NV, k0, scale, curve) == simulate_counts(L7B, NV, k0, scale, curve, cap=k0 - 1)


def test_recycling_off() -> None:
    counts = plan_token_counts(L7B, NV, 64, 0.4, recycle=False)
    assert sum(counts) == L7B * 64
    assert counts != plan_token_counts(L7B, NV, 64, 0.4)


# ---- infeasible budgets: the closest achievable total -----------------------------------------------------------


def test_single_layer_is_layer0_only() -> None:
    plan = plan_schedule(1, NV, 64, 0.4)
    assert plan.counts == (160,) and plan.scale == 1.0 and len(plan.keep_fractions) == 1
    assert math.isnan(plan.keep_fractions[0])


def test_budget_above_reach_returns_largest_total() -> None:
    # T = Nv with a steep curve: deep layers keep ~1 token even at s = 20, so L*Nv is out of reach.
    t_min, t_max = totals_range(L7B, NV, NV, 0.4)
    assert t_max < L7B * NV
    counts = plan_token_counts(L7B, NV, NV, 0.4)
    assert sum(counts) == t_max


def test_budget_below_reach_returns_smallest_total() -> None:
    # Two layers: K0 = 250 alone is above 2*T = 200.
    t_min, _ = totals_range(2, NV, 100, 0.4)
    assert t_min > 200
    assert sum(plan_token_counts(2, NV, 100, 0.4)) == t_min == 250 + 1 + recycled_count(249)


def test_tiny_budget_and_tiny_nv() -> None:
    assert plan_token_counts(32, 1, 1, 0.4) == [1] * 32  # K0 = 1: keep 0, recycle the one pruned token
    assert plan_token_counts(32, 576, 0.3, 0.4) == [0] * 32  # K0 = 0: nothing to keep (keeps floored at 0)
    assert plan_token_counts(5, 2, 0.5, 0.0) == [1] * 5


# ---- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    ((0, 576, 64, 0.4), "num_layers must be >= 1"),
    ((32, 0, 64, 0.4), "num_visual must be >= 1"),
    ((32, 576, 0, 0.4), "must be > 0"),
    ((32, 576, -1, 0.4), "must be > 0"),
    ((32, 576, 600, 0.4), r"budget T=600.0 is above the visual-token count Nv=576"),
    ((32, 576, 64, -0.1), "negative slope"),
    ((32, 576, math.nan, 0.4), "budget must be finite"),
    ((32, 576, 64, math.inf), "slope must be finite"),
    ((32.0, 576, 64, 0.4), "num_layers must be an int"),
    ((True, 576, 64, 0.4), "num_layers must be an int"),
])
def test_invalid_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_token_counts(*args)


def test_invalid_curve_options() -> None:
    with pytest.raises(ValueError, match="amplitude must be > 0"):
        retention_curve(32, 0.4, amplitude=0.0)
    with pytest.raises(ValueError, match="x0 must be finite"):
        retention_curve(32, 0.4, x0=math.nan)
    with pytest.raises(ValueError, match="expected num_layers=32"):
        simulate_counts(32, NV, 160, 1.0, [0.5] * 31)


# ---- FLOPs consistency with the reported numbers (reference §10) ---------------------------------------------------


def flops_ratios(budget: int, slope: float) -> list[float]:
    """Pruned / unpruned prefill FLOPs (%) for P = 35 and 35..40 text tokens, LLaVA-1.5-7B shapes."""
    counts = plan_token_counts(L7B, NV, budget, slope)
    entering = visual_counts_entering(NV, counts)
    return [100 * prefill_flops(sequence_lengths(35, text, entering), D7B, M7B)
            / prefill_flops(sequence_lengths(35, text, [NV] * L7B), D7B, M7B) for text in range(35, 41)]


REPORTED_BANDS = {192: (42.9, 43.3), 128: (32.9, 33.4), 64: (23.1, 23.7)}


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_flops_band_reproduced_at_slope_0_3(budget: int) -> None:
    # k = 0.3 (MI1 = 0.5 bit) reproduces the reference's re-simulated bands to 0.1 pp for all three budgets
    # (measured: 42.85-43.28 / 32.95-33.45 / 23.12-23.69; only k in about [0.29, 0.30] rounds to all three).
    ratios = flops_ratios(budget, 0.3)
    low, high = REPORTED_BANDS[budget]
    assert low - 0.05 <= min(ratios) and max(ratios) <= high + 0.05


@pytest.mark.parametrize("budget", [192, 128, 64])
@pytest.mark.parametrize("slope", [0.2, 0.25, 0.3, 0.35, 0.4])
def test_flops_band_over_plausible_slopes(budget: int, slope: float) -> None:
    # Over k in [0.2, 0.4] (MI1 <= 1 bit) every ratio stays within 0.15 pp of the band; a flat curve (k = 0)
    # falls below it at T = 192 (41.8-42.3%), so the band implies a real slope.
    low, high = REPORTED_BANDS[budget]
    ratios = flops_ratios(budget, slope)
    assert low - 0.15 <= min(ratios) and max(ratios) <= high + 0.15


def test_flat_curve_misses_the_192_band() -> None:
    assert max(flops_ratios(192, 0.0)) < REPORTED_BANDS[192][0] - 0.5


# ---- properties --------------------------------------------------------------------------------------------------


@st.composite
def schedules(draw) -> tuple[int, int, float, float]:
    num_layers = draw(st.integers(1, 48))
    num_visual = draw(st.integers(1, 3000))
    budget = draw(st.one_of(st.integers(1, num_visual),
                            st.floats(0, num_visual, exclude_min=True, allow_nan=False, allow_infinity=False)))
    slope = draw(st.floats(0, 2, allow_nan=False, allow_infinity=False))
    return num_layers, num_visual, budget, slope


@settings(max_examples=250, deadline=None)
@given(schedules())
def test_plan_properties(case: tuple[int, int, float, float]) -> None:
    num_layers, num_visual, budget, slope = case
    plan = plan_schedule(num_layers, num_visual, budget, slope)
    counts = list(plan.counts)
    assert counts == plan_token_counts(*case)
    assert len(counts) == num_layers and len(plan.keep_fractions) == num_layers
    assert counts[0] == plan.k0_keep == layer0_keep(num_visual, budget)
    assert all(0 <= c <= num_visual for c in counts)
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))  # non-increasing from layer 0 on
    assert replay(plan) == counts  # the run-time keep rule with the unclipped fractions gives the same counts
    plain = plan_schedule(num_layers, num_visual, budget, slope, recycle=False)
    assert replay(plain, recycle=False) == list(plain.counts)
    assert all(a >= b for a, b in zip(plain.counts, plain.counts[1:], strict=False))
    if num_layers == 1:
        return
    target, total = num_layers * plan.budget, sum(counts)
    t_min, t_max = totals_range(num_layers, num_visual, budget, slope)
    if target < t_min:
        assert total == t_min
    elif target > t_max:
        assert total == t_max
    else:
        assert abs(total - target) <= max((num_layers - 1) / 2, 1)
        assert abs(total / num_layers - plan.budget) <= 0.5


@settings(max_examples=60, deadline=None)
@given(schedules())
def test_solver_matches_literal_bisection(case: tuple[int, int, float, float]) -> None:
    num_layers, num_visual, budget, slope = case
    k0 = layer0_keep(num_visual, budget)
    curve = retention_curve(num_layers, slope)
    assert solve_scale(num_layers, num_visual, k0, curve, float(budget)) == literal_solve(
        num_layers, num_visual, k0, curve, float(budget))


def test_keep_fractions_api() -> None:
    fractions = plan_keep_fractions(L7B, NV, 128, 0.3)
    plan = plan_schedule(L7B, NV, 128, 0.3)
    assert len(fractions) == L7B and math.isnan(fractions[0])
    assert fractions[1:] == [plan.scale * rho for rho in retention_curve(L7B, 0.3)[1:]]
    assert plan.mean_tokens == 128
