"""What a bag holds for replay, in the shapes every replay stage shares (reader, offline runner, live player,
report). No ROS client library here: messages are rosbags objects, stamps integer nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TopicMap:
    """Which bag topic plays which role. `cameras[0]` is the primary camera: each of its frames is one replay
    frame. `reference_control` is the recorded driver's command (carla_msgs/CarlaEgoVehicleControl or
    ackermann_msgs/AckermannDriveStamped), used as ground truth by the report when present; `route` a
    nav_msgs/Path of the route ahead in the odometry's frame, for models with a route input."""

    cameras: tuple[str, ...]
    instruction: str | None = None
    odometry: str | None = None
    reference_control: str | None = None
    route: str | None = None


@dataclass(frozen=True)
class ReferenceControl:
    """The recorded driver's command for a frame, in the project's convention (steer in [-1, 1], positive =
    LEFT as in `vla.action.Action`; CARLA's positive-right steer is negated on reading). `speed` is the commanded
    speed in m/s when the message carries one (Ackermann), else None."""

    steer: float
    throttle: float | None = None
    brake: float | None = None
    speed: float | None = None


@dataclass
class ReplayFrame:
    """One frame to run: the primary camera's message and the other cameras' messages matched to it, plus the
    inputs in force at its stamp (latest instruction and odometry at or before it, as the node would hold them)."""

    index: int  # 0-based position among the frames of the bag, in stamp order
    stamp_ns: int  # header stamp of the primary camera's message
    bag_time_ns: int  # the bag's record time of that message (drives live playback)
    views: list[Any]  # rosbags-deserialized sensor_msgs Image / CompressedImage, in camera order
    instruction: str | None  # None: no instruction yet at this stamp (the node's default parameter applies)
    speed_mps: float | None  # hypot(twist.linear.x, .y) of the latest odometry; None: none yet
    reference: ReferenceControl | None = None  # latest reference control at or before the stamp
    yaw_rate_rps: float | None = None  # twist.angular.z of the latest odometry; None: none yet
    route: np.ndarray | None = None  # (K, 2) latest route in the ego frame of the latest odometry; None: none yet


@dataclass
class Track:
    """The odometry of the whole bag (for reference trajectories): stamps (T,) int64 ns in increasing order,
    poses (T, 3) map-frame x, y, yaw (REP 103), speeds (T,) m/s."""

    stamps_ns: np.ndarray
    poses: np.ndarray
    speeds: np.ndarray

    def __len__(self) -> int:
        return len(self.stamps_ns)


@dataclass
class BagInfo:
    """A bag's identity and what reading it found. `problems` are human-readable lines (a truncated file, an
    unknown message type skipped, out-of-order stamps re-sorted, undecodable messages) that the report shows:
    replay processes what can be read and says what it could not."""

    path: Path
    storage: str  # "mcap", "sqlite3" or "rosbag1"
    topics: TopicMap
    message_counts: dict[str, int]  # per topic, as listed in the bag's index
    duration_ns: int
    problems: list[str] = field(default_factory=list)


@dataclass
class FrameRecord:
    """What one configuration produced for one frame, offline or through the live node (same fields, so the
    report and the gate treat both alike). `status` is "ok", "failed" (the pipeline raised or the node commanded
    a safe stop; `error` says why) or "missing" (live only: the node published nothing for this stamp)."""

    index: int
    stamp_ns: int
    status: str = "ok"
    error: str = ""
    steer: float | None = None  # positive = left, [-1, 1]
    throttle: float | None = None
    brake: float | None = None
    target_speed: float | None = None  # m/s
    waypoints: list[list[float]] | None = None  # (N, 2) ego frame, x forward, y left, metres
    budget: float | None = None  # visual tokens per layer asked of the pruner; None: not pruned
    visual_tokens: int | None = None  # visual tokens entering the decoder (all views)
    kept_tokens_per_layer: list[int] | None = None
    complexity: float | None = None  # AutoPrune's text-vision mutual information
    slope: float | None = None
    flops_ratio: float | None = None  # decoder prefill FLOPs / unpruned
    latency_ms: float | None = None  # image decode + pipeline (offline) or the node's pipeline_ms (live)
    model_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
