"""Closed-loop driving metrics shared by the MetaDrive and CARLA bridges and the evaluator.

Scoring follows CARLA Leaderboard 2.0: per route, route score = max(RC% x penalty, 0) where the penalty is the
product of infraction factors (starting at 1.0); the driving score (DS) is the mean over routes of the per-route
products. Bench2Drive's variants (min-speed penalty removed, success rate, comfort) are available too.

How each infraction kind is counted by `penalty` (kinds are the `Infraction.kind` strings below):

- collisions (pedestrian 0.50, vehicle 0.60, layout/static object 0.65), red light 0.70, stop sign 0.80, scenario
  timeout 0.70, not yielding to an emergency vehicle 0.70: every recorded event multiplies once by its factor
  (two vehicle collisions -> 0.6 x 0.6 = 0.36). Bridges must record one event per collision, not one per tick.
- outside route lanes and off-road: `value` is the percentage of the route length driven there. The percentages
  of all such events of a route are added (they describe distinct stretches of the same route), clamped to
  [0, 100], and applied once as (1 - p/100). MetaDrive's `out_of_road` is recorded as `off_road` with the
  percentage of the route driven off-road; it also ends the episode, so route completion stops where the car left
  the road (the bridge reports the completion reached by then). What counts as leaving the road depends on the
  bridge's termination rule (`metadrive_env.TERMINATION_RULES`).
- minimum speed: `value` is the ego's speed as a percentage of the surrounding traffic's; every event (the
  Leaderboard checks each checkpoint interval) multiplies by 1 - 0.3 x (1 - clamp(value, 0, 100)/100), e.g.
  40 % -> 0.82. `include_min_speed=False` drops it (Bench2Drive's DS).
- route deviation, vehicle blocked / stuck, route timeout: route-terminating, factor 1.0. They end the route,
  so they cost through route completion, not through the penalty.

Only the standard library and numpy (1.24-compatible) are used: the simulator bridges import this module in
their own environment.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Infraction kinds (the `Infraction.kind` strings).
COLLISION_PEDESTRIAN = "collision_pedestrian"
COLLISION_VEHICLE = "collision_vehicle"
COLLISION_LAYOUT = "collision_layout"  # static objects, buildings, the road layout (MetaDrive crash_object/building)
RED_LIGHT = "red_light"
STOP_SIGN = "stop_sign"
SCENARIO_TIMEOUT = "scenario_timeout"
YIELD_EMERGENCY_VEHICLE = "yield_emergency_vehicle"
OUTSIDE_ROUTE_LANES = "outside_route_lanes"  # value: % of the route driven outside the route's lanes
OFF_ROAD = "off_road"  # value: % of the route driven off-road; scored as outside route lanes
MIN_SPEED = "min_speed"  # value: ego speed as % of the surrounding traffic's
ROUTE_DEVIATION = "route_deviation"
VEHICLE_BLOCKED = "vehicle_blocked"
ROUTE_TIMEOUT = "route_timeout"

#: Fixed multiplicative factors (Leaderboard 2.0); each event multiplies once.
INFRACTION_FACTORS: dict[str, float] = {
    COLLISION_PEDESTRIAN: 0.50,
    COLLISION_VEHICLE: 0.60,
    COLLISION_LAYOUT: 0.65,
    RED_LIGHT: 0.70,
    STOP_SIGN: 0.80,
    SCENARIO_TIMEOUT: 0.70,
    YIELD_EMERGENCY_VEHICLE: 0.70,
}
#: Kinds whose factor depends on `Infraction.value` (a percentage).
PERCENT_KINDS = frozenset({OUTSIDE_ROUTE_LANES, OFF_ROAD, MIN_SPEED})
#: Route-terminating kinds: factor 1.0, they cost through route completion.
TERMINATING_KINDS = frozenset({ROUTE_DEVIATION, VEHICLE_BLOCKED, ROUTE_TIMEOUT})
KNOWN_KINDS = frozenset(INFRACTION_FACTORS) | PERCENT_KINDS | TERMINATING_KINDS
MIN_SPEED_BASE = 0.7

#: Our kinds -> the infraction keys of Leaderboard 2.0 results files (off-road has no key of its own there).
LEADERBOARD_KEYS: dict[str, str] = {
    COLLISION_PEDESTRIAN: "collisions_pedestrian",
    COLLISION_VEHICLE: "collisions_vehicle",
    COLLISION_LAYOUT: "collisions_layout",
    RED_LIGHT: "red_light",
    STOP_SIGN: "stop_infraction",
    SCENARIO_TIMEOUT: "scenario_timeouts",
    YIELD_EMERGENCY_VEHICLE: "yield_emergency_vehicle_infractions",
    OUTSIDE_ROUTE_LANES: "outside_route_lanes",
    OFF_ROAD: "outside_route_lanes",
    MIN_SPEED: "min_speed_infractions",
    ROUTE_DEVIATION: "route_dev",
    VEHICLE_BLOCKED: "vehicle_blocked",
    ROUTE_TIMEOUT: "route_timeout",
}

#: Other spellings accepted for `Infraction.kind` (normalised on construction): the Leaderboard's result keys and
#: "<what>_collision" names.
KIND_ALIASES: dict[str, str] = {
    **{key: kind for kind, key in LEADERBOARD_KEYS.items() if kind != OFF_ROAD},
    "pedestrian_collision": COLLISION_PEDESTRIAN,
    "vehicle_collision": COLLISION_VEHICLE,
    "layout_collision": COLLISION_LAYOUT,
    "object_collision": COLLISION_LAYOUT,
    "static_collision": COLLISION_LAYOUT,
    "collision_object": COLLISION_LAYOUT,
    "collision_static": COLLISION_LAYOUT,
    "out_of_road": OFF_ROAD,
}

STATUS_PERFECT = "Perfect"
STATUS_COMPLETED = "Completed"
STATUS_FAILED = "Failed"

#: nuPlan comfort bounds used by Bench2Drive: (low, high) per signal.
COMFORT_BOUNDS: dict[str, tuple[float, float]] = {
    "lon_acc": (-4.05, 2.40),  # m/s^2
    "lon_jerk": (-4.13, 4.13),  # m/s^3
    "jerk": (-8.37, 8.37),  # m/s^3, magnitude of the (lon, lat) jerk vector
    "lat_acc": (-4.89, 4.89),  # m/s^2
    "yaw_rate": (-0.95, 0.95),  # rad/s
    "yaw_acc": (-1.93, 1.93),  # rad/s^2
}
COMFORT_SEGMENT = 20


@dataclass
class Infraction:
    """One infraction event. `value` carries the percentage for outside-lanes, off-road and min-speed events."""

    kind: str
    time_s: float
    detail: str = ""
    value: float | None = None

    def __post_init__(self) -> None:
        self.kind = KIND_ALIASES.get(self.kind, self.kind)

    def factor(self) -> float:
        """This event's own multiplicative factor (outside-lanes/off-road combine per route: see `penalty`)."""
        if self.kind in INFRACTION_FACTORS:
            return INFRACTION_FACTORS[self.kind]
        if self.kind in TERMINATING_KINDS:
            return 1.0
        if self.kind in PERCENT_KINDS:
            pct = _percent(self)
            if self.kind == MIN_SPEED:
                return 1.0 - (1.0 - MIN_SPEED_BASE) * (1.0 - pct / 100.0)
            return 1.0 - pct / 100.0
        raise ValueError(f"unknown infraction kind {self.kind!r}; known: {sorted(KNOWN_KINDS)}")


