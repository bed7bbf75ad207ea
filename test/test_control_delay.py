"""ControlDelay: when a control computed from a frame takes effect (sync vs injected latency)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune_sim.control_delay import ControlDelay, delay_ticks

BRAKE = "brake"


def run_schedule(delay: ControlDelay, frames: dict[int, float], ticks: int) -> list:
    """Drive a bridge-like loop: at each tick submit that tick's frame (if any), then read the control."""
    applied = []
    for t in range(ticks):
        if t in frames:
            delay.submit(t, f"c{t}", frames[t])
        applied.append(delay.control_for(t))
    return applied


def test_delay_ticks_is_the_ceiling_with_float_noise_tolerated() -> None:
    # dt 0.1: 0.05 -> ceil(0.5) = 1, 0.15 -> ceil(1.5) = 2, 0.25 -> ceil(2.5) = 3
    assert [delay_ticks(x, 0.1) for x in (0.05, 0.15, 0.25)] == [1, 2, 3]
    # exact multiples do not round up through float noise: 0.3/0.1 = 2.9999999999999996, 0.2/0.1 = 2.0
    assert delay_ticks(0.3, 0.1) == 3 and delay_ticks(0.2, 0.1) == 2 and delay_ticks(0.1, 0.1) == 1
    assert delay_ticks(0.15, 0.05) == 3  # 2.9999999999999996 ticks
    assert delay_ticks(0.0, 0.1) == 0 and delay_ticks(1e-6, 0.1) == 1
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            delay_ticks(bad, 0.1)
    with pytest.raises(ValueError):
        delay_ticks(0.1, 0.0)


@pytest.mark.parametrize("latency,k", [(0.05, 1), (0.15, 2), (0.25, 3)])
def test_uniform_latency_shifts_every_control_by_k_ticks(latency: float, k: int) -> None:
    # Every tick has a frame; frame t's control applies from tick t + k, the brake before the first one.
    delay = ControlDelay(0.1, "latency", initial=BRAKE)
    applied = run_schedule(delay, {t: latency for t in range(8)}, 8)
    assert applied == [BRAKE] * k + [f"c{t}" for t in range(8 - k)]
    assert delay.late_frames == (8 if k > 1 else 0)  # late = not ready by the next tick (k > 1)
    assert delay.superseded_frames == 0
    assert delay.pending == k  # the last k frames would take effect after tick 7


def test_mixed_latencies_out_of_order_newest_frame_wins() -> None:
    # dt 0.1. frame: latency -> k -> effective tick
    #   0: 0.25 -> 3 -> 3      1: 0.05 -> 1 -> 2      2: 0.15 -> 2 -> 4
    #   3: 0.05 -> 1 -> 4      4: 0.25 -> 3 -> 7
    # tick 0, 1: nothing effective -> brake
    # tick 2: frame 1 effective -> c1
    # tick 3: frame 0 effective but older than frame 1 (in effect) -> c1; frame 0 superseded
    # tick 4: frames 2 and 3 effective -> the newest, c3; frame 2 superseded
    # tick 5, 6: hold c3;  tick 7: frame 4 -> c4
    delay = ControlDelay(0.1, "latency", initial=BRAKE)
    applied = run_schedule(delay, {0: 0.25, 1: 0.05, 2: 0.15, 3: 0.05, 4: 0.25}, 8)
    assert applied == [BRAKE, BRAKE, "c1", "c1", "c3", "c3", "c3", "c4"]
    assert delay.superseded_frames == 2
    assert delay.late_frames == 3  # frames 0, 2, 4 have k > 1
    assert delay.pending == 0


def test_older_frame_submitted_after_a_newer_one_in_effect_never_applies() -> None:
    delay = ControlDelay(0.1, "latency", initial=BRAKE)
    delay.submit(1, "new", 0.05)  # effective tick 2
    assert delay.control_for(2) == "new"
    delay.submit(0, "old", 0.25)  # effective tick 3, but frame 0 is older than frame 1 in effect
    assert delay.control_for(3) == "new"
    assert delay.superseded_frames == 1


