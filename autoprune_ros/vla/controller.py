"""Waypoints + target speed -> steer / throttle / brake: pure pursuit and a speed PI loop (numpy only)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

_EPS = 1e-6


def _lookahead_point(points: np.ndarray, lookahead: float) -> np.ndarray | None:
    """The point where the path origin -> points[0] -> ... -> points[-1] first leaves the circle of radius
    `lookahead` around the ego origin; the path's last point if it never does; None for a degenerate path."""
    path = np.vstack([np.zeros((1, 2)), points])
    dist = np.hypot(path[:, 0], path[:, 1])
    outside = np.nonzero(dist >= lookahead)[0]
    if outside.size == 0:
        return path[-1] if dist[-1] > _EPS else None
    i = int(outside[0])
    start, end = path[i - 1], path[i]
    # Solve |start + t (end - start)| = lookahead for t in [0, 1]; start is inside the circle, end is not.
    seg = end - start
    a = float(seg @ seg)
    b = 2.0 * float(start @ seg)
    c = float(start @ start) - lookahead**2
    t = (-b + math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    return start + min(max(t, 0.0), 1.0) * seg


@dataclass
class WaypointController:
    """Tracks a predicted trajectory: pure pursuit for steering, PI on speed error for throttle or brake.

    Steer is normalised by `max_steer_angle` into [-1, 1], positive = left. Throttle and brake are never both
    positive. The PI integral is the only state; call `reset()` when the episode or the vehicle changes.
    """

    wheelbase: float = 2.7  # m, front-to-rear axle distance
    max_steer_angle: float = 0.6  # rad, road-wheel angle that maps to |steer| = 1
    lookahead_min: float = 3.0  # m, pure-pursuit lookahead at standstill
    lookahead_time: float = 0.8  # s, lookahead grows by speed * lookahead_time
    speed_kp: float = 0.4  # throttle per m/s of speed error
    speed_ki: float = 0.1  # throttle per m of accumulated speed error
    integral_limit: float = 5.0  # m, anti-windup bound on the accumulated error
    max_throttle: float = 0.75
    brake_gain: float = 0.5  # brake per unit of negative PI output
    brake_deadband: float = 0.05  # negative PI output below this coasts instead of braking
    stop_speed: float = 0.3  # m/s; below this with target below it too, hold the brake
    standstill_brake: float = 0.5
    _integral: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"WaypointController.{f.name} must be a finite number, got {value!r}")
            setattr(self, f.name, float(value))
        for name in ("wheelbase", "max_steer_angle", "lookahead_min"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"WaypointController.{name} must be > 0, got {getattr(self, name)}")
        for name in ("lookahead_time", "speed_kp", "speed_ki", "integral_limit", "brake_gain", "brake_deadband",
                     "stop_speed"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"WaypointController.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_throttle", "standstill_brake"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WaypointController.{name} must be in [0, 1], got {getattr(self, name)}")

    def reset(self) -> None:
        """Forget the accumulated speed error."""
        self._integral = 0.0

    def steer(self, waypoints: np.ndarray, speed_mps: float) -> float:
        """Pure-pursuit steer in [-1, 1] (left positive) towards the lookahead point on `waypoints`."""
        lookahead = max(self.lookahead_min, self.lookahead_time * abs(speed_mps))
        target = _lookahead_point(waypoints, lookahead)
        if target is None:
            return 0.0
        dist_sq = float(target @ target)
        curvature = 2.0 * float(target[1]) / dist_sq
        angle = math.atan(self.wheelbase * curvature)
        return float(np.clip(angle / self.max_steer_angle, -1.0, 1.0))

    def longitudinal(self, target_speed: float, speed_mps: float, dt: float) -> tuple[float, float]:
        """(throttle, brake) from a PI loop on `target_speed - speed_mps`; at most one of them is positive."""
        if target_speed <= self.stop_speed and abs(speed_mps) <= self.stop_speed:
            self._integral = 0.0
            return 0.0, self.standstill_brake
        error = target_speed - speed_mps
        self._integral = float(np.clip(self._integral + error * dt, -self.integral_limit, self.integral_limit))
        effort = self.speed_kp * error + self.speed_ki * self._integral
        if effort > 0.0:
            return min(effort, self.max_throttle), 0.0
        if -effort <= self.brake_deadband:
            return 0.0, 0.0
        return 0.0, min(-effort * self.brake_gain, 1.0)

    def command(self, waypoints: np.ndarray, target_speed: float, speed_mps: float, dt: float) -> tuple[
            float, float, float]:
        """(steer, throttle, brake) for one control step of `dt` seconds.

        Raises ValueError on non-finite or malformed inputs, leaving the PI state untouched.
        """
        points = np.asarray(waypoints, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"waypoints must have shape (N, 2), got {points.shape}")
        if not np.isfinite(points).all():
            raise ValueError("waypoints must be finite")
        for name, value in (("target_speed", target_speed), ("speed_mps", speed_mps), ("dt", dt)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if dt <= 0.0:
            raise ValueError(f"dt must be > 0 s, got {dt}")
        throttle, brake = self.longitudinal(float(target_speed), float(speed_mps), float(dt))
        return self.steer(points, float(speed_mps)), throttle, brake
