"""Match frames of several cameras into one set of views by stamp (the node's multi-camera input).

The first camera is the primary: each of its frames starts a set. Every other camera contributes its newest
frame: "synced" when its stamp is within the tolerance of the primary's, "unsynced" when it is older or newer
but still fresh (it stands in for a short gap rather than changing the number of views), and "missing" when it
is older than the camera timeout or never arrived; the set then has fewer views and the node reports a
degraded state.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class ViewSet(Generic[T]):
    stamp_ns: int  # the primary camera's stamp: every output for this set carries it
    views: list[T]  # in camera order, missing cameras left out
    cameras: list[int]  # index of the camera of each view
    unsynced: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


class FrameSync(Generic[T]):
    def __init__(self, num_cameras: int, tolerance_ns: int, timeout_ns: int) -> None:
        if num_cameras < 1:
            raise ValueError("at least one camera is needed")
        self.num_cameras, self.tolerance_ns, self.timeout_ns = num_cameras, tolerance_ns, timeout_ns
        self._latest: list[tuple[int, int, T] | None] = [None] * num_cameras  # (stamp_ns, arrival_ns, frame)
        self._lock = threading.Lock()

    def add(self, camera: int, stamp_ns: int, arrival_ns: int, frame: T) -> ViewSet[T] | None:
        """Record a frame; returns a view set when `camera` is the primary, else None."""
        with self._lock:
            self._latest[camera] = (stamp_ns, arrival_ns, frame)
            if camera != 0:
                return None
            views, cameras, unsynced, missing = [frame], [0], [], []
            for other in range(1, self.num_cameras):
                entry = self._latest[other]
                if entry is None or arrival_ns - entry[1] > self.timeout_ns:
                    missing.append(other)
                    continue
                if abs(entry[0] - stamp_ns) > self.tolerance_ns:
                    unsynced.append(other)
                views.append(entry[2])
                cameras.append(other)
            return ViewSet(stamp_ns, views, cameras, unsynced, missing)

    def age_ns(self, camera: int, now_ns: int) -> int | None:
        """Time since `camera`'s newest frame arrived, None if none has."""
        with self._lock:
            entry = self._latest[camera]
        return None if entry is None else now_ns - entry[1]
