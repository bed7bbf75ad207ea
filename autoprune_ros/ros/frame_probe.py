"""A subscriber that measures an image stream: frames received, duplicates, malformed, latency from the stamp.

In-process (`FrameProbe`) for tests; as a process it writes a JSON summary, for transport benchmarks:

    python -m autoprune_ros.ros.frame_probe --topic /carla/hero/rgb_front/image --expected 200 --output probe.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image

from autoprune_ros.ros.image_codec import ImageDecodeError, from_image_msg
from autoprune_ros.ros.qos import RELIABILITY, stream_qos


@dataclass
class ProbeStats:
    """What a probe saw; latencies use the sender's stamp, so sender and probe must share a clock (one host)."""

    stamps_ns: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    def summary(self, expected: int | None = None) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        received = len(self.stamps_ns)
        out = {
            "received": received,
            "duplicates": received - len(set(self.stamps_ns)),
            "malformed": len(self.malformed),
            "latency_ms": {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                           "p95": float(np.percentile(lat, 95)), "max": float(lat.max())},
        }
        if expected:
            out["expected"] = expected
            out["loss"] = 1.0 - min(received, expected) / expected
        return out


class FrameProbe(Node):
    """Records every Image received on `topic`."""

    def __init__(self, topic: str, reliability: str = "best_effort", depth: int = 1, *, context=None,
                 name: str = "frame_probe") -> None:
        super().__init__(name, context=context)
        self.stats = ProbeStats()
        self.last_receive = 0.0
        self.create_subscription(Image, topic, self._on_image, stream_qos(reliability, depth))

    def _on_image(self, msg: Image) -> None:
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.last_receive = time.monotonic()
        try:
            from_image_msg(msg)
        except ImageDecodeError as exc:
            self.stats.malformed.append(str(exc))
            return
        self.stats.stamps_ns.append(stamp_ns)
        self.stats.latencies_ms.append((now_ns - stamp_ns) / 1e6)
        self.stats.digests.append(hashlib.blake2b(bytes(msg.data), digest_size=16).hexdigest())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure an image stream (loss, duplicates, latency) and "
                                     "write a JSON summary.")
    parser.add_argument("--topic", default="/carla/hero/rgb_front/image")
    parser.add_argument("--reliability", choices=sorted(RELIABILITY), default="best_effort")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--expected", type=int, default=None, help="frames the sender will publish")
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="stop this long after the last frame")
    parser.add_argument("--timeout", type=float, default=120.0, help="stop after this long in any case")
    parser.add_argument("--output", default="-", help="JSON file, or - for stdout")
    args, ros_argv = parser.parse_known_args(argv)
    rclpy.init(args=ros_argv)
    probe = FrameProbe(args.topic, args.reliability, args.depth)
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    start = time.monotonic()
    try:
        while rclpy.ok() and time.monotonic() - start < args.timeout:
            executor.spin_once(timeout_sec=0.05)
            received = len(probe.stats.stamps_ns)
            if args.expected and received >= args.expected:
                break
            if probe.last_receive and time.monotonic() - probe.last_receive > args.idle_timeout:
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    summary = probe.stats.summary(args.expected)
    probe.destroy_node()
    rclpy.try_shutdown()
    text = json.dumps(summary, indent=2)
    if args.output == "-":
        print(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