@dataclass
class RouteResult:
    """The outcome of one route (one seed / repetition) in closed loop, JSON-serialisable via `to_dict`.

    `completion` is route completion in 0..1; `speeds_mps` and `positions` are sampled every `dt` seconds;
    `latencies_ms` and `kept_tokens` are per answered frame; `meta` holds anything else a bridge must state,
    e.g. the control-delay mode (`ControlDelay.describe()`), the policy and the simulator.
    """

    route_id: str
    seed: int | None
    length_m: float
    completion: float
    infractions: list[Infraction]
    status: str
    duration_s: float
    ticks: int
    speeds_mps: list[float]
    positions: list[tuple[float, float]]
    dt: float
    control_timeouts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    kept_tokens: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        data = asdict(self)
        data["positions"] = [[float(x), float(y)] for x, y in self.positions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteResult:
        """Inverse of `to_dict`; missing optional fields take their defaults, unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"a route result must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in cls.__dataclass_fields__.values()}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"route result has unknown keys {sorted(unknown)}")
        required = {"route_id", "seed", "length_m", "completion", "infractions", "status", "duration_s", "ticks",
                    "speeds_mps", "positions", "dt"}
        missing = required - set(data)
        if missing:
            raise ValueError(f"route result {data.get('route_id', '?')!r} lacks keys {sorted(missing)}")
        kwargs = dict(data)
        kwargs["infractions"] = [_infraction_from_dict(i, data["route_id"]) for i in data["infractions"]]
        kwargs["positions"] = [(float(p[0]), float(p[1])) for p in data["positions"]]
        kwargs["latencies_ms"] = list(data.get("latencies_ms", []))
        kwargs["kept_tokens"] = list(data.get("kept_tokens", []))
        kwargs["meta"] = dict(data.get("meta", {}))
        return cls(**kwargs)


def _infraction_from_dict(data: Any, route_id: str) -> Infraction:
    if isinstance(data, Infraction):
        return data
    try:
        return Infraction(**data)
    except TypeError as exc:
        raise ValueError(f"route {route_id!r}: bad infraction entry {data!r}: {exc}") from exc


def _percent(infraction: Infraction) -> float:
    if infraction.value is None or not math.isfinite(infraction.value):
        raise ValueError(f"{infraction.kind} infraction at t={infraction.time_s} s needs a finite percentage value")
    return min(max(float(infraction.value), 0.0), 100.0)


def route_status(completion: float, infractions: Sequence[Infraction], failure: str | None = None) -> str:
    """Leaderboard-style status: "Failed - <failure>" if given, else Perfect (complete, no infraction),
    Completed (complete with infractions) or "Failed - Route not completed"."""
    if failure:
        return f"{STATUS_FAILED} - {failure}"
    if completion >= 1.0:
        return STATUS_PERFECT if not infractions else STATUS_COMPLETED
    return f"{STATUS_FAILED} - Route not completed"


def penalty(infractions: Iterable[Infraction], *, include_min_speed: bool = True) -> float:
    """Product of the infraction factors (1.0 = no penalty); counting rules in the module docstring."""
    factor = 1.0
    outside_pct = 0.0
    for inf in infractions:
        if inf.kind in (OUTSIDE_ROUTE_LANES, OFF_ROAD):
            outside_pct += _percent(inf)
        elif inf.kind == MIN_SPEED and not include_min_speed:
            continue
        else:
            factor *= inf.factor()
    return factor * (1.0 - min(outside_pct, 100.0) / 100.0)


def route_score(result: RouteResult, *, include_min_speed: bool = True) -> float:
    """max(RC% x penalty, 0) in points 0..100."""
    rc = min(max(result.completion, 0.0), 1.0) * 100.0
    return max(rc * penalty(result.infractions, include_min_speed=include_min_speed), 0.0)


def driving_score(results: Sequence[RouteResult], *, include_min_speed: bool = True,
                  num_routes: int | None = None) -> float:
    """Mean over routes of the per-route products RC x penalty (not the product of the means).

    `num_routes`: the number of routes that should have run; missing ones count 0 (Bench2Drive). With neither
    results nor `num_routes` the score is 0.0.
    """
    total = sum(route_score(r, include_min_speed=include_min_speed) for r in results)
    n = _denominator(results, num_routes)
    return total / n if n else 0.0


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean of `values` (routes resampled with replacement), or None for
    fewer than two values. Seeded, so a report is reproducible. Closed-loop scores of a few routes spread widely
    (a route ends where the car happens to leave the road), and the interval says how far a mean can be trusted."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    return _percentile_interval(data[_resamples(data.size, resamples, seed)].mean(axis=1), confidence)


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) route indices drawn with replacement, seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 100.0 * (1.0 - confidence) / 2.0
    return float(np.percentile(estimates, tail)), float(np.percentile(estimates, 100.0 - tail))


def paired_ratio(candidate: Sequence[float], reference: Sequence[float], *, confidence: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, float | None]:
    """mean(candidate) / mean(reference) over the same routes (element i of both is route i), with a paired
    percentile-bootstrap interval: the routes are resampled together, so the spread between routes, which both
    share, does not widen it. `ratio` is None when the reference mean is 0; `low` / `high` are None with fewer than
    two routes or when a resample's reference mean is 0."""
    cand, ref = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    if cand.shape != ref.shape:
        raise ValueError(f"paired_ratio needs the same routes on both sides, got {cand.size} and {ref.size}")
    ratio = float(cand.mean() / ref.mean()) if ref.size and ref.mean() > 0 else None
    out: dict[str, float | None] = {"ratio": ratio, "low": None, "high": None, "routes": int(ref.size)}
    if ratio is None or ref.size < 2:
        return out
    picks = _resamples(ref.size, resamples, seed)
    ref_means = ref[picks].mean(axis=1)
    if np.any(ref_means <= 0):
        return out
    out["low"], out["high"] = _percentile_interval(cand[picks].mean(axis=1) / ref_means, confidence)
    return out


def _denominator(results: Sequence[RouteResult], num_routes: int | None) -> int:
    if num_routes is None:
        return len(results)
    if num_routes < len(results):
        raise ValueError(f"num_routes={num_routes} is smaller than the {len(results)} results given")
    return num_routes


def success(result: RouteResult) -> bool:
    """Bench2Drive success: status Completed/Perfect and no infraction other than minimum speed."""
    if result.status not in (STATUS_COMPLETED, STATUS_PERFECT):
        return False
    return all(inf.kind == MIN_SPEED for inf in result.infractions)


def success_rate(results: Sequence[RouteResult], *, num_routes: int | None = None) -> float:
    """Fraction (0..1) of successful routes; missing routes (`num_routes`) count as failures."""
    n = _denominator(results, num_routes)
    return sum(success(r) for r in results) / n if n else 0.0


def mean_speed(result: RouteResult) -> float:
    """Mean of the sampled speeds (m/s) over the route; 0.0 without samples."""
    return float(np.mean(result.speeds_mps)) if len(result.speeds_mps) else 0.0


def km_driven(results: Iterable[RouteResult]) -> float:
    """Kilometres driven along the routes: sum of length x completion."""
    return sum(r.length_m * min(max(r.completion, 0.0), 1.0) for r in results) / 1000.0


#: The floor on driven distance for per-km rates (1 m), so an infraction at the start is not divided by zero.
MIN_KM = 0.001


def infractions_per_km(results: Sequence[RouteResult], kinds: Iterable[str] | None = None) -> dict[str, float]:
    """Events per km driven (km = sum of length x completion, floored at 1 m), for each kind (all known kinds
    by default). Every event counts once, including percentage kinds."""
    km = max(km_driven(results), MIN_KM)
    wanted = sorted(KNOWN_KINDS) if kinds is None else list(kinds)
    counts = dict.fromkeys(wanted, 0)
    for r in results:
        for inf in r.infractions:
            if inf.kind in counts:
                counts[inf.kind] += 1
    return {k: c / km for k, c in counts.items()}


# ---------------------------------------------------------------------------------------------------------------
# Comfort


def smooth_derivative(values: Sequence[float] | np.ndarray, dt: float, *, deriv: int = 0, window: int = 5,
                      order: int = 2) -> np.ndarray:
    """Savitzky-Golay-style local polynomial fit: the `deriv`-th derivative of a least-squares polynomial of
    degree `order` fitted over `window` samples around each point (windows shifted inward at the ends, like
    scipy's mode="interp"). Short series shrink the window; a derivative above the fitted degree is 0."""
    x = np.asarray(values, dtype=float)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0)
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    w = max(1, min(window, n))
    degree = min(order, w - 1)
    if deriv > degree:
        return np.zeros(n)
    # Polynomial in sample units u centred on the window; fit coefficients = P @ window_values.
    u = np.arange(w, dtype=float) - (w - 1) / 2.0
    powers = np.arange(degree + 1)
    fit = np.linalg.pinv(u[:, None] ** powers[None, :])  # (degree+1, w)
    # d^deriv/du^deriv of u^k = k!/(k-deriv)! u^(k-deriv), evaluated at each window position.
    coeff = np.array([math.factorial(k) / math.factorial(k - deriv) if k >= deriv else 0.0 for k in powers])
    expo = np.clip(powers - deriv, 0, None)
    basis = coeff[None, :] * u[:, None] ** expo[None, :]  # (w, degree+1)
    weights = basis @ fit  # (w, w): row o = weights giving the derivative at window position o
    idx = np.arange(n)
    starts = np.clip(idx - w // 2, 0, n - w)
    windows = np.lib.stride_tricks.sliding_window_view(x, w)
    out = np.einsum("ij,ij->i", weights[idx - starts], windows[starts])
    return out / dt**deriv


def _headings(positions: np.ndarray, min_step: float = 1e-3) -> np.ndarray:
    """Direction of travel per sample from positions; held while (nearly) stationary."""
    if positions.shape[0] < 3:
        return np.zeros(positions.shape[0])
    d = np.gradient(positions, axis=0, edge_order=2)
    moving = np.hypot(d[:, 0], d[:, 1]) > min_step
    if not moving.any():
        return np.zeros(positions.shape[0])
    raw = np.arctan2(d[:, 1], d[:, 0])
    # Forward-fill the heading through stationary samples (back-fill before the first move).
    last = np.where(moving, np.arange(len(raw)), -1)
    last = np.maximum.accumulate(last)
    last[last < 0] = int(np.argmax(moving))
    return np.unwrap(raw[last])


def comfort(speeds: Sequence[float], dt: float, positions: Sequence[tuple[float, float]] | None = None, *,
            segment: int = COMFORT_SEGMENT, window: int = 5, order: int = 2,
            bounds: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Bench2Drive-style comfort: the fraction of `segment`-sample stretches whose smoothed signals all stay
    inside the nuPlan bounds.

    From speeds alone: longitudinal acceleration (smoothed derivative of speed) and longitudinal jerk (smoothed
    derivative of that). With positions as well: heading from the direction of travel, yaw rate and yaw
    acceleration, lateral acceleration = speed x yaw rate, and the total jerk = |(lon jerk, lat jerk)|. Without
    positions yaw rate, yaw acceleration, lateral acceleration and total jerk are left out (`checked` lists
    what was). Headings assume forward driving. The series is cut into consecutive `segment`-sample stretches;
    a tail shorter than `segment` joins the last stretch (a series shorter than one segment is one stretch).
    Smoothing: local quadratic over 5 samples (nuPlan's derivative defaults). Series under 2 samples yield
    `comfortable_fraction` None.
    """
    limits = COMFORT_BOUNDS if bounds is None else bounds
    v = np.asarray(speeds, dtype=float)
    n = v.shape[0]
    signals: dict[str, np.ndarray] = {}
    if n >= 2:
        lon_acc = smooth_derivative(v, dt, deriv=1, window=window, order=order)
        lon_jerk = smooth_derivative(lon_acc, dt, deriv=1, window=window, order=order)
        signals = {"lon_acc": lon_acc, "lon_jerk": lon_jerk}
        if positions is not None:
            pos = np.asarray(positions, dtype=float).reshape(-1, 2)
            if pos.shape[0] != n:
                raise ValueError(f"comfort: {pos.shape[0]} positions for {n} speeds")
            yaw = _headings(pos)
            yaw_rate = smooth_derivative(yaw, dt, deriv=1, window=window, order=order)
            yaw_acc = smooth_derivative(yaw_rate, dt, deriv=1, window=window, order=order)
            lat_acc = v * yaw_rate
            lat_jerk = smooth_derivative(lat_acc, dt, deriv=1, window=window, order=order)
            signals.update(yaw_rate=yaw_rate, yaw_acc=yaw_acc, lat_acc=lat_acc, jerk=np.hypot(lon_jerk, lat_jerk))
    checked = [name for name in signals if name in limits]
    result: dict[str, Any] = {
        "comfortable_fraction": None, "segments": 0, "checked": checked,
        "violations": dict.fromkeys(checked, 0),
        "mean_abs_lon_jerk": float(np.mean(np.abs(signals["lon_jerk"]))) if signals else None,
        "mean_abs_lon_acc": float(np.mean(np.abs(signals["lon_acc"]))) if signals else None,
    }
    if not signals:
        return result
    inside = np.ones(n, dtype=bool)
    per_signal = {}
    for name in checked:
        lo, hi = limits[name]
        ok = (signals[name] >= lo) & (signals[name] <= hi)
        per_signal[name] = ok
        inside &= ok
    count = max(1, n // segment)
    edges = [i * segment for i in range(count)] + [n]
    good = 0
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        good += bool(inside[a:b].all())
        for name, ok in per_signal.items():
            result["violations"][name] += int(not ok[a:b].all())
    result["segments"] = count
    result["comfortable_fraction"] = good / count
    return result


def route_comfort(result: RouteResult, **kwargs: Any) -> dict[str, Any]:
    """`comfort` of a route's speeds (and positions, when there is one per speed sample)."""
    positions = result.positions if len(result.positions) == len(result.speeds_mps) else None
    return comfort(result.speeds_mps, result.dt, positions, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Summary


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(results: Sequence[RouteResult], *, include_min_speed: bool = True,
              num_routes: int | None = None) -> dict[str, Any]:
    """Aggregate metrics over routes (JSON-ready). Scores are in points (0..100), rates in 0..1; keys whose data
    is absent (e.g. no latencies recorded) are None. Per-route means are averaged with equal route weights."""
    per_route_comfort = [route_comfort(r) for r in results]
    fractions = [c["comfortable_fraction"] for c in per_route_comfort if c["comfortable_fraction"] is not None]
    jerks = [c["mean_abs_lon_jerk"] for c in per_route_comfort if c["mean_abs_lon_jerk"] is not None]
    latencies = [x for r in results for x in r.latencies_ms]
    kept = [x for r in results for x in r.kept_tokens]
    per_km = infractions_per_km(results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "routes": len(results),
        "driving_score": driving_score(results, include_min_speed=include_min_speed, num_routes=num_routes),
        "driving_score_ci95": bootstrap_interval(
            [route_score(r, include_min_speed=include_min_speed) for r in results]
            + [0.0] * (_denominator(results, num_routes) - len(results))),
        "route_completion": _mean([100.0 * min(max(r.completion, 0.0), 1.0) for r in results]),
        "infraction_penalty": _mean([penalty(r.infractions, include_min_speed=include_min_speed)
                                     for r in results]),
        "success_rate": success_rate(results, num_routes=num_routes),
        "km_driven": km_driven(results),
        "collisions_vehicle_per_km": per_km[COLLISION_VEHICLE],
        "collisions_layout_per_km": per_km[COLLISION_LAYOUT],
        "collisions_pedestrian_per_km": per_km[COLLISION_PEDESTRIAN],
        "off_road_per_km": per_km[OFF_ROAD],
        "off_road_routes": sum(any(i.kind == OFF_ROAD for i in r.infractions) for r in results),
        "route_timeouts": sum(any(i.kind == ROUTE_TIMEOUT for i in r.infractions) for r in results),
        "control_timeouts": sum(r.control_timeouts for r in results),
        "infractions_per_km": per_km,
        "statuses": statuses,
        "mean_speed_mps": _mean([mean_speed(r) for r in results]),
        "comfort": _mean(fractions),
        "mean_abs_lon_jerk": _mean(jerks),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies else None,
        "mean_kept_tokens": _mean(kept),
        "include_min_speed": include_min_speed,
    }


# ---------------------------------------------------------------------------------------------------------------
# Route completion from checkpoints (MetaDrive navigation)


def route_progress(segment_lengths: Sequence[float], segment_index: int, longitudinal: float) -> float:
    """(sum(seg[:i]) + clamp(lon, 0, seg[i])) / sum(seg): the fraction of a checkpoint route driven when the ego
    is `longitudinal` metres along segment `segment_index`."""
    total = float(sum(segment_lengths))
    if not segment_lengths or total <= 0 or any(s < 0 for s in segment_lengths):
        raise ValueError(f"segment lengths must be non-negative with a positive sum, got {list(segment_lengths)}")
    if not 0 <= segment_index < len(segment_lengths):
        raise ValueError(f"segment index {segment_index} outside 0..{len(segment_lengths) - 1}")
    seg = float(segment_lengths[segment_index])
    along = min(max(float(longitudinal), 0.0), seg)
    return (float(sum(segment_lengths[:segment_index])) + along) / total


class ProgressTracker:
    """Route completion over an episode: the maximum progress reached so far.

    `update(index, lon)` with `index=None` (the ego is inside a junction or otherwise not on a route segment)
    holds the last value. `complete()` marks the route done (e.g. MetaDrive's arrive_dest, which fires a little
    before the end of the last segment).
    """

    def __init__(self, segment_lengths: Sequence[float]) -> None:
        route_progress(segment_lengths, 0, 0.0)  # validates
        self.segment_lengths = [float(s) for s in segment_lengths]
        self.current = 0.0
        self.best = 0.0

    @property
    def value(self) -> float:
        """The route completion to report (0..1): the best progress so far."""
        return self.best

    def update(self, segment_index: int | None, longitudinal: float | None = None) -> float:
        """Fold in one observation; returns the best progress so far (0..1)."""
        if segment_index is not None:
            self.current = route_progress(self.segment_lengths, segment_index, 0.0 if longitudinal is None
                                          else longitudinal)
            self.best = max(self.best, self.current)
        return self.best

    def complete(self) -> float:
        """The simulator declared arrival: completion is 1.0 from now on."""
        self.current = self.best = 1.0
        return self.best
