"""Camera frames cross a process boundary over DDS with the project's Fast DDS profile."""
from __future__ import annotations

import hashlib
import os

import pytest

from autoprune_ros.processes import ros_args
from autoprune_ros.ros.image_codec import to_image_msg
from autoprune_ros.runtime.synthetic_frames import road_frame

from conftest import spin_until

pytestmark = pytest.mark.ros

FRAMES, RATE, WIDTH, HEIGHT = 100, 20.0, 640, 480


def _expected_digests() -> set[str]:
    from autoprune_ros.ros.synthetic_camera import FRAME_CYCLE

    return {hashlib.blake2b(bytes(to_image_msg(road_frame(i, WIDTH, HEIGHT, RATE)).data), digest_size=16).hexdigest()
            for i in range(FRAME_CYCLE)}


def _stream(ros_context, spawn, topic: str, reliability: str, depth: int):
    from rclpy.executors import SingleThreadedExecutor

    from autoprune_ros.ros.frame_probe import FrameProbe

    probe = FrameProbe(topic, reliability, depth, context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(probe)
    camera = spawn("autoprune_ros.ros.synthetic_camera", ros_args(
        {"topic": topic, "rate_hz": RATE, "count": FRAMES, "width": WIDTH, "height": HEIGHT,
         "reliability": reliability, "depth": depth}))
    spin_until(executor, lambda: len(probe.stats.stamps_ns) >= FRAMES or camera.poll() is not None,
               timeout=60 + 3 * FRAMES / RATE)
    spin_until(executor, lambda: len(probe.stats.stamps_ns) >= FRAMES, timeout=2.0)  # samples still in flight
    assert camera.wait(10) == 0
    probe.destroy_node()
    return probe.stats


def test_profile_is_in_use() -> None:
    profile = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert profile.endswith("config/fastdds.xml") and os.path.isfile(profile)
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_reliable_images_arrive_complete_and_intact(ros_context, spawn) -> None:
    stats = _stream(ros_context, spawn, "/test/reliable/image", "reliable", 10)
    assert len(stats.stamps_ns) == FRAMES, f"lost {FRAMES - len(stats.stamps_ns)} of {FRAMES} on the reliable path"
    assert len(set(stats.stamps_ns)) == FRAMES and stats.stamps_ns == sorted(stats.stamps_ns)
    assert not stats.malformed
    assert set(stats.digests) <= _expected_digests(), "pixels changed in transit"


def test_best_effort_loss_is_measured_and_small_with_the_profile(ros_context, spawn) -> None:
    stats = _stream(ros_context, spawn, "/test/best_effort/image", "best_effort", 1)
    summary = stats.summary(FRAMES)
    print(f"best effort, {WIDTH}x{HEIGHT} rgb8 at {RATE:g} Hz: {summary}")
    # Fast DDS defaults lose about half of these frames (autoprune-bench dds); the profile should lose few.
    assert summary["loss"] <= 0.10, summary
    assert not stats.malformed
    assert set(stats.digests) <= _expected_digests()