def test_previous_control_holds_through_dropped_frames() -> None:
    # Frames 2..5 never answered (dropped / timed out): c1 (effective at tick 2) holds until c6 at tick 7.
    delay = ControlDelay(0.1, "latency", initial=BRAKE)
    applied = run_schedule(delay, {0: 0.05, 1: 0.05, 6: 0.05}, 9)
    assert applied == [BRAKE, "c0", "c1", "c1", "c1", "c1", "c1", "c6", "c6"]


def test_sync_mode_is_the_identity_whatever_the_latency() -> None:
    delay = ControlDelay(0.1, "sync", initial=BRAKE)
    applied = run_schedule(delay, {0: 0.05, 1: 0.15, 2: 0.25, 3: 0.0}, 4)
    assert applied == ["c0", "c1", "c2", "c3"]
    assert delay.late_frames == 2  # 0.15 s and 0.25 s would have missed a 0.1 s tick in real time
    assert delay.describe()["mode"] == "sync"


def test_zero_latency_in_latency_mode_applies_at_the_frame_tick() -> None:
    delay = ControlDelay(0.1, "latency", initial=BRAKE)
    assert run_schedule(delay, {0: 0.0, 1: 0.0}, 2) == ["c0", "c1"]


def test_misuse_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        ControlDelay(0.1, "async")
    with pytest.raises(ValueError, match="dt"):
        ControlDelay(0.0, "sync")
    delay = ControlDelay(0.1, "latency", initial=BRAKE)
    delay.submit(0, "a", 0.05)
    with pytest.raises(ValueError, match="already"):
        delay.submit(0, "b", 0.05)
    delay.control_for(3)
    with pytest.raises(ValueError, match="before the last queried tick"):
        delay.control_for(2)
    with pytest.raises(ValueError, match="already applied"):
        delay.submit(2, "late", 0.05)  # would take effect at tick 3, which was already applied
    with pytest.raises(ValueError, match="latency"):
        delay.submit(5, "x", -1.0)


def test_describe_states_mode_and_counters_and_reset_clears_them() -> None:
    delay = ControlDelay(0.05, "latency", initial=BRAKE)
    run_schedule(delay, {0: 0.12, 1: 0.01}, 4)  # k = ceil(2.4) = 3 and ceil(0.2) = 1
    info = delay.describe()
    assert info["mode"] == "latency" and info["dt"] == 0.05 and "ceil" in info["rule"]
    assert info["submitted"] == 2 and info["late_frames"] == 1 and info["superseded_frames"] == 1
    assert info["max_delay_ticks"] == 3 and info["mean_delay_ticks"] == 2.0
    delay.reset()
    assert delay.describe()["submitted"] == 0 and delay.control_for(0) == BRAKE


def reference_control(submissions: list[tuple[int, int]], tick: int) -> str:
    """Brute force: the newest frame whose effective tick is <= tick, else the brake."""
    ready = [frame for frame, eff in submissions if eff <= tick]
    return f"c{max(ready)}" if ready else BRAKE


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0.0, 0.6)), min_size=1, max_size=30),
       st.sampled_from(["sync", "latency"]))
def test_matches_the_brute_force_definition(latencies: list[float | None], mode: str) -> None:
    delay = ControlDelay(0.1, mode, initial=BRAKE)
    submissions: list[tuple[int, int]] = []
    for t in range(len(latencies) + 8):
        if t < len(latencies) and latencies[t] is not None:
            submissions.append((t, delay.submit(t, f"c{t}", latencies[t])))
        assert delay.control_for(t) == reference_control(submissions, t)
    applied_or_superseded = delay.superseded_frames + delay.pending
    assert applied_or_superseded <= len(submissions)
