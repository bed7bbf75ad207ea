"""Latency governor: cost model, budget choice, hysteresis, infeasibility, complexity-aware mode (simulated time)."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprune_ros.runtime.governor import CostModel, LatencyGovernor, TailEstimator
from autoprune_ros.runtime.latency_sim import (
    SimulatedModel,
    compare_complexity_allocation,
    oracle_budget,
    simulate_governor,
    summarize,
)

L = 32  # decoder layers: x = T * L kept token-layers
DEADLINE = 100.0
A_MS, B_PER_TOKEN, NOISE = 30.0, 0.1, 2.0  # model: 30 ms + 0.1 ms per visual token, sigma 2 ms
PRE, PRE_NOISE, POST, POST_NOISE = 10.0, 1.0, 5.0, 0.5


def _setup(seed: int, *, calibrate: bool = True, deadline: float = DEADLINE, **kwargs):
    governor = LatencyGovernor(deadline, 16, 576, L, **kwargs)
    model = SimulatedModel(A_MS, B_PER_TOKEN / L, NOISE, np.random.default_rng(seed))
    pre = SimulatedModel(PRE, 0.0, PRE_NOISE, np.random.default_rng(seed + 100))
    post = SimulatedModel(POST, 0.0, POST_NOISE, np.random.default_rng(seed + 200))
    if calibrate:
        governor.calibrate((t, model.run(L * t)) for t in np.linspace(16, 576, 30).astype(int))
    return governor, model, pre, post


def _oracle(model: SimulatedModel, q: float, deadline: float = DEADLINE, post_noise: float = POST_NOISE,
            post: float = POST) -> int:
    """Largest budget whose true q-quantile frame latency (model + pre + post, all Gaussian) fits."""
    best = oracle_budget(model, deadline, lambda t: L * t, 16, 576, q, overhead_mean_ms=PRE + post,
                         overhead_std_ms=math.hypot(PRE_NOISE, post_noise))
    assert best is not None
    return best


# ---- cost model ------------------------------------------------------------------------------------------------
def test_tail_estimator_covers_gaussian_quantile():
    est = TailEstimator(window=100, quantile=0.99)
    assert est.tail == 0.0
    rng = np.random.default_rng(0)
    for v in rng.normal(10.0, 2.0, 500):
        est.update(v)
    assert len(est) == 100
    assert 10.0 + 2.0 * 2.0 < est.tail < 10.0 + 2.0 * 3.2  # true p99 = 14.65


def test_cost_model_calibration_recovers_a_and_b_despite_outliers():
    rng = np.random.default_rng(1)
    x = rng.uniform(16 * L, 576 * L, 200)
    y = 20.0 + 0.004 * x + rng.normal(0.0, 1.0, 200)
    y[::25] += 200.0  # a few wild frames (GC pauses) must not bend the fit
    model = CostModel()
    model.calibrate(zip(x, y, strict=True))
    assert model.a == pytest.approx(20.0, abs=1.0)
    assert model.b == pytest.approx(0.004, rel=0.05)
    assert model.predict(10_000) == pytest.approx(60.0, abs=1.0)
    assert model.predict_tail(10_000) > model.predict(10_000)


def test_cost_model_online_rls_recovers_a_and_b_without_calibration():
    rng = np.random.default_rng(2)
    model = CostModel(forgetting=0.98)
    for x in rng.uniform(512, 18432, 300):
        model.update(x, 20.0 + 0.004 * x + rng.normal(0.0, 1.0))
    assert model.a == pytest.approx(20.0, abs=1.5)
    assert model.b == pytest.approx(0.004, rel=0.08)
    assert model.margin == pytest.approx(NormalDist().inv_cdf(0.99), rel=0.35)  # p99 of N(0, 1) residuals


def test_cost_model_degenerate_fits():
    flat = CostModel()
    flat.calibrate([(1000.0, 50.0 + d) for d in (-1.0, 0.0, 1.0, 0.5)])  # no spread in x
    assert flat.b == 0.0 and flat.a == pytest.approx(50.125)
    prior = CostModel(slope_prior=0.01)
    prior.calibrate([(1000.0, 50.0), (1000.0, 52.0)])
    assert prior.b == pytest.approx(0.01) and prior.predict(1000.0) == pytest.approx(51.0)
    falling = CostModel()
    falling.calibrate([(x, 100.0 - 0.01 * x) for x in range(0, 2000, 100)])  # latency falling with tokens
    assert falling.b == 0.0 and falling.a == pytest.approx(90.5)
    with pytest.raises(ValueError, match="at least one"):
        CostModel().calibrate([(float("nan"), 1.0)])


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_cost_model_follows_a_clock_change_within_a_few_frames(factor):
    rng = np.random.default_rng(3)
    sim = SimulatedModel(30.0, 0.1 / L, 1.0, rng)
    model = CostModel()
    model.calibrate((L * t, sim.run(L * t)) for t in np.linspace(16, 576, 30))
    for _ in range(100):
        x = L * rng.uniform(400, 450)
        model.update(x, sim.run(x))
    sim.scale = factor
    errors = []
    for _ in range(60):
        x = L * rng.uniform(400, 450)
        errors.append(abs(model.predict(x) / sim.mean_ms(x) - 1.0))
        model.update(x, sim.run(x))
    assert model.changes == 1
    assert max(errors[3:]) < 0.08  # within 8% of the new cost from the 4th frame on
    assert model.predict(L * 200) == pytest.approx(sim.mean_ms(L * 200), rel=0.1)  # the whole curve rescaled


def test_cost_model_tracks_a_small_drift_by_forgetting():
    rng = np.random.default_rng(4)
    sim = SimulatedModel(30.0, 0.1 / L, 1.0, rng)
    model = CostModel()
    model.calibrate((L * t, sim.run(L * t)) for t in np.linspace(16, 576, 30))
    sim.scale = 1.1  # below the change threshold: no reset, RLS forgetting follows it
    for _ in range(80):
        x = L * rng.uniform(400, 450)
        model.update(x, sim.run(x))
    assert model.changes == 0
    assert model.predict(L * 425) == pytest.approx(sim.mean_ms(L * 425), rel=0.02)


def test_one_fast_outlier_does_not_lower_predictions():
    model = CostModel()
    model.calibrate((x, 20.0 + 0.004 * x + 0.3 * ((i % 5) - 2)) for i, x in enumerate(range(512, 18432, 300)))
    before = model.predict(10_000)
    model.update(10_000, 10.0)  # a single implausibly fast frame
    assert model.predict(10_000) == pytest.approx(before) and model.changes == 0


# ---- governor in the loop --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feasible_budget_has_no_misses_and_tracks_the_oracle(seed):
    governor, model, pre, post = _setup(seed)
    records = simulate_governor(governor, model, 550, pre=pre, post=post)
    stats = summarize(records, 50)
    oracle = _oracle(model, governor.cost.quantile)
    assert stats["misses"] == 0 and stats["infeasible"] == 0
    assert stats["p99_ms"] < DEADLINE
    assert 0.85 * oracle <= stats["mean_budget"] <= 1.02 * oracle  # not wastefully low, not over the tail limit
    assert all(16 <= r.budget <= 576 for r in records)
    assert governor.misses == 0 and governor.frames == 550


def test_uncalibrated_start_ramps_up_without_misses():
    governor, model, pre, post = _setup(5, calibrate=False)
    records = simulate_governor(governor, model, 300, pre=pre, post=post)
    assert records[0].budget == 16
    assert summarize(records)["misses"] == 0
    budgets = [r.budget for r in records]
    assert all(b2 <= max(b1 + 8, int(b1 * 1.25)) for b1, b2 in zip(budgets, budgets[1:], strict=False))  # ramp
    assert summarize(records, 150)["mean_budget"] >= 0.85 * _oracle(model, governor.cost.quantile)


def test_cost_change_mid_run_drops_then_restores_the_budget():
    governor, model, pre, post = _setup(0)
    records = simulate_governor(governor, model, 900, pre=pre, post=post, scale={0: 1.0, 250: 2.0, 600: 1.0})
    missed = [r.frame for r in records if r.missed]
    assert len([f for f in missed if 250 <= f < 260]) <= 3
    assert [f for f in missed if not 250 <= f < 260] == []  # none before, none after re-convergence
    before, slow, after = summarize(records, 100, 250), summarize(records, 280, 600), summarize(records, 650, 900)
    model.scale = 2.0
    slow_oracle = _oracle(model, governor.cost.quantile)
    model.scale = 1.0
    fast_oracle = _oracle(model, governor.cost.quantile)
    assert records[251].budget < 0.2 * records[249].budget  # dropped at once
    assert 0.6 * slow_oracle <= slow["mean_budget"] <= 1.05 * slow_oracle  # each ms is 5 tokens at 2x: see report
    assert after["mean_budget"] >= 0.85 * fast_oracle and before["mean_budget"] >= 0.85 * fast_oracle
    recovered = next(r.frame for r in records[600:] if r.budget >= 0.85 * fast_oracle)
    assert recovered < 630  # rises again within tens of frames
    assert governor.cost.changes == 2


def test_pre_processing_slowdown_is_followed_at_once():
    governor, model, pre, post = _setup(2)
    records = simulate_governor(governor, model, 300, pre=pre, post=post)
    pre.a_ms = PRE + 15.0  # decoding slowed by CPU load
    records += simulate_governor(governor, model, 300, pre=pre, post=post)
    missed = [i for i, r in enumerate(records) if r.missed]
    assert len(missed) <= 2 and all(300 <= i < 303 for i in missed)
    slow_oracle = _oracle(model, governor.cost.quantile, post=POST + 15.0)
    assert 0.85 * slow_oracle <= summarize(records, 350)["mean_budget"] <= 1.02 * slow_oracle
    assert governor.cost.changes == 0  # the model's own cost did not change


def test_tail_estimator_relevels_on_a_shift():
    rng = np.random.default_rng(12)
    est = TailEstimator(window=100, quantile=0.999, shift_threshold=6.0)
    for v in rng.normal(10.0, 1.0, 200):
        est.update(v)
    before, shifts = est.tail, est.shifts
    for v in rng.normal(20.0, 1.0, 5):
        est.update(v)
    assert est.shifts == shifts + 1 and len(est) == 100
    assert est.tail == pytest.approx(before + 10.0, abs=1.5)  # same noise shape, new level


def test_infeasible_holds_minimum_and_says_so():
    governor, model, pre, post = _setup(6, deadline=40.0)  # 30 ms model + 15 ms pre/post > 40 ms
    records = simulate_governor(governor, model, 20, pre=pre, post=post)
    choice = governor.last
    assert choice is not None and not choice.feasible and choice.budget == 16
    assert "infeasible" in choice.reason and "min_tokens=16" in choice.reason
    assert all(r.budget == 16 for r in records)
    diag = governor.diagnostics()
    assert diag.level == 1 and "infeasible" in diag.message and int(diag.values["infeasible_frames"]) >= 19
    governor.set_latency_budget(DEADLINE)
    choice = governor.choose()
    assert choice.feasible and choice.budget > 16 and governor.diagnostics().level == 0


def test_hysteresis_keeps_the_budget_steady_under_noise():
    changes = {}
    for label, kwargs in (("on", {}), ("off", {"hysteresis_tokens": 0, "hysteresis_frac": 0.0})):
        governor, model, pre, post = _setup(1, **kwargs)
        records = simulate_governor(governor, model, 550, pre=pre, post=post)
        changes[label] = summarize(records, 50)["budget_changes"]
        assert summarize(records, 50)["misses"] == 0
    assert changes["on"] <= 30  # over 500 frames (seeds 0-9: 0-26)
    assert changes["off"] > 4 * changes["on"]


def test_moves_down_at_once_and_up_only_by_a_step():
    governor, model, pre, post = _setup(7)
    simulate_governor(governor, model, 150, pre=pre, post=post)
    current = governor.last.budget
    governor.set_latency_budget(DEADLINE + 0.3)  # a tiny gain: worth < one hysteresis step
    assert governor.choose().budget == current
    governor.set_latency_budget(DEADLINE - 10.0)
    down = governor.choose()
    assert down.budget < current and down.predicted_ms <= DEADLINE - 10.0  # fits immediately
    assert "down" in down.reason
    governor.set_latency_budget(DEADLINE)
    up = governor.choose()
    assert down.budget + 8 <= up.budget <= int(down.budget * 1.25) + 1


def test_runtime_limits_and_custom_tokens_to_x():
    governor = LatencyGovernor(DEADLINE, 16, 576, lambda t: 32.0 * t + 100.0)
    governor.calibrate([(t, 30.0 + 0.1 * t) for t in range(16, 577, 40)])
    governor.observe(16, 31.6, 10.0, 5.0)
    governor.set_limits(32, 64)
    assert governor.choose().budget == 64
    governor.set_limits(32, 128, target_tokens=48)
    assert governor.choose().budget == 48


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"latency_budget_ms": 0.0}, "latency_budget_ms must be > 0"),
    ({"latency_budget_ms": float("nan")}, "latency_budget_ms must be a finite number"),
    ({"min_tokens": 0}, "min_tokens must be >= 1"),
    ({"min_tokens": 600}, r"min_tokens \(600\) must be <= max_tokens \(576\)"),
    ({"max_tokens": 8.5}, "max_tokens must be an int"),
    ({"target_tokens": 8}, r"target_tokens \(8\) must lie in \[min_tokens, max_tokens\]"),
    ({"tokens_to_x": "layers"}, "tokens_to_x must be a callable"),
    ({"tokens_to_x": 0}, "num_layers must be >= 1"),
    ({"quantile": 1.0}, "quantile must be < 1.0"),
    ({"forgetting": 0.0}, "forgetting must be > 0.0"),
    ({"spread": 1.0}, "spread must be < 1.0"),
    ({"gain": -1.0}, "gain must be >= 0.0"),
    ({"safety_margin_ms": -1.0}, "safety_margin_ms must be >= 0.0"),
    ({"hysteresis_frac": 2.0}, "hysteresis_frac must be <= 1.0"),
    ({"window": 1}, "window must be >= 2"),
])
def test_parameter_validation(kwargs, match):
    args = {"latency_budget_ms": DEADLINE, "min_tokens": 16, "max_tokens": 576, "tokens_to_x": L} | kwargs
    with pytest.raises(ValueError, match=match):
        LatencyGovernor(**args)


def test_runtime_setters_validate_and_keep_the_old_values():
    governor = LatencyGovernor(DEADLINE, 16, 576, L)
    with pytest.raises(ValueError, match="must be <= max_tokens"):
        governor.set_limits(100, 50)
    with pytest.raises(ValueError, match="latency_budget_ms must be > 0"):
        governor.set_latency_budget(-5.0)
    assert (governor.min_tokens, governor.max_tokens, governor.latency_budget_ms) == (16, 576, DEADLINE)


def test_bad_measurements_are_ignored():
    governor, *_ = _setup(8)
    governor.observe(100, float("nan"), 10.0, 5.0)
    governor.observe(100, 40.0, -1.0, 5.0)
    assert governor.rejected == 2 and governor.frames == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lo=st.integers(1, 300), span=st.integers(0, 300), deadline=st.floats(1.0, 300.0),
       aware=st.booleans(), seed=st.integers(0, 2**16),
       latencies=st.lists(st.tuples(st.floats(0.0, 500.0), st.floats(0.0, 50.0), st.floats(-1.0, 50.0)),
                          min_size=1, max_size=30))
def test_budget_always_within_limits(lo, span, deadline, aware, seed, latencies):
    governor = LatencyGovernor(deadline, lo, lo + span, L, complexity_aware=aware)
    rng = np.random.default_rng(seed)
    for model_ms, pre_ms, post_ms in latencies:
        choice = governor.choose(float(rng.normal()))
        assert lo <= choice.budget <= lo + span
        assert choice.feasible or choice.budget == lo
        governor.observe(choice.budget, model_ms, pre_ms, post_ms)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.integers(1, 400), st.integers(0, 200), st.floats(20.0, 200.0)),
                        min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_budget_follows_limits_changed_at_run_time(changes, seed):
    governor, model, pre, post = _setup(seed % 7)
    simulate_governor(governor, model, 30, pre=pre, post=post)
    for lo, span, deadline in changes:
        governor.set_limits(lo, lo + span)
        governor.set_latency_budget(deadline)
        for record in simulate_governor(governor, model, 5, pre=pre, post=post):
            assert lo <= record.budget <= lo + span
            assert record.feasible or record.budget == lo


def test_diagnostics_report_state():
    governor, model, pre, post = _setup(13)
    assert governor.diagnostics().message == "no frame yet"
    first = governor.choose()
    assert first.budget == 16 and "warm-up" in first.reason
    governor.observe(first.budget, model.run(L * 16), pre.run(), post.run())
    simulate_governor(governor, model, 50, pre=pre, post=post)
    diag = governor.diagnostics()
    assert diag.level == 0 and diag.message.startswith("budget ")
    assert diag.values["deadline_misses"] == "0" and diag.values["frames"] == "51"
    assert float(diag.values["cost_b_ms_per_token_layer"]) == pytest.approx(B_PER_TOKEN / L, rel=0.2)
    assert float(diag.values["cost_a_ms"]) == pytest.approx(A_MS, abs=3.0)


def test_observed_x_overrides_the_budget_mapping():
    governor = LatencyGovernor(DEADLINE, 16, 576, L)
    for i in range(40):  # the pruner really ran twice the token-layers the budget suggests
        t = 16 + 12 * i
        governor.observe(t, 30.0 + 0.1 * t, 10.0, 5.0, x=2 * L * t)
    assert governor.cost.b == pytest.approx(0.1 / (2 * L), rel=0.01)  # the mapping alone would say 0.1 / L


# ---- complexity-aware mode -------------------------------------------------------------------------------------
def test_complexity_aware_same_mean_latency_no_extra_misses():
    results = compare_complexity_allocation(n_frames=700, warmup=100, seed=3)
    fixed, aware = results["fixed"], results["complexity_aware"]
    assert aware["mean_ms"] == pytest.approx(fixed["mean_ms"], rel=0.02)
    assert aware["mean_budget"] == pytest.approx(fixed["mean_budget"], rel=0.03)
    assert aware["misses"] <= fixed["misses"] == 0
    assert fixed["std_budget"] == 0.0 and aware["std_budget"] > 8.0
    assert 0.0 < aware["mean_quality"] < 1.0 and 0.0 < fixed["mean_quality"] < 1.0  # reported, not judged here


def test_complexity_aware_budgets_follow_complexity_and_respect_the_deadline():
    rng = np.random.default_rng(9)
    complexity = rng.lognormal(0.0, 0.8, 600)  # skewed: the factor must still average ~1
    governor = LatencyGovernor(DEADLINE, 16, 576, L, complexity_aware=True, spread=0.3)
    model = SimulatedModel(A_MS, 0.5 / L, NOISE, np.random.default_rng(10))  # the deadline binds near T ~ 90
    pre = SimulatedModel(PRE, 0.0, PRE_NOISE, np.random.default_rng(11))
    governor.calibrate((t, model.run(L * t)) for t in np.linspace(16, 576, 30).astype(int))
    records = simulate_governor(governor, model, 600, pre=pre, complexity=complexity.tolist())
    part = records[100:]
    budgets = np.array([r.budget for r in part], dtype=float)
    bases = np.array([r.base_budget for r in part], dtype=float)
    c = np.array([r.complexity for r in part])
    assert np.corrcoef(budgets, c)[0, 1] > 0.6
    assert budgets.mean() == pytest.approx(bases.mean(), rel=0.05)  # tokens shifted between frames, not added
    assert budgets.max() <= 1.35 * bases.max() and budgets.min() >= 0.65 * bases.min() - 1
    assert summarize(records, 100)["misses"] == 0
    oracle = _oracle(model, governor.cost.quantile, post=0.0, post_noise=0.0)
    assert budgets.max() <= oracle  # hard frames never get tokens the deadline cannot pay for
    assert budgets.max() >= 0.85 * oracle  # ... and do get them when it can
