"""Compute latency in the closed loop: when a control computed from a camera frame takes effect.

A synchronous simulator waits for the model before it ticks, so however slow the model is, its latency never
shows in the driving score. `ControlDelay` lets a bridge choose between:

- ``"sync"``: the control computed from the frame of tick t is applied at tick t (the simulator waited for it).
  This is the Leaderboard's behaviour; latencies are recorded but do not change the schedule.
- ``"latency"``: the control computed from the frame of tick t, with measured latency L seconds (camera frame to
  control, including any queueing the caller wants counted), takes effect at tick t + k, k = ceil(L / dt). Until
  then the control in effect before keeps being applied. L = 0 gives k = 0 (same as sync); 0 < L <= dt gives
  k = 1 (the next tick); dt < L <= 2 dt gives k = 2, and so on. The ceiling tolerates float noise of 1e-9 ticks
  (0.3 s / 0.1 s is 3 ticks, not 4).

Precisely, with every submitted frame f having an effective tick e(f) (f itself in sync mode):

- ``control_for(T)`` returns the control of the newest frame f (largest frame tick) with e(f) <= T; if no
  submitted frame is effective yet, the initial control given to the constructor (a brake / neutral command).
- So controls can complete out of order: if frame 5 is effective at tick 7 but frame 6 already at tick 7 or
  earlier, frame 6's control is applied and frame 5's never is (it is counted in ``superseded_frames``). An older
  frame's control never replaces a newer one that is already in effect.
- Frames that never submit a control (dropped, timed out) simply leave the previous control in effect.
- ``late_frames`` counts frames whose control was not ready by the next tick (k > 1, i.e. L > dt), in either mode;
  in sync mode that is how many frames would have missed a real-time deadline.
- Calls go forward in time: ``control_for`` ticks must not decrease, and a control must be submitted before any
  tick it would affect has been queried (e(f) > the last queried tick); either mistake raises ValueError. Each
  frame tick may be submitted once. Only controls still able to matter are kept (a route's set of frame
  ticks aside).

The class models no queueing itself: a bridge that wants a single busy model to delay the next frames passes
the total delay as ``latency_s`` (and does not submit frames the node dropped). Every result a bridge writes
must include ``describe()``, so the mode is always stated next to the scores.

Standard library only (the simulator bridges import this module in their own environment).
"""
from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

C = TypeVar("C")

MODES = ("sync", "latency")
_TICK_EPS = 1e-9


def delay_ticks(latency_s: float, dt: float) -> int:
    """ceil(latency / dt) with a 1e-9-tick tolerance for float noise; 0 for latency 0."""
    if not (math.isfinite(latency_s) and latency_s >= 0):
        raise ValueError(f"latency must be finite and >= 0 s, got {latency_s}")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be finite and > 0 s, got {dt}")
    return max(0, math.ceil(latency_s / dt - _TICK_EPS))


class ControlDelay(Generic[C]):
    """The control in effect at each simulator tick, given per-frame controls and their compute latencies."""

    def __init__(self, dt: float, mode: str = "latency", initial: C | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        delay_ticks(0.0, dt)  # validates dt
        self.dt = float(dt)
        self.mode = mode
        self.initial = initial
        self.reset()

    def reset(self) -> None:
        """Forget all frames and counters (a new route); the initial control is in effect again."""
        self._pending: dict[int, tuple[int, C]] = {}  # frame tick -> (effective tick, control)
        self._active_frame: int | None = None
        self._active: C | None = self.initial
        self._last_query: int | None = None
        self._frames: set[int] = set()  # every submitted frame tick (one int per frame of a route)
        self.submitted = 0
        self.late_frames = 0
        self.superseded_frames = 0
        self.max_delay_ticks = 0
        self._delay_sum = 0

    def effective_tick(self, frame_tick: int, latency_s: float) -> int:
        """The tick at which a control for `frame_tick` with this latency takes effect, in this mode."""
        k = delay_ticks(latency_s, self.dt)
        return frame_tick if self.mode == "sync" else frame_tick + k

    def submit(self, frame_tick: int, control: C, latency_s: float) -> int:
        """Record the control computed from the frame of `frame_tick`; returns its effective tick."""
        k = delay_ticks(latency_s, self.dt)
        effective = frame_tick if self.mode == "sync" else frame_tick + k
        if frame_tick in self._frames:
            raise ValueError(f"frame {frame_tick} already has a control")
        if self._last_query is not None and effective <= self._last_query:
            raise ValueError(f"the control of frame {frame_tick} takes effect at tick {effective}, but tick "
                             f"{self._last_query} was already applied: submit controls before querying the "
                             f"ticks they affect")
        self._frames.add(frame_tick)
        self.submitted += 1
        self.late_frames += int(k > 1)
        self.max_delay_ticks = max(self.max_delay_ticks, k)
        self._delay_sum += k
        if self._active_frame is not None and frame_tick < self._active_frame:
            self.superseded_frames += 1  # a newer frame's control is already in effect
        else:
            self._pending[frame_tick] = (effective, control)
        return effective

    def control_for(self, tick: int) -> C | None:
        """The control to apply at `tick` (ticks must not decrease between calls)."""
        if self._last_query is not None and tick < self._last_query:
            raise ValueError(f"tick {tick} is before the last queried tick {self._last_query}")
        self._last_query = tick
        ready = [f for f, (e, _) in self._pending.items() if e <= tick]
        if ready:
            newest = max(ready)
            if self._active_frame is None or newest > self._active_frame:
                self._active_frame, self._active = newest, self._pending[newest][1]
        # Drop what can no longer matter: everything applied or older than the control in effect.
        for f in list(self._pending):
            if f == self._active_frame:
                del self._pending[f]
            elif self._active_frame is not None and f < self._active_frame:
                del self._pending[f]
                self.superseded_frames += 1
        return self._active

    @property
    def pending(self) -> int:
        """Submitted controls not yet in effect (nor superseded)."""
        return len(self._pending)

    def describe(self) -> dict[str, Any]:
        """JSON-ready statement of the mode and its counters, to store with every result."""
        rule = ("control of frame t applied at tick t (simulator waits for the model)" if self.mode == "sync"
                else "control of frame t applied from tick t + ceil(latency / dt); the previous control holds")
        return {
            "mode": self.mode,
            "dt": self.dt,
            "rule": rule,
            "submitted": self.submitted,
            "late_frames": self.late_frames,
            "superseded_frames": self.superseded_frames,
            "pending": self.pending,
            "max_delay_ticks": self.max_delay_ticks,
            "mean_delay_ticks": self._delay_sum / self.submitted if self.submitted else None,
        }
