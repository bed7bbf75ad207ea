"""What the bag-reading modules share: `BagError`, and the contract of a storage reader (a "source").

A source (`bag_sources`, `bag_recovery`) reads one bag's storage as raw (topic, bag time, bytes) streams. It has
`topics` (name -> `StoredTopic`), `storage` ("mcap", "sqlite3" or "rosbag1"), `ros1`, `start_ns`, `duration_ns`,
`messages(topics)`, `recovery(problems)` (the recovery-mode reader of the same files, or None) and `close()`.
"""
from __future__ import annotations

from dataclasses import dataclass


class BagError(ValueError):
    """A bag that cannot be replayed at all; the message names the path, the cause and the fix."""


@dataclass
class StoredTopic:
    """One topic as a source lists it."""

    name: str
    msgtype: str
    count: int
    definition: tuple[str, str] | None  # ("msg" | "idl", text) as stored in the bag, None if it has none
    encoding: str  # "cdr" or "ros1" (anything else cannot be decoded)


class Unreadable(Exception):
    """A storage file that yields nothing (wrong format, unreadable header)."""

