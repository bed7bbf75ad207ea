"""A one-slot mailbox between the camera callback and the inference thread: the newest frame wins.

A frame that arrives while another is pending replaces it and is counted as dropped-stale: frames are never
queued behind a slow model, so every command answers the freshest image.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrame(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.received = 0
        self.dropped_stale = 0

    def put(self, item: T) -> None:
        """Offer a frame; never blocks."""
        with self._cond:
            if self._item is not None:
                self.dropped_stale += 1
            self._item = item
            self.received += 1
            self._cond.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """Wait for the newest frame and remove it; None on timeout or after close()."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiter; later take() calls return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
