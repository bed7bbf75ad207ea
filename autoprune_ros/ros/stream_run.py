"""Run the node against a synthetic camera stream and record what it answers (demo and latency benchmark).

Starts the camera and the node as processes, watches /autoprune/frame_stats and the commands from this process,
and stops everything when the camera has sent its frames.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from carla_msgs.msg import CarlaEgoVehicleControl
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor

from autoprune_ros.processes import ros_args, start_module, stop
from autoprune_ros.ros.frame_stats import mean_kept, stamp_ns
from autoprune_ros.ros.node import CONTROL_TOPICS, FRAME_STATS_TOPIC


@dataclass
class StreamRun:
    frames_sent: int
    rate_hz: float
    stats: list[dict[str, str]]  # one per answered frame, as published on /autoprune/frame_stats
    controls: list[tuple[int, bool]]  # (stamp ns, is a safe stop) of every command
    node_status: int | None

    def frame_stamps(self) -> set[int]:
        return {stamp_ns(s) for s in self.stats}

    def unexplained_commands(self) -> int:
        """Commands that neither answer a camera frame (its stamp) nor are safe stops: must be 0."""
        stamps = self.frame_stamps()
        return sum(1 for stamp, safe_stop in self.controls if stamp not in stamps and not safe_stop)

    def summary(self) -> dict:
        latency = np.array([float(s["latency_ms"]) for s in self.stats]) if self.stats else np.array([np.nan])
        model = np.array([float(s.get("model_ms", "nan")) for s in self.stats]) if self.stats else np.array([np.nan])
        stamps = self.frame_stamps()
        return {
            "frames_sent": self.frames_sent, "rate_hz": self.rate_hz, "frames_answered": len(self.stats),
            "dropped_stale": max((int(s["dropped_stale"]) for s in self.stats), default=0),
            "deadline_misses": sum(s.get("deadline") == "miss" for s in self.stats),
            "latency_ms": {q: float(np.nanpercentile(latency, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
            | {"max": float(np.nanmax(latency))},
            "model_ms_p50": float(np.nanpercentile(model, 50)),
            "mean_kept_tokens": float(np.mean([mean_kept(s) for s in self.stats])) if self.stats else float("nan"),
            "safe_stops_without_frame": sum(1 for stamp, safe in self.controls if safe and stamp not in stamps),
            "unexplained_commands": self.unexplained_commands(),
            "node_exit_status": self.node_status,
        }


def run_stream(node_params: dict, frames: int, rate: float, timeout: float,
               on_frame: Callable[[dict[str, str]], None] | None = None, node_log: Path | None = None) -> StreamRun:
    """Publish `frames` synthetic frames at `rate` Hz to a node started with `node_params`."""
    log = open(node_log, "w") if node_log else None  # noqa: SIM115 (closed in finally)
    node_proc = start_module("autoprune_ros.ros.node", ros_args(node_params), stdout=log,
                             stderr=subprocess.STDOUT if log else None)
    camera = start_module("autoprune_ros.ros.synthetic_camera", ros_args(
        {"rate_hz": rate, "count": frames, "wait_for_subscribers": 1, "wait_timeout_s": timeout}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context)
    watcher = rclpy.create_node("autoprune_stream_watcher", context=context)
    stats: list[dict[str, str]] = []
    controls: list[tuple[int, bool]] = []
    watcher.create_subscription(DiagnosticStatus, FRAME_STATS_TOPIC,
                                lambda m: stats.append({kv.key: kv.value for kv in m.values}), 100)
    control_topic = CONTROL_TOPICS[node_params.get("control_interface", "carla")]
    watcher.create_subscription(CarlaEgoVehicleControl, control_topic, lambda m: controls.append(
        (m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec, m.throttle == 0.0 and m.brake == 1.0)), 100)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(watcher)
    reported, camera_done_at = 0, None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and node_proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            if on_frame:
                for values in stats[reported:]:
                    on_frame(values)
            reported = len(stats)
            if camera_done_at is None and camera.poll() is not None:
                camera_done_at = time.monotonic()
            if camera_done_at and time.monotonic() - camera_done_at > 2.0:
                break
    finally:
        stop(camera)
        node_status = stop(node_proc)
        watcher.destroy_node()
        rclpy.try_shutdown(context=context)
        if log:
            log.close()
    return StreamRun(frames, rate, stats, controls, node_status)
