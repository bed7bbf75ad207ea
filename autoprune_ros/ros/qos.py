"""QoS profiles by name, so that parameters and command lines can choose them."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def stream_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """A volatile keep-last profile for sensor streams; best effort with depth 1 means "latest frame only"."""
    if reliability not in RELIABILITY:
        raise ValueError(f"unknown reliability {reliability!r}: use one of {sorted(RELIABILITY)}")
    if depth < 1:
        raise ValueError(f"QoS depth must be at least 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable transient-local: late subscribers still get the last message (instructions, static info)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
