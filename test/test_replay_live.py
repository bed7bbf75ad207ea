"""Live replay: a sample bag published with /clock to the real node process, its answers recorded into a bag.

The key check: in step mode the node gives, frame by frame, the actions and kept tokens the offline runner
computes from the same frames (tiny deterministic model on CPU).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from autoprune_ros.replay.bag_reader import open_bag
from autoprune_ros.replay.frames import FrameRecord
from autoprune_ros.replay.live import (
    CONTROL_TOPIC,
    FRAME_STATS_TOPIC,
    RECORDED,
    TRAJECTORY_TOPIC,
    LiveReplayError,
    _Answer,
    _batches,
    _Out,
    cdr_stamp_ns,
    frame_record,
    node_camera_topic,
    run_live,
)
from autoprune_ros.replay.offline import build_pipeline, run_offline
from autoprune_ros.replay.sample_bag import write_sample_bag
from autoprune_ros.replay.typestore import project_typestore
from autoprune_ros.runtime.configs import parse_config

FRAMES = 12
BAD_FRAME = 5  # its image has an encoding the node rejects: a safe stop, then the watchdog's until frame 6
ACTION_TOL = 1e-4
SPEED_TOL = 6e-4  # frame_stats prints target_speed with three decimals


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory) -> Path:
    """The sample bag with frame BAD_FRAME's image re-encoded as mono16 (which the node does not decode)."""
    from rosbags.highlevel import AnyReader

    from autoprune_ros.replay.bag_writer import open_writer
    from autoprune_ros.replay.sample_bag import CAMERA_TOPICS

    folder = tmp_path_factory.mktemp("live")
    source = write_sample_bag(folder / "source", "mcap", frames=FRAMES)
    with AnyReader([source], default_typestore=project_typestore()) as reader, \
            open_writer(folder / "sample", "mcap") as writer:
        for conn in reader.connections:
            writer.add(conn.topic, conn.msgtype)
        frame = 0
        for conn, t_ns, raw in reader.messages():
            if conn.topic == CAMERA_TOPICS[0]:
                frame += 1
                if frame - 1 == BAD_FRAME:
                    msg = reader.deserialize(raw, conn.msgtype)
                    msg.encoding = "mono16"
                    writer.write(conn.topic, t_ns, msg)
                    continue
            writer.write_cdr(conn.topic, t_ns, raw)
    return folder / "sample"


@pytest.fixture(scope="module")
def policy():
    from autoprune_ros.runtime.policy_setup import load_policy

    return load_policy("tiny")  # what the node loads with its default parameters


def _offline(bag: Path, name: str, policy) -> list[FrameRecord]:
    config = parse_config(name)
    with open_bag(bag) as reader:
        pipeline = build_pipeline("tiny", config, 100.0, len(reader.info.topics.cameras), policy=policy)
        return run_offline(reader.frames(), pipeline, config)


