"""The expert-takeover rule of supervised runs: the deviation it watches, the yaw rate it extrapolates (the one the
bridge and the recorder publish) and its hysteresis."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autoprune_sim.takeover import Takeover, deviation_ahead, distance_to_path

STRAIGHT = np.stack((np.arange(0.0, 60.0, 2.0), np.zeros(30)), axis=-1)


def _circle(radius: float) -> np.ndarray:
    """A left bend from (0, 0) heading +x, centre (0, radius)."""
    angles = np.arange(0.0, 1.5, 2.0 / radius)
    return np.stack((radius * np.sin(angles), radius * (1 - np.cos(angles))), axis=-1)


def test_distance_to_path() -> None:
    assert distance_to_path(STRAIGHT, np.array([3.0, 0.0])) == 0.0
    assert distance_to_path(STRAIGHT, np.array([3.0, -1.5])) == pytest.approx(1.5)
    assert distance_to_path(STRAIGHT, np.array([-3.0, 4.0])) == pytest.approx(5.0), "beyond the start: to its end"


def test_deviation_ahead_holds_the_turn_rate() -> None:
    assert deviation_ahead(STRAIGHT, 0.0, 0.0, 0.0, 8.0, 0.0) == pytest.approx(0.0)
    assert deviation_ahead(STRAIGHT, 0.0, 0.4, 0.0, 8.0, 0.0) == pytest.approx(0.4), "an offset counts now"
    assert deviation_ahead(STRAIGHT, 0.0, 0.0, 0.2, 8.0, 0.0) == pytest.approx(8.0 * math.sin(0.2), abs=1e-6)
    bend = _circle(30.0)
    assert deviation_ahead(bend, 0.0, 0.0, 0.0, 8.0, 8.0 / 30.0) < 0.05, "following the bend"
    assert deviation_ahead(bend, 0.0, 0.0, 0.0, 8.0, 0.0) > 0.9, "running straight where the lane bends"
    assert deviation_ahead(STRAIGHT, 0.0, 0.0, 0.2, 0.0, 0.0) == pytest.approx(3.0 * math.sin(0.2), abs=1e-6), \
        "at a standstill it looks min_m ahead"


def test_takeover_hysteresis() -> None:
    takeover = Takeover(engage_m=0.7, release_m=0.25, min_ticks=3)
    deviations = [0.1, 0.8, 0.1, 0.1, 0.5, 0.2, 0.1, 0.9, 0.9]
    steered = [takeover.update(tick, d) for tick, d in enumerate(deviations)]
    assert steered == [False, True, True, True, True, False, False, True, True]
    assert takeover.spans == [{"start": 1, "end": 5}, {"start": 7, "end": 9}] and takeover.ticks() == 6
    assert Takeover(engage_m=0.2).release_m == 0.2
    for bad in ({"engage_m": 0.0}, {"engage_m": 0.5, "release_m": 0.6}, {"min_ticks": -1}):
        with pytest.raises(ValueError):
            Takeover(**bad)


def test_yaw_rate_is_the_turn_since_the_previous_tick() -> None:
    from autoprune_sim.metadrive_env import YawRate

    rate = YawRate(0.1)
    assert rate.update(0.5) == 0.0  # nothing to compare with at the first tick
    assert rate.update(0.55) == pytest.approx(0.5) and rate.value == pytest.approx(0.5)
    rate.update(math.pi - 0.01)
    assert rate.update(-math.pi + 0.01) == pytest.approx(0.2)  # across +-pi: a small left turn, not -62 rad/s
