"""The driving command a policy produces for one camera frame."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


def _as_waypoints(value: object) -> np.ndarray:
    """Copy `value` into a read-only float32 (N, 2) array so a frozen Action cannot be changed through it."""
    array = np.array(value, dtype=np.float32)
    if array.size == 0:
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"Action.waypoints must have shape (N, 2), got {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Action:
    """One control command plus the trajectory it was derived from.

    `steer` is in [-1, 1] with positive = LEFT (ROS REP 103); `throttle` and `brake` are in [0, 1];
    `target_speed` is in m/s; `waypoints` is (N, 2) in the ego frame in metres (x forward, y left).
    Construction does not enforce the ranges (see `clipped`), so a faulty model stays visible via `is_finite`.
    """

    steer: float
    throttle: float
    brake: float
    target_speed: float = 0.0
    waypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))

    def __post_init__(self) -> None:
        for name in ("steer", "throttle", "brake", "target_speed"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "waypoints", _as_waypoints(self.waypoints))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Action):
            return NotImplemented
        scalars = (self.steer, self.throttle, self.brake, self.target_speed)
        other_scalars = (other.steer, other.throttle, other.brake, other.target_speed)
        return scalars == other_scalars and np.array_equal(self.waypoints, other.waypoints)

    def __hash__(self) -> int:
        return hash((self.steer, self.throttle, self.brake, self.target_speed, self.waypoints.tobytes()))

    def is_finite(self) -> bool:
        """True when every scalar and every waypoint coordinate is finite."""
        scalars = (self.steer, self.throttle, self.brake, self.target_speed)
        return all(math.isfinite(v) for v in scalars) and bool(np.isfinite(self.waypoints).all())

    def clipped(self) -> Action:
        """A copy with steer in [-1, 1], throttle and brake in [0, 1] and target_speed >= 0 (NaN stays NaN)."""
        return replace(
            self,
            steer=float(np.clip(self.steer, -1.0, 1.0)),
            throttle=float(np.clip(self.throttle, 0.0, 1.0)),
            brake=float(np.clip(self.brake, 0.0, 1.0)),
            target_speed=float(np.maximum(self.target_speed, 0.0)),
        )

    @classmethod
    def safe_stop(cls, steer: float = 0.0, num_waypoints: int = 0) -> Action:
        """Full brake, no throttle, the given steer, zero target speed and `num_waypoints` zero waypoints.

        A non-finite steer (e.g. copied from a faulty action) becomes 0 so the stop itself is always valid.
        """
        return cls(
            steer=float(np.clip(steer, -1.0, 1.0)) if math.isfinite(steer) else 0.0,
            throttle=0.0,
            brake=1.0,
            target_speed=0.0,
            waypoints=np.zeros((num_waypoints, 2), dtype=np.float32),
        )