def _read_bag(path: Path) -> tuple[dict, dict[str, list[tuple[int, object]]]]:
    """The bag's metadata and its messages by topic as (bag time, message)."""
    from rosbags.highlevel import AnyReader

    metadata = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    messages: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([path], default_typestore=project_typestore()) as reader:
        for conn, t_ns, raw in reader.messages():
            messages.setdefault(conn.topic, []).append((t_ns, reader.deserialize(raw, conn.msgtype)))
        topics = {conn.topic: conn.msgtype for conn in reader.connections}
    return {**metadata, "types": topics}, messages


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.ros
@pytest.mark.parametrize("name", ["none", "autoprune:32"])
def test_step_mode_answers_every_frame_as_offline(sample_bag, policy, tmp_path, name):
    with open_bag(sample_bag) as reader:
        stamps = [f.stamp_ns for f in reader.frames()]
        live = run_live(reader, parse_config(name), rate=0, output_bag=tmp_path / "out",
                        node_log=tmp_path / "node.log")
    offline = _offline(sample_bag, name, policy)

    expected = ["failed" if i == BAD_FRAME else "ok" for i in range(FRAMES)]
    assert [r.status for r in live] == expected, [r.error for r in live]
    assert [r.status for r in offline] == expected
    assert "rejected camera frame" in live[BAD_FRAME].error and "mono16" in live[BAD_FRAME].error
    # The bag slows down for "stop" over its last third: the actions follow speed and instruction, so the
    # comparison shows the node held each frame's inputs.
    assert len({round(r.brake, 2) for r in offline if r.status == "ok"}) > 2
    for got, want in zip(live, offline, strict=True):
        assert (got.index, got.stamp_ns) == (want.index, want.stamp_ns)
        if want.status == "failed":
            continue
        for key in ("steer", "throttle", "brake"):
            assert getattr(got, key) == pytest.approx(getattr(want, key), abs=ACTION_TOL), (got.index, key)
        assert got.target_speed == pytest.approx(want.target_speed, abs=SPEED_TOL), got.index
        np.testing.assert_allclose(got.waypoints, want.waypoints, atol=ACTION_TOL)
        assert got.kept_tokens_per_layer == want.kept_tokens_per_layer
        assert (got.visual_tokens, got.budget) == (want.visual_tokens, want.budget)
        if want.complexity is not None:
            assert got.complexity == pytest.approx(want.complexity, abs=ACTION_TOL)
        assert got.latency_ms is not None and got.model_ms is not None

    metadata, messages = _read_bag(tmp_path / "out")
    assert metadata["version"] == 8
    assert set(metadata["types"]) == set(RECORDED)
    answered = [r.stamp_ns for r in live if r.status == "ok"]
    assert [_stamp(m) for _, m in messages[TRAJECTORY_TOPIC]] == answered
    assert [int(m.values[0].value.replace(".", "")) for _, m in messages[FRAME_STATS_TOPIC]] == answered
    controls = {_stamp(m): m for _, m in messages[CONTROL_TOPIC]}  # the frame's own answer comes last
    assert set(controls) == set(stamps)
    assert (controls[stamps[BAD_FRAME]].throttle, controls[stamps[BAD_FRAME]].brake) == (0.0, 1.0)
    for record in live:
        if record.status == "ok":
            assert -controls[record.stamp_ns].steer == pytest.approx(record.steer, abs=1e-7)
    times = [t for topic in messages.values() for t, _ in topic]
    assert min(times) >= stamps[0] and max(times) <= stamps[-1]  # bag time = sim time, here the frames' stamps


@pytest.mark.ros
def test_rate_mode_plays_a_bag_to_its_end(tmp_path):
    bag = write_sample_bag(tmp_path / "sample", "sqlite3", frames=6)
    with open_bag(bag) as reader:
        records = run_live(reader, parse_config("autoprune:32"), rate=2.0, output_bag=tmp_path / "out",
                           output_storage="sqlite3", node_log=tmp_path / "node.log", progress=True)
    assert [r.index for r in records] == list(range(6))
    assert {r.status for r in records} <= {"ok", "missing", "failed"}
    answered = [r for r in records if r.status == "ok"]
    assert answered, [r.error for r in records]  # timing decides how many; the newest frame is never dropped
    assert all(math.isfinite(r.steer) and r.waypoints and r.kept_tokens_per_layer for r in answered)
    metadata, messages = _read_bag(tmp_path / "out")
    assert metadata["version"] == 8 and metadata["storage_identifier"] == "sqlite3"
    assert len(messages[FRAME_STATS_TOPIC]) == len(answered)


