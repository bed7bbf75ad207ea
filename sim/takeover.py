"""When the expert takes the wheel from the driver under test in an expert-supervised run (DAgger-style data
collection: the model drives, so the data shows the states its own errors lead to, and the expert steers back
before those errors end the episode). Pure logic, no simulator."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def distance_to_path(points: np.ndarray, point: np.ndarray) -> float:
    """The shortest distance (m) from `point` (2,) to the polyline `points` (K >= 2, 2)."""
    starts, ends = points[:-1], points[1:]
    seg = ends - starts
    length2 = np.maximum((seg**2).sum(axis=1), 1e-12)
    t = np.clip(((point - starts) * seg).sum(axis=1) / length2, 0.0, 1.0)
    return float(np.min(np.hypot(*(starts + seg * t[:, None] - point).T)))


def deviation_ahead(path: np.ndarray, x: float, y: float, yaw: float, speed: float, yaw_rate: float,
                    horizon_s: float = 1.0, min_m: float = 3.0) -> float:
    """How far the car will be from `path` ((K, 2) map-frame points of the lane it should follow) if it keeps its
    speed and turn rate for `horizon_s` (at least `min_m` of travel), or is now, whichever is more. Holding the
    turn rate, a car that follows a bend scores about zero and one that runs straight where the lane turns scores
    its miss before it is off the road."""
    here = np.array([x, y])
    if len(path) < 2:
        return 0.0
    distance = max(speed * horizon_s, min_m)
    curvature = yaw_rate / max(speed, 0.5)
    if abs(curvature) < 1e-6:
        ahead = here + distance * np.array([math.cos(yaw), math.sin(yaw)])
    else:
        turn = curvature * distance
        chord = np.array([math.sin(yaw + turn) - math.sin(yaw), math.cos(yaw) - math.cos(yaw + turn)])
        ahead = here + chord / curvature
    return max(distance_to_path(path, here), distance_to_path(path, ahead))


@dataclass
class Takeover:
    """Hysteresis on the car's deviation from the lane the expert steers for (`deviation_ahead`): the expert
    takes over when it exceeds `engage_m`, and hands back after at least `min_ticks` once it is below
    `release_m`. `spans` records the takeovers as {"start", "end"} ticks (end exclusive)."""

    engage_m: float = 0.7
    release_m: float | None = None  # default: 0.25 m, or engage_m if smaller
    min_ticks: int = 10
    spans: list[dict[str, int]] = field(default_factory=list)
    _since: int | None = None

    def __post_init__(self) -> None:
        if self.release_m is None:
            self.release_m = min(0.25, self.engage_m)
        if not (0 < self.release_m <= self.engage_m and self.min_ticks >= 0):
            raise ValueError(f"takeover thresholds need 0 < release_m <= engage_m and min_ticks >= 0, got "
                             f"engage_m={self.engage_m}, release_m={self.release_m}, min_ticks={self.min_ticks}")

    @property
    def active(self) -> bool:
        return self._since is not None

    def update(self, tick: int, deviation_m: float) -> bool:
        """Whether the expert steers at `tick`, given the car's deviation there."""
        if self._since is None:
            if deviation_m > self.engage_m:
                self._since = tick
                self.spans.append({"start": tick, "end": tick + 1})
        elif tick - self._since >= self.min_ticks and deviation_m < self.release_m:
            self._since = None
        if self._since is not None:
            self.spans[-1]["end"] = tick + 1
        return self._since is not None

    def ticks(self) -> int:
        """How many ticks the expert steered."""
        return sum(span["end"] - span["start"] for span in self.spans)
