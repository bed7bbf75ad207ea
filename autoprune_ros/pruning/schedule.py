"""AutoPrune's per-sample token schedule: layer-0 keep, logistic retention curve, budget solve (reference §4-§5).

All arithmetic is plain Python floats/ints so the plan is bit-for-bit the authors' simulation. Layer indices are
0-based decoder layers; every per-layer list has length ``num_layers`` and index ``l`` is layer ``l``. Lists that
have no meaning at layer 0 (the curve and the keep fractions) hold ``float('nan')`` there, so misusing that slot
fails loudly (``math.ceil(nan)`` raises) instead of silently producing a count.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AMPLITUDE",
    "BISECTION_HIGH",
    "BISECTION_ITERATIONS",
    "BISECTION_TOLERANCE",
    "LAYER0_MULTIPLIER",
    "RECYCLE_FRACTION",
    "X0",
    "SchedulePlan",
    "keep_count",
    "layer0_keep",
    "plan_keep_fractions",
    "plan_schedule",
    "plan_token_counts",
    "recycle_sizes",
    "recycled_count",
    "retention_curve",
    "simulate_counts",
    "solve_scale",
]

LAYER0_MULTIPLIER = 2.5  # K0 = min(int(2.5*T), Nv), reference §4.7
X0 = 14.9  # logistic shift; the midpoint is x0 + k, reference §5.4
AMPLITUDE = 0.75  # logistic amplitude, reference §5.4
RECYCLE_FRACTION = 0.3  # top 30% (+1) of the pruned tokens are recycled, reference §6.4
BISECTION_HIGH = 20.0  # scale searched in [0, 20], reference §5.5
BISECTION_ITERATIONS = 200
BISECTION_TOLERANCE = 0.01


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_budget(num_visual: int, budget: float) -> float:
    budget = _check_finite("budget", budget)
    if budget <= 0:
        raise ValueError(f"budget T={budget} must be > 0")
    if budget > num_visual:
        raise ValueError(f"budget T={budget} is above the visual-token count Nv={num_visual}")
    return budget


def _check_slope(slope: float) -> float:
    slope = _check_finite("slope", slope)
    if slope < 0:
        raise ValueError(f"negative slope k={slope}: the retention curve must not increase with depth")
    return slope


def layer0_keep(num_visual: int, budget: float) -> int:
    """K0 = min(int(2.5*T), Nv): visual tokens kept after layer 0 (reference §4.7).

    Nv = 576: T = 64/128/192 -> 160/320/480. K0 is also the base of every later keep count (``K0 - 1``).
    """
    num_visual = _check_int("num_visual", num_visual, 1)
    budget = _check_budget(num_visual, budget)
    return min(int(LAYER0_MULTIPLIER * budget), num_visual)


def _logistic(amplitude: float, z: float) -> float:
    try:
        return amplitude / (1.0 + math.exp(z))
    except OverflowError:  # exp(z) = inf: the curve has reached 0 (what a float64 array library would give)
        return 0.0


def retention_curve(num_layers: int, slope: float, *, x0: float = X0, amplitude: float = AMPLITUDE) -> list[float]:
    """rho(l) = A / (1 + exp(k*(l - (x0 + k)))) for l = 1..L-1 (reference §5.4); index 0 is NaN (unused).

    The midpoint is x0 + k, not x0 (as in the authors' code). Decreasing in l for k > 0, flat at A/2 for k = 0.
    """
    num_layers = _check_int("num_layers", num_layers, 1)
    slope = _check_slope(slope)
    x0 = _check_finite("x0", x0)
    amplitude = _check_finite("amplitude", amplitude)
    if amplitude <= 0:
        raise ValueError(f"amplitude must be > 0, got {amplitude}")
    midpoint = x0 + slope
    return [math.nan] + [_logistic(amplitude, slope * (layer - midpoint)) for layer in range(1, num_layers)]


def recycle_sizes(pruned: int, fraction: float = RECYCLE_FRACTION) -> tuple[int, int]:
    """(m, c) for ``pruned`` = d pruned tokens: m = int(0.3*d)+1 recycled into c = min(int(m/10)+1, m) clusters.

    Reference §5.5 / §6.4; (0, 0) when nothing is pruned. m never exceeds d (only relevant for fraction near 1).
    """
    pruned = _check_int("pruned", pruned, 0)
    if pruned == 0:
        return 0, 0
    m = min(int(fraction * pruned) + 1, pruned)
    return m, min(m // 10 + 1, m)


def recycled_count(pruned: int) -> int:
    """Merged tokens re-inserted when ``pruned`` tokens are dropped: 0 if d == 0 else min(m//10 + 1, m)."""
    return recycle_sizes(pruned)[1]


def keep_count(k0_keep: int, fraction: float, current: int) -> int:
    """Run-time keep rule n_keep = min(ceil((K0-1)*r_l), V_{l-1}) (reference §6.3), floored at 0.

    ``fraction`` is the unclipped r_l = s*rho(l); the ``min`` with the current count does the clipping. The floor
    only matters for the degenerate K0 = 0 (T < 0.4), where the authors' formula would give -1.
    """
    return max(0, min(math.ceil((k0_keep - 1) * fraction), current))


def _check_curve(num_layers: int, curve: Sequence[float]) -> None:
    if len(curve) != num_layers:
        raise ValueError(f"curve has {len(curve)} entries, expected num_layers={num_layers} (index 0 unused)")


def simulate_counts(
    num_layers: int,
    num_visual: int,
    k0_keep: int,
    scale: float,
    curve: Sequence[float],
    *,
    recycle: bool = True,
    cap: int | None = None,
) -> list[int]:
    """The authors' budget simulation (reference §5.5): visual count after pruning at layers 0..L-1.

    keep_l = min(ceil((K0-1)*min(1, s*rho(l))), cap); d = cur - keep_l; cur = keep_l + recycled(d).
    ``cap`` defaults to Nv; the solver passes min(int(2.5*L*T), Nv) as the authors do (it never binds, since
    keep_l <= K0 - 1 < Nv). Keeps are floored at 0 (only reachable when K0 = 0).
    """
    _check_curve(num_layers, curve)
    cap = num_visual if cap is None else cap
    counts = [k0_keep]
    cur = k0_keep
    for layer in range(1, num_layers):
        keep = max(0, min(math.ceil((k0_keep - 1) * min(1.0, scale * curve[layer])), cap))
        pruned = cur - keep
        cur = keep + (recycled_count(pruned) if recycle and pruned > 0 else 0)
        counts.append(cur)
    return counts


def solve_scale(
    num_layers: int,
    num_visual: int,
    k0_keep: int,
    curve: Sequence[float],
    budget: float,
    *,
    recycle: bool = True,
) -> float:
    """Scale s of the curve so that the simulated total meets L*T (reference §5.5).

    s = 1 when |total(1) - L*T| < 1; otherwise bisection over [0, 20] (at most 200 iterations; total < L*T moves
    the low end up, else the high end down), returning the first mid with the smallest |total - L*T| and stopping
    early once that error is < 0.01. total(s) is non-decreasing in s, so the result is the achievable total
    closest to L*T (the largest one when L*T is above every achievable total, the smallest when below).
    """
    _check_curve(num_layers, curve)
    target = num_layers * budget
    cap = min(int(LAYER0_MULTIPLIER * target), num_visual)

    def total(scale: float) -> int:
        return sum(simulate_counts(num_layers, num_visual, k0_keep, scale, curve, recycle=recycle, cap=cap))

    if abs(total(1.0) - target) < 1:
        return 1.0
    low, high = 0.0, BISECTION_HIGH
    best_scale, best_error = 1.0, math.inf
    for _ in range(BISECTION_ITERATIONS):
        mid = (low + high) / 2
        mid_total = total(mid)
        err = abs(mid_total - target)
        if err < best_error:
            best_scale, best_error = mid, err
        if best_error < BISECTION_TOLERANCE:
            break
        new_low, new_high = (mid, high) if mid_total < target else (low, mid)
        if (new_low, new_high) == (low, high):
            # Fixed point: every later iteration re-evaluates this same mid and cannot change the result.
            break
        low, high = new_low, new_high
    return best_scale


@dataclass(frozen=True)
class SchedulePlan:
    """One sample's schedule: K0, the solved scale, keep fractions r_l = s*rho(l) and the planned counts.

    ``keep_fractions[l]`` (l >= 1) is unclipped, as the authors return it; index 0 is NaN. ``counts[l]`` is the
    visual-token count after pruning at layer l (counts[0] = K0); mean(counts) is the "avg tokens" statistic.
    """

    num_layers: int
    num_visual: int
    budget: float
    slope: float
    k0_keep: int
    scale: float
    keep_fractions: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def mean_tokens(self) -> float:
        return sum(self.counts) / self.num_layers


def plan_schedule(
    num_layers: int,
    num_visual: int,
    budget: float,
    slope: float,
    *,
    x0: float = X0,
    amplitude: float = AMPLITUDE,
    recycle: bool = True,
) -> SchedulePlan:
    """Plan one sample (reference §4.7, §5.4-5.6). With L = 1 there is no layer 1, so no solve (scale = 1)."""
    num_layers = _check_int("num_layers", num_layers, 1)
    num_visual = _check_int("num_visual", num_visual, 1)
    k0_keep = layer0_keep(num_visual, budget)
    budget = float(budget)
    curve = retention_curve(num_layers, slope, x0=x0, amplitude=amplitude)
    if num_layers == 1:
        scale = 1.0
    else:
        scale = solve_scale(num_layers, num_visual, k0_keep, curve, budget, recycle=recycle)
    counts = simulate_counts(num_layers, num_visual, k0_keep, scale, curve, recycle=recycle)
    fractions = (math.nan, *(scale * rho for rho in curve[1:]))
    return SchedulePlan(num_layers, num_visual, budget, float(slope), k0_keep, scale, fractions, tuple(counts))


def plan_token_counts(
    num_layers: int,
    num_visual: int,
    budget: float,
    slope: float,
    *,
    x0: float = X0,
    amplitude: float = AMPLITUDE,
    recycle: bool = True,
) -> list[int]:
    """Visual-token count after pruning at each decoder layer 0..L-1, as the authors compute it (reference §5.5).

    Layer 0 keeps K0; the curve's scale is bisected so that the mean over layers meets the budget T; recycled
    (merged) tokens are counted.
    """
    plan = plan_schedule(num_layers, num_visual, budget, slope, x0=x0, amplitude=amplitude, recycle=recycle)
    return list(plan.counts)


def plan_keep_fractions(
    num_layers: int,
    num_visual: int,
    budget: float,
    slope: float,
    *,
    x0: float = X0,
    amplitude: float = AMPLITUDE,
    recycle: bool = True,
) -> list[float]:
    """Keep fractions r_l = s*rho(l), unclipped, indexed by layer (index 0 NaN) (reference §5.5-5.6).

    A pruner applies ``keep_count(K0, r[l], V_{l-1})`` at layer l; with recycling this reproduces
    ``plan_token_counts`` exactly.
    """
    plan = plan_schedule(num_layers, num_visual, budget, slope, x0=x0, amplitude=amplitude, recycle=recycle)
    return list(plan.keep_fractions)