def _node_children() -> list[int]:
    """Processes of the node module started by this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"autoprune_ros.ros.node" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.ros
def test_a_node_that_cannot_start_is_a_clear_error(sample_bag, tmp_path):
    with open_bag(sample_bag) as reader, pytest.raises(LiveReplayError) as err:
        run_live(reader, parse_config("none"), model=str(tmp_path / "no_model"), rate=0,
                 output_bag=tmp_path / "out", node_log=tmp_path / "node.log", startup_timeout=120)
    message = str(err.value)
    assert "could not start" in message and "no_model" in message and str(tmp_path / "node.log") in message
    assert "\n" not in message
    assert not _node_children()
    _, messages = _read_bag(tmp_path / "out")  # closed, so readable
    assert messages == {}


class _Interrupting:
    """A reader whose bag stream is cut by Ctrl-C after the node is up."""

    def __init__(self, reader, after: int) -> None:
        self._reader, self._after = reader, after
        self.info = reader.info

    def frames(self):
        return self._reader.frames()

    def cdr_messages(self, topics=None):
        for n, item in enumerate(self._reader.cdr_messages(topics)):
            if n == self._after and len(topics) > len(self.info.topics.cameras):  # the play pass, not a scan
                raise KeyboardInterrupt
            yield item


@pytest.mark.ros
def test_ctrl_c_stops_the_node_and_keeps_what_was_recorded(sample_bag, tmp_path):
    with open_bag(sample_bag) as reader, pytest.raises(KeyboardInterrupt):
        run_live(_Interrupting(reader, after=9), parse_config("none"), rate=0, output_bag=tmp_path / "out",
                 node_log=tmp_path / "node.log")
    assert not _node_children()
    metadata, messages = _read_bag(tmp_path / "out")
    assert metadata["version"] == 8
    assert 1 <= len(messages[FRAME_STATS_TOPIC]) < FRAMES


def test_camera_topics_follow_the_nodes_naming():
    assert node_camera_topic("/cam/image", "sensor_msgs/msg/Image") == "/cam/image"
    assert node_camera_topic("/cam/image/compressed", "sensor_msgs/msg/CompressedImage") == "/cam/image/compressed"
    assert node_camera_topic("/cam/jpeg", "sensor_msgs/msg/CompressedImage") == "/cam/jpeg/compressed"
    assert node_camera_topic("/cam/compressed", "sensor_msgs/msg/Image") == "/cam/image"


def test_header_stamp_read_from_cdr():
    store = project_typestore()
    t = store.types
    stamp = t["builtin_interfaces/msg/Time"](sec=12, nanosec=345)
    image = t["sensor_msgs/msg/Image"](header=t["std_msgs/msg/Header"](stamp=stamp, frame_id="cam"), height=1,
                                       width=1, encoding="rgb8", is_bigendian=0, step=3,
                                       data=np.zeros(3, np.uint8))
    for little in (True, False):
        data = bytes(store.serialize_cdr(image, "sensor_msgs/msg/Image", little_endian=little))
        assert cdr_stamp_ns(data) == 12_000_000_345
    assert cdr_stamp_ns(b"\x00\x01") is None


def test_a_batch_puts_inputs_before_secondary_cameras_before_the_primary():
    items = [_Out(0, "/primary", b"", 2, 0), _Out(0, "/left", b"", 1), _Out(0, "/odom", b"", 0),
             _Out(1, "/odom", b"", 0), _Out(1, "/primary", b"", 2, 1)]
    assert [[o.topic for o in batch] for batch in _batches(items)] == [["/odom", "/left", "/primary"],
                                                                     ["/odom", "/primary"]]


def test_answers_become_records():
    assert frame_record(3, 7, None, "node.log").status == "missing"
    # A command stamped like the frame but sent before it went out is the watchdog's.
    assert frame_record(3, 7, _Answer(control=object()), "node.log").status == "missing"
    failed = frame_record(3, 7, _Answer(control=object(), control_at=1.0, reason="policy failed: boom"), "node.log")
    assert (failed.status, failed.error) == ("failed", "the node commanded a safe stop: policy failed: boom")
    unexplained = frame_record(3, 7, _Answer(control=object(), control_at=1.0), "node.log")
    assert unexplained.error == "the node commanded a safe stop: see its log node.log"
