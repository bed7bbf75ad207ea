"""Closed-loop driving metrics: hand-computed Leaderboard 2.0 scores, Bench2Drive success and comfort."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoprune_sim import metrics as m
from autoprune_sim.metrics import Infraction, ProgressTracker, RouteResult


def result(route_id: str = "r", completion: float = 1.0, infractions: list[Infraction] | None = None,
           status: str = "Completed", length_m: float = 1000.0, speeds: list[float] | None = None,
           **kwargs) -> RouteResult:
    speeds = [5.0] * 10 if speeds is None else speeds
    return RouteResult(route_id=route_id, seed=0, length_m=length_m, completion=completion,
                       infractions=infractions or [], status=status, duration_s=len(speeds) * 0.1,
                       ticks=len(speeds), speeds_mps=speeds, positions=[], dt=0.1, **kwargs)


def inf(kind: str, value: float | None = None) -> Infraction:
    return Infraction(kind=kind, time_s=1.0, value=value)


# --- penalty and scores ----------------------------------------------------------------------------------------

def test_fixed_factors_are_leaderboard_2() -> None:
    expected = {m.COLLISION_PEDESTRIAN: 0.50, m.COLLISION_VEHICLE: 0.60, m.COLLISION_LAYOUT: 0.65, m.RED_LIGHT: 0.70,
                m.STOP_SIGN: 0.80, m.SCENARIO_TIMEOUT: 0.70, m.YIELD_EMERGENCY_VEHICLE: 0.70}
    for kind, factor in expected.items():
        assert m.penalty([inf(kind)]) == pytest.approx(factor)
    assert m.penalty([]) == 1.0


def test_each_event_multiplies_once() -> None:
    # 2 vehicle collisions and 1 pedestrian collision: 0.6 * 0.6 * 0.5 = 0.18
    events = [inf(m.COLLISION_VEHICLE), inf(m.COLLISION_VEHICLE), inf(m.COLLISION_PEDESTRIAN)]
    assert m.penalty(events) == pytest.approx(0.18)


def test_min_speed_factor() -> None:
    # 1 - 0.3 * (1 - 40/100) = 1 - 0.18 = 0.82
    assert m.penalty([inf(m.MIN_SPEED, 40.0)]) == pytest.approx(0.82)
    # clamped: 150 % -> 100 % -> 1.0; -10 % -> 0 % -> 0.7
    assert m.penalty([inf(m.MIN_SPEED, 150.0)]) == pytest.approx(1.0)
    assert m.penalty([inf(m.MIN_SPEED, -10.0)]) == pytest.approx(0.7)
    # each checkpoint event multiplies: 0.82 * 0.85 (50 % -> 1 - 0.15) = 0.697
    assert m.penalty([inf(m.MIN_SPEED, 40.0), inf(m.MIN_SPEED, 50.0)]) == pytest.approx(0.697)
    # Bench2Drive drops it
    assert m.penalty([inf(m.MIN_SPEED, 40.0)], include_min_speed=False) == 1.0


def test_outside_lanes_and_off_road() -> None:
    assert m.penalty([inf(m.OUTSIDE_ROUTE_LANES, 10.0)]) == pytest.approx(0.9)  # 1 - 10/100
    # off-road scores as outside lanes; percentages of one route add: 1 - (10 + 5)/100 = 0.85
    assert m.penalty([inf(m.OUTSIDE_ROUTE_LANES, 10.0), inf(m.OFF_ROAD, 5.0)]) == pytest.approx(0.85)
    # with a collision: 0.85 * 0.6 = 0.51
    events = [inf(m.OUTSIDE_ROUTE_LANES, 10.0), inf(m.OFF_ROAD, 5.0), inf(m.COLLISION_VEHICLE)]
    assert m.penalty(events) == pytest.approx(0.51)
    assert m.penalty([inf(m.OFF_ROAD, 70.0), inf(m.OFF_ROAD, 70.0)]) == 0.0  # 140 % clamps to 100 %


def test_route_terminating_kinds_cost_nothing_in_the_penalty() -> None:
    assert m.penalty([inf(m.ROUTE_DEVIATION), inf(m.VEHICLE_BLOCKED), inf(m.ROUTE_TIMEOUT)]) == 1.0


def test_kind_aliases_normalise() -> None:
    # Leaderboard result keys and "<what>_collision" spellings map to the canonical kinds
    assert Infraction("collisions_vehicle", 0.0).kind == m.COLLISION_VEHICLE
    assert Infraction("object_collision", 0.0).kind == m.COLLISION_LAYOUT
    assert Infraction("out_of_road", 0.0, value=5.0).kind == m.OFF_ROAD
    assert m.penalty([inf("vehicle_collision"), inf("stop_infraction")]) == pytest.approx(0.48)  # 0.6 * 0.8


def test_bad_infractions_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown infraction kind"):
        m.penalty([inf("collision_unicorn")])
    with pytest.raises(ValueError, match="percentage"):
        m.penalty([inf(m.OUTSIDE_ROUTE_LANES)])


def test_driving_score_is_the_mean_of_per_route_products() -> None:
    # route A: RC 100 %, one vehicle collision -> 100 * 0.6 = 60
    # route B: RC 50 %, no infraction           -> 50 * 1.0  = 50
    # DS = (60 + 50) / 2 = 55, not mean RC * mean penalty = 75 * 0.8 = 60, nor 0.75 * 0.6 * 100 = 45
    a = result("A", 1.0, [inf(m.COLLISION_VEHICLE)])
    b = result("B", 0.5, status="Failed - Agent got blocked")
    assert m.route_score(a) == pytest.approx(60.0)
    assert m.route_score(b) == pytest.approx(50.0)
    assert m.driving_score([a, b]) == pytest.approx(55.0)
    # Bench2Drive: 4 routes planned, 2 missing count 0 -> 110 / 4 = 27.5
    assert m.driving_score([a, b], num_routes=4) == pytest.approx(27.5)
    assert m.driving_score([]) == 0.0
    with pytest.raises(ValueError):
        m.driving_score([a, b], num_routes=1)


def test_route_score_clamps_completion_and_min_speed_switch() -> None:
    # RC 40 %, min speed 40 % -> 40 * 0.82 = 32.8; without min speed 40
    r = result(completion=0.4, infractions=[inf(m.MIN_SPEED, 40.0)])
    assert m.route_score(r) == pytest.approx(32.8)
    assert m.route_score(r, include_min_speed=False) == pytest.approx(40.0)
    assert m.route_score(result(completion=1.2)) == pytest.approx(100.0)


def test_success_rules() -> None:
    assert m.success(result(status="Perfect"))
    assert m.success(result(infractions=[inf(m.MIN_SPEED, 60.0)]))  # min-speed alone is allowed
    assert not m.success(result(infractions=[inf(m.COLLISION_LAYOUT)]))
    assert not m.success(result(infractions=[inf(m.MIN_SPEED, 60.0), inf(m.RED_LIGHT)]))
    assert not m.success(result(completion=0.3, status="Failed - Agent deviated from the route"))
    rs = [result(status="Perfect"), result(infractions=[inf(m.RED_LIGHT)]), result(status="Failed - x")]
    assert m.success_rate(rs) == pytest.approx(1 / 3)
    assert m.success_rate(rs, num_routes=4) == pytest.approx(0.25)


def test_route_status() -> None:
    assert m.route_status(1.0, []) == "Perfect"
    assert m.route_status(1.0, [inf(m.RED_LIGHT)]) == "Completed"
    assert m.route_status(0.5, []) == "Failed - Route not completed"
    assert m.route_status(0.5, [], "Agent got blocked") == "Failed - Agent got blocked"


def test_infractions_per_km_and_mean_speed() -> None:
    # km = 2000 m * 0.5 + 1000 m * 1.0 = 2 km; 3 vehicle collisions -> 1.5 / km; 1 off-road -> 0.5 / km
    a = result(length_m=2000.0, completion=0.5, infractions=[inf(m.COLLISION_VEHICLE), inf(m.OFF_ROAD, 3.0)])
    b = result(length_m=1000.0, completion=1.0, infractions=[inf(m.COLLISION_VEHICLE)] * 2)
    assert m.km_driven([a, b]) == pytest.approx(2.0)
    per_km = m.infractions_per_km([a, b])
    assert per_km[m.COLLISION_VEHICLE] == pytest.approx(1.5)
    assert per_km[m.OFF_ROAD] == pytest.approx(0.5)
    assert per_km[m.RED_LIGHT] == 0.0
    # nothing driven: floored at 1 m, so one collision is 1000 / km rather than a division by zero
    assert m.infractions_per_km([result(completion=0.0, infractions=[inf(m.COLLISION_VEHICLE)])],
                                [m.COLLISION_VEHICLE]) == {m.COLLISION_VEHICLE: pytest.approx(1000.0)}
    assert m.mean_speed(result(speeds=[2.0, 4.0, 6.0])) == pytest.approx(4.0)
    assert m.mean_speed(result(speeds=[])) == 0.0


# --- comfort -----------------------------------------------------------------------------------------------------

def test_smooth_derivative_is_exact_on_quadratics() -> None:
    # x = t^2 sampled every 0.1 s: a local quadratic fit reproduces it, so dx/dt = 2t and d2x/dt2 = 2 everywhere,
    # the shifted windows at both ends included.
    t = np.arange(12) * 0.1
    np.testing.assert_allclose(m.smooth_derivative(t**2, 0.1, deriv=0), t**2, atol=1e-9)
    np.testing.assert_allclose(m.smooth_derivative(t**2, 0.1, deriv=1), 2 * t, atol=1e-9)
    np.testing.assert_allclose(m.smooth_derivative(t**2, 0.1, deriv=2), np.full(12, 2.0), atol=1e-7)
    # noise is smoothed: a +-1 alternation averages down under a 5-point quadratic fit
    assert np.abs(m.smooth_derivative((-1.0) ** np.arange(20), 0.1)[2:-2]).max() < 1.0
    assert m.smooth_derivative([3.0], 0.1, deriv=1).tolist() == [0.0]


def test_comfort_constant_speed_is_fully_comfortable() -> None:
    c = m.comfort([10.0] * 100, 0.1)
    assert c["comfortable_fraction"] == 1.0 and c["segments"] == 5  # 100 samples / 20
    assert c["mean_abs_lon_jerk"] == pytest.approx(0.0, abs=1e-9)
    assert c["checked"] == ["lon_acc", "lon_jerk"]  # no positions: lateral and yaw signals left out


def test_comfort_constant_acceleration() -> None:
    # speed ramps at 1 m/s^2: lon acc 1 (inside [-4.05, 2.40]), jerk 0 -> comfortable
    ramp = 1.0 * np.arange(60) * 0.1
    assert m.comfort(ramp, 0.1)["comfortable_fraction"] == 1.0
    # 3 m/s^2 > 2.40: every segment violates lon_acc, none violates lon_jerk
    c = m.comfort(3.0 * np.arange(60) * 0.1, 0.1)
    assert c["comfortable_fraction"] == 0.0
    assert c["violations"] == {"lon_acc": 3, "lon_jerk": 0}
    # braking at -3 m/s^2 is inside the bound (-4.05), at -5 it is not
    assert m.comfort(20.0 - 3.0 * np.arange(60) * 0.1, 0.1)["comfortable_fraction"] == 1.0
    assert m.comfort(30.0 - 5.0 * np.arange(60) * 0.1, 0.1)["comfortable_fraction"] == 0.0


def test_comfort_bang_bang_throttle_and_brake_violates() -> None:
    # +5 m/s^2 for 0.5 s, then -5 m/s^2 for 0.5 s, repeated: acceleration out of bounds and large jerk
    acc = np.where((np.arange(100) // 5) % 2 == 0, 5.0, -5.0)
    speeds = 10.0 + np.cumsum(acc) * 0.1
    c = m.comfort(speeds, 0.1)
    assert c["comfortable_fraction"] == 0.0
    assert c["violations"]["lon_acc"] == 5 and c["violations"]["lon_jerk"] == 5
    assert c["mean_abs_lon_jerk"] > 4.13


def test_comfort_segments_and_short_series() -> None:
    # 45 samples -> segments [0, 20) and [20, 45) (the 5-sample tail joins the last one)
    assert m.comfort([5.0] * 45, 0.1)["segments"] == 2
    assert m.comfort([5.0] * 10, 0.1)["segments"] == 1  # shorter than a segment: one stretch
    short = m.comfort([5.0], 0.1)
    assert short["comfortable_fraction"] is None and short["segments"] == 0
    # one bad stretch out of three: a -6 m/s^2 brake over samples 25..34, in the middle of the second stretch, so
    # the smoothing (2 samples each side for acc, 2 more for jerk) keeps its effect inside samples 21..38
    acc = np.zeros(60)
    acc[25:35] = -6.0
    speeds = 15.0 + np.cumsum(acc) * 0.1
    c = m.comfort(speeds, 0.1)
    assert c["comfortable_fraction"] == pytest.approx(2 / 3)
    assert c["violations"] == {"lon_acc": 1, "lon_jerk": 1}


def circle(radius: float, speed: float, n: int = 60, dt: float = 0.1) -> list[tuple[float, float]]:
    angle = speed / radius * np.arange(n) * dt
    return list(zip(radius * np.cos(angle), radius * np.sin(angle), strict=True))


def test_comfort_with_positions_checks_yaw_and_lateral() -> None:
    # v = 10 m/s on R = 50 m: yaw rate 0.2 rad/s (<= 0.95), lat acc v^2/R = 2 m/s^2 (<= 4.89) -> comfortable
    c = m.comfort([10.0] * 60, 0.1, circle(50.0, 10.0))
    assert set(c["checked"]) == {"lon_acc", "lon_jerk", "yaw_rate", "yaw_acc", "lat_acc", "jerk"}
    assert c["comfortable_fraction"] == 1.0
    # R = 20 m: yaw rate 0.5 (fine) but lat acc 100/20 = 5 > 4.89 -> every segment violates lat_acc only
    c = m.comfort([10.0] * 60, 0.1, circle(20.0, 10.0))
    assert c["comfortable_fraction"] == 0.0
    assert c["violations"]["lat_acc"] == 3 and c["violations"]["yaw_rate"] == 0
    # standing still: heading held, nothing violated
    assert m.comfort([0.0] * 30, 0.1, [(1.0, 2.0)] * 30)["comfortable_fraction"] == 1.0
    with pytest.raises(ValueError):
        m.comfort([1.0] * 5, 0.1, [(0.0, 0.0)] * 4)


# --- results files and summary -------------------------------------------------------------------------------------

def test_route_result_json_round_trip() -> None:
    r = RouteResult(route_id="7", seed=3, length_m=250.0, completion=0.8,
                    infractions=[Infraction(m.COLLISION_VEHICLE, 12.5, "hit car 42"), Infraction(m.OFF_ROAD, 20.0,
                                                                                                   value=4.0)],
                    status="Failed - Off road", duration_s=20.0, ticks=200, speeds_mps=[1.0, 2.5],
                    positions=[(0.0, 1.0), (2.0, 3.5)], dt=0.1, control_timeouts=2, latencies_ms=[40.0, 55.5],
                    kept_tokens=[64.0, 70.0], meta={"control_delay": {"mode": "latency", "dt": 0.1}})
    text = json.dumps(r.to_dict())
    back = RouteResult.from_dict(json.loads(text))
    assert back == r
    assert isinstance(back.positions[0], tuple) and isinstance(back.infractions[0], Infraction)
    minimal = {k: v for k, v in r.to_dict().items() if k not in ("control_timeouts", "latencies_ms", "kept_tokens",
                                                                  "meta")}
    assert RouteResult.from_dict(minimal).latencies_ms == []
    with pytest.raises(ValueError, match="unknown keys"):
        RouteResult.from_dict({**r.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="lacks keys"):
        RouteResult.from_dict({"route_id": "7"})
    with pytest.raises(ValueError, match="bad infraction"):
        RouteResult.from_dict({**r.to_dict(), "infractions": [{"kind": "x"}]})


def test_summarize() -> None:
    a = result("A", 1.0, [inf(m.COLLISION_VEHICLE)], speeds=[10.0] * 40, latencies_ms=[10.0, 20.0, 30.0],
               kept_tokens=[64, 128])
    b = result("B", 0.5, [inf(m.ROUTE_TIMEOUT)], status="Failed - Route timeout", speeds=[4.0] * 40,
               control_timeouts=1)
    s = m.summarize([a, b])
    assert s["driving_score"] == pytest.approx(55.0)
    assert s["route_completion"] == pytest.approx(75.0)  # (100 + 50) / 2
    assert s["infraction_penalty"] == pytest.approx(0.8)  # (0.6 + 1.0) / 2
    assert s["success_rate"] == 0.0  # A has a collision, B failed
    assert s["km_driven"] == pytest.approx(1.5)  # 1000 m * 1.0 + 1000 m * 0.5
    assert s["collisions_vehicle_per_km"] == pytest.approx(1 / 1.5)
    assert s["route_timeouts"] == 1 and s["control_timeouts"] == 1 and s["off_road_routes"] == 0
    assert s["mean_speed_mps"] == pytest.approx(7.0)
    assert s["comfort"] == 1.0
    assert s["latency_ms_p50"] == pytest.approx(20.0)
    assert s["latency_ms_p99"] == pytest.approx(29.8)  # linear interpolation: 20 + 0.98 * 10
    assert s["mean_kept_tokens"] == pytest.approx(96.0)
    assert s["statuses"] == {"Completed": 1, "Failed - Route timeout": 1}
    json.dumps(s)  # JSON-ready
    empty = m.summarize([])
    assert empty["driving_score"] == 0.0 and empty["latency_ms_p50"] is None and empty["comfort"] is None


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_routes() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0, 100, 5), rng.uniform(0, 100, 80)
    lo, hi = m.bootstrap_interval(few)
    assert lo < few.mean() < hi and 0.0 <= lo and hi <= 100.0
    lo_many, hi_many = m.bootstrap_interval(many)
    assert hi_many - lo_many < hi - lo  # more routes, a tighter interval
    assert m.bootstrap_interval(few) == (lo, hi)  # seeded: the report is reproducible
    assert m.bootstrap_interval([42.0]) is None and m.bootstrap_interval([7.0, 7.0]) == (7.0, 7.0)
    with pytest.raises(ValueError, match="confidence"):
        m.bootstrap_interval(few, confidence=1.0)


def test_paired_ratio_is_tight_when_the_routes_move_together() -> None:
    reference = np.array([10.0, 90.0, 20.0, 60.0, 35.0, 80.0])
    paired = m.paired_ratio(0.9 * reference, reference)  # every route keeps 90%: no doubt about the ratio
    assert paired["ratio"] == pytest.approx(0.9) and paired["routes"] == 6
    assert paired["low"] == pytest.approx(0.9) and paired["high"] == pytest.approx(0.9)
    shuffled = m.paired_ratio(0.9 * reference[::-1], reference)  # same means, routes no longer paired
    assert shuffled["ratio"] == pytest.approx(0.9) and shuffled["high"] - shuffled["low"] > 0.2
    assert m.paired_ratio([5.0, 6.0], [0.0, 0.0])["ratio"] is None
    assert m.paired_ratio([5.0], [10.0]) == {"ratio": 0.5, "low": None, "high": None, "routes": 1}
    with pytest.raises(ValueError, match="same routes"):
        m.paired_ratio([1.0, 2.0], [1.0])


def test_summarize_gives_the_driving_score_interval() -> None:
    routes = [result(str(i), c) for i, c in enumerate((0.1, 0.9, 0.4, 0.6))]
    s = m.summarize(routes)
    lo, hi = s["driving_score_ci95"]
    assert s["driving_score"] == pytest.approx(50.0) and lo < 50.0 < hi
    assert m.summarize(routes[:1])["driving_score_ci95"] is None


# --- route completion from checkpoints --------------------------------------------------------------------------

def test_route_progress() -> None:
    segs = [10.0, 20.0, 30.0]  # 60 m in all
    assert m.route_progress(segs, 1, 5.0) == pytest.approx(15 / 60)  # (10 + 5) / 60 = 0.25
    assert m.route_progress(segs, 1, -3.0) == pytest.approx(10 / 60)  # lon clamped to 0
    assert m.route_progress(segs, 1, 25.0) == pytest.approx(30 / 60)  # lon clamped to seg[1] = 20
    assert m.route_progress(segs, 2, 30.0) == pytest.approx(1.0)
    for bad in ([], [0.0], [5.0, -1.0]):
        with pytest.raises(ValueError):
            m.route_progress(bad, 0, 0.0)
    with pytest.raises(ValueError):
        m.route_progress(segs, 3, 0.0)


def test_progress_tracker_holds_in_junctions_and_keeps_the_maximum() -> None:
    tracker = ProgressTracker([10.0, 20.0, 30.0])
    assert tracker.update(0, 5.0) == pytest.approx(5 / 60)
    assert tracker.update(1, 10.0) == pytest.approx(20 / 60)
    assert tracker.update(None) == pytest.approx(20 / 60)  # inside a junction: hold
    assert tracker.current == pytest.approx(20 / 60)
    assert tracker.update(0, 2.0) == pytest.approx(20 / 60)  # a backwards reading never lowers the best
    assert tracker.current == pytest.approx(2 / 60)
    assert tracker.update(2, 15.0) == pytest.approx(45 / 60)  # (10 + 20 + 15) / 60
    assert tracker.value == tracker.best
    assert tracker.complete() == 1.0
    assert math.isclose(tracker.update(1, 0.0), 1.0)
