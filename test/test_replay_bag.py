"""Bag input of rosbag replay: sample bags written and read back on every storage, topic detection, and damaged
bags (truncated, corrupted, garbage, unknown types, out-of-order stamps) read as far as they go."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from autoprune_ros.replay import sample_bag
from autoprune_ros.replay.bag_reader import BagError, detect_topics, open_bag
from autoprune_ros.replay.bag_writer import BagWriteError, open_writer
from autoprune_ros.replay.sample_bag import (
    CAMERA_TOPICS,
    CONTROL_TOPIC,
    INSTRUCTION_TOPIC,
    ODOMETRY_TOPIC,
    TICK_NS,
    braking_tick,
    camera_image,
    header_msg,
    image_msg,
    odometry_msg,
    speed_at,
    write_sample_bag,
)
from autoprune_ros.replay.typestore import project_typestore
from autoprune_ros.ros.image_codec import from_compressed_msg, from_image_msg

FRONT = CAMERA_TOPICS[0]
W, H = 64, 48


def _bag_path(tmp_path, storage, single_file):
    """Where write_sample_bag writes, and the path to open (the folder or its one storage file)."""
    if storage == "rosbag1":
        path = tmp_path / "sample.bag"
        return path, path
    folder = tmp_path / "sample"
    return folder, (folder / f"sample.{'mcap' if storage == 'mcap' else 'db3'}") if single_file else folder


def _problems(reader, word):
    return [p for p in reader.info.problems if word in p]


def _stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("storage,single_file", [("mcap", False), ("mcap", True), ("sqlite3", False),
                                                 ("sqlite3", True), ("rosbag1", True)])
def test_round_trip(tmp_path, storage, single_file):
    folder, path = _bag_path(tmp_path, storage, single_file)
    write_sample_bag(folder, storage, 30)
    with open_bag(path) as bag:
        assert bag.info.storage == storage
        assert bag.info.problems == []
        assert bag.topics.cameras == (FRONT,)
        assert (bag.topics.instruction, bag.topics.odometry, bag.topics.reference_control) == (
            INSTRUCTION_TOPIC, ODOMETRY_TOPIC, CONTROL_TOPIC)
        assert bag.info.message_counts == {FRONT: 30, ODOMETRY_TOPIC: 30, CONTROL_TOPIC: 30, INSTRUCTION_TOPIC: 2}
        assert bag.info.duration_ns == 29 * TICK_NS
        frames = list(bag.frames())
        assert len(bag) == len(frames) == 30
        stop = braking_tick(30)
        for i, frame in enumerate(frames):
            assert (frame.index, frame.stamp_ns, frame.bag_time_ns) == (i, i * TICK_NS, i * TICK_NS)
            assert len(frame.views) == 1 and _stamp(frame.views[0]) == frame.stamp_ns
            np.testing.assert_array_equal(from_image_msg(frame.views[0]), camera_image(i, 0, W, H, 0))
            assert frame.instruction == ("stop" if i >= stop else "follow the lane")
            assert frame.speed_mps == pytest.approx(speed_at(i, 30))
            assert frame.reference.speed is None
            if i < stop:  # cruising through a left curve: CARLA's negative steer reads as positive (left)
                assert frame.reference.steer > 0.05 and frame.reference.throttle > 0 and frame.reference.brake == 0
            else:
                assert frame.reference.throttle == 0 and frame.reference.brake > 0
        assert frames[-1].speed_mps == 0.0
        track = bag.track()
        assert len(track) == 30 and list(track.stamps_ns) == [i * TICK_NS for i in range(30)]
        assert np.all(np.diff(track.poses[:, 2]) >= 0) and track.poses[-1, 2] > 0.1  # turning left
        yaw_rates = np.array([frame.yaw_rate_rps for frame in frames])  # odometry twist.angular.z, as the node reads
        np.testing.assert_allclose(yaw_rates[:-1], np.diff(track.poses[:, 2]) / (TICK_NS / 1e9), atol=1e-6)
        assert yaw_rates[0] > 0.05 and yaw_rates[-1] == 0.0
        assert track.poses[-1, 0] > 5 and track.poses[-1, 1] > 0
        messages = list(bag.messages())
        assert len(messages) == 92
        assert [m[2] for m in messages] == sorted(m[2] for m in messages)
        assert {m[1] for m in messages if m[0] == CONTROL_TOPIC} == {"carla_msgs/msg/CarlaEgoVehicleControl"}
        assert bag.types[FRONT] == "sensor_msgs/msg/Image" and len(bag.types) == 4


def test_cdr_messages_of_a_ros1_bag_read_as_ros2(tmp_path):
    path = write_sample_bag(tmp_path / "r.bag", "rosbag1", 5)
    store = project_typestore()
    with open_bag(path) as bag:
        ros1 = [(t, m) for t, _, _, m in bag.messages([FRONT, ODOMETRY_TOPIC])]
        cdr = [(t, store.deserialize_cdr(data, ty)) for t, ty, _, data in bag.cdr_messages([FRONT, ODOMETRY_TOPIC])]
    assert len(ros1) == len(cdr) == 10
    for (topic, a), (topic2, b) in zip(ros1, cdr, strict=True):
        assert topic == topic2 and _stamp(a) == _stamp(b) and a.header.seq == 0
        if topic == FRONT:
            np.testing.assert_array_equal(from_image_msg(a), from_image_msg(b))


def test_compressed_images(tmp_path):
    path = write_sample_bag(tmp_path / "c", "mcap", 6, compressed=True)
    with open_bag(path) as bag:
        assert bag.topics.cameras == (FRONT + "/compressed",)
        frames = list(bag.frames())
    assert len(frames) == 6
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(from_compressed_msg(frame.views[0]), camera_image(i, 0, W, H, 0))


def test_two_cameras_detected_and_overridden(tmp_path):
    path = write_sample_bag(tmp_path / "two", "sqlite3", 8, cameras=2)
    with open_bag(path) as bag:  # the contract camera is preferred, the other named in a problem line
        assert bag.topics.cameras == (FRONT,)
        assert _problems(bag, CAMERA_TOPICS[1]) and "--camera-topics" in _problems(bag, CAMERA_TOPICS[1])[0]
    with open_bag(path, {"cameras": f"{CAMERA_TOPICS[1]},{FRONT}"}) as bag:
        assert bag.topics.cameras == (CAMERA_TOPICS[1], FRONT)
        frames = list(bag.frames())
        assert bag.info.problems == []
    assert len(frames) == 8
    for i, frame in enumerate(frames):
        assert [_stamp(v) for v in frame.views] == [i * TICK_NS] * 2
        np.testing.assert_array_equal(from_image_msg(frame.views[0]), camera_image(i, 1, W, H, 0))
        np.testing.assert_array_equal(from_image_msg(frame.views[1]), camera_image(i, 0, W, H, 0))


def test_secondary_camera_matching_rule(tmp_path):
    """Secondary stamps 30 ms after the primary's (recorded after it, so the primary is held back), one gap and
    then silence: nearest within tolerance, else an older view up to the timeout, else the view is left out."""
    store, left = project_typestore(), CAMERA_TOPICS[1]
    with open_writer(tmp_path / "offset", "mcap") as bag:
        bag.add(FRONT, "sensor_msgs/msg/Image")
        bag.add(left, "sensor_msgs/msg/Image")
        for tick in range(20):
            t_ns = tick * TICK_NS
            bag.write(FRONT, t_ns, image_msg(store, header_msg(store, t_ns, "f"), camera_image(tick, 0, 16, 16, 0)))
            if tick < 10 and tick != 5:
                s_ns = t_ns + 30_000_000
                bag.write(left, s_ns, image_msg(store, header_msg(store, s_ns, "l"), camera_image(tick, 1, 16, 16, 0)))
    with open_bag(tmp_path / "offset", {"cameras": [FRONT, left]}) as bag:
        frames = list(bag.frames())
        assert _problems(bag, "an older view stands in")[0].startswith(f"{left}: 6 frames")
        assert _problems(bag, "left out")[0].startswith(f"{left}: 5 frames")
    assert [f.stamp_ns for f in frames] == [i * TICK_NS for i in range(20)]
    secondary = [_stamp(f.views[1]) // 10_000_000 if len(f.views) == 2 else None for f in frames]
    assert secondary == [3, 13, 23, 33, 43, 43, 63, 73, 83, 93] + [93] * 5 + [None] * 5


def test_ackermann_reference(tmp_path):
    store = project_typestore()
    ack = "ackermann_msgs/msg/AckermannDriveStamped"
    with open_writer(tmp_path / "ack", "sqlite3") as bag:
        bag.add("/cam", "sensor_msgs/msg/Image")
        bag.add("/drive", ack)
        for tick in range(3):
            t_ns = tick * TICK_NS
            drive = store.types["ackermann_msgs/msg/AckermannDrive"](
                steering_angle=0.1 * tick, steering_angle_velocity=0.0, speed=2.0 + tick, acceleration=0.0, jerk=0.0)
            bag.write("/drive", t_ns, store.types[ack](header=header_msg(store, t_ns, "hero"), drive=drive))
            bag.write("/cam", t_ns, image_msg(store, header_msg(store, t_ns, "c"), camera_image(tick, 0, 16, 16, 0)))
    with open_bag(tmp_path / "ack", max_steer_angle=0.5) as bag:
        assert bag.topics.reference_control == "/drive"
        assert bag.topics.instruction is None and bag.topics.odometry is None
        assert len(_problems(bag, "no instruction topic")) == len(_problems(bag, "no odometry topic")) == 1
        refs = [f.reference for f in bag.frames()]
        assert len(bag.track()) == 0
    assert [r.steer for r in refs] == pytest.approx([0.0, 0.2, 0.4])
    assert [r.speed for r in refs] == [2.0, 3.0, 4.0] and refs[0].throttle is None


# ---------------------------------------------------------------- topic detection
CONTRACT = {FRONT: "sensor_msgs/msg/Image", INSTRUCTION_TOPIC: "std_msgs/msg/String",
            ODOMETRY_TOPIC: "nav_msgs/msg/Odometry", CONTROL_TOPIC: "carla_msgs/msg/CarlaEgoVehicleControl"}


def test_detection_prefers_contract_names_and_names_the_option_when_ambiguous():
    problems: list[str] = []
    types = {**CONTRACT, "/debug/text": "std_msgs/msg/String", "/other/odom": "nav_msgs/msg/Odometry"}
    found = detect_topics(types, problems=problems)
    assert (found.instruction, found.odometry) == (INSTRUCTION_TOPIC, ODOMETRY_TOPIC)
    assert any("/debug/text" in p and "--instruction-topic" in p for p in problems)
    with pytest.raises(BagError, match=r"/a/text, /b/text; pass --instruction-topic"):
        detect_topics({FRONT: "sensor_msgs/msg/Image", "/a/text": "std_msgs/msg/String",
                       "/b/text": "std_msgs/msg/String"})
    with pytest.raises(BagError, match=r"/cam/a, /cam/b; pass --camera-topics"):
        detect_topics({"/cam/a": "sensor_msgs/msg/Image", "/cam/b": "sensor_msgs/msg/CompressedImage"})


def test_detection_overrides_and_ros1_names():
    types = {"/cam/a": "sensor_msgs/Image", "/cam/b": "sensor_msgs/CompressedImage", "/say": "std_msgs/String",
             "/odom": "nav_msgs/Odometry", "/drive": "ackermann_msgs/AckermannDriveStamped"}
    found = detect_topics(types, {"cameras": ["/cam/b", "/cam/a"], "instruction": "none", "odometry": None})
    assert found.cameras == ("/cam/b", "/cam/a")
    assert (found.instruction, found.odometry, found.reference_control) == (None, "/odom", "/drive")
    with pytest.raises(BagError, match=r"--odometry-topic /nope: no such topic.*/odom"):
        detect_topics(types, {"cameras": "/cam/a", "odometry": "/nope"})
    with pytest.raises(BagError, match=r"--reference-topic /odom: its type is nav_msgs/msg/Odometry"):
        detect_topics(types, {"cameras": "/cam/a", "reference_control": "/odom"})
    with pytest.raises(BagError, match=r"--camera-topics is empty"):
        detect_topics(types, {"cameras": ""})
    with pytest.raises(BagError, match=r"no camera topic.*/odom \[nav_msgs/msg/Odometry\]"):
        detect_topics({"/odom": "nav_msgs/msg/Odometry"})
    problems: list[str] = []
    found = detect_topics({"/cam": "sensor_msgs/msg/Image"}, problems=problems)
    assert found.instruction is found.odometry is found.reference_control is None and len(problems) == 3


# ---------------------------------------------------------------- damaged and unusual bags
def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_keeps_the_frames_before_the_cut(tmp_path, storage):
    folder = write_sample_bag(tmp_path / "cut", storage, 30)
    _cut(folder / f"cut.{'mcap' if storage == 'mcap' else 'db3'}", 0.6)
    with open_bag(folder) as bag:
        frames = list(bag.frames())
        assert _problems(bag, "recovery mode")
        assert _problems(bag, "truncated" if storage == "mcap" else "rows recovered")
    assert 10 <= len(frames) < 30
    assert [f.stamp_ns for f in frames] == [i * TICK_NS for i in range(len(frames))]
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(from_image_msg(frame.views[0]), camera_image(i, 0, W, H, 0))
        assert frame.instruction == "follow the lane" and frame.speed_mps == sample_bag.CRUISE_MPS


def test_corrupt_mcap_chunk_is_skipped(tmp_path):
    """Chunks of ~1 MB; the third one's first record is garbled: rosbags fails mid-way, recovery skips the rest
    of that chunk and keeps everything before and after it."""
    folder = write_sample_bag(tmp_path / "big", "mcap", 30, width=320, height=240)
    path = folder / "big.mcap"
    data, pos, chunks = bytearray(path.read_bytes()), 8, []
    while data[pos] != 0x0F:  # top-level records up to DataEnd
        if data[pos] == 0x06:
            chunks.append(pos)
        pos += 9 + struct.unpack_from("<Q", data, pos + 1)[0]
    assert len(chunks) > 3
    records = chunks[2] + 9 + 40  # after the chunk's opcode, length and uncompressed header fields
    data[records:records + 20] = b"\xff" * 20  # the first record's opcode and length are garbage now
    path.write_bytes(bytes(data))
    with open_bag(folder) as bag:
        stamps = [f.stamp_ns // TICK_NS for f in bag.frames()]
        assert _problems(bag, "recovery mode") and _problems(bag, "corrupt")
        assert _problems(bag, f"{FRONT}: only {len(stamps)} of the 30 messages")
    assert 20 <= len(stamps) < 30 and stamps == sorted(stamps) and stamps[-1] == 29


def test_corrupt_sqlite_pages(tmp_path):
    folder = write_sample_bag(tmp_path / "zero", "sqlite3", 30)
    path = folder / "zero.db3"
    data = bytearray(path.read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle:middle + 2 * 4096] = bytes(2 * 4096)
    path.write_bytes(bytes(data))
    with open_bag(folder) as bag:
        frames = list(bag.frames())
        assert _problems(bag, "recovery mode")
    ticks = [f.stamp_ns // TICK_NS for f in frames]
    assert 20 <= len(frames) < 30 and ticks == sorted(set(ticks))
    # SQLite keeps no checksums: a zeroed page that only held blob bytes reads back as zeros in that image
    wrong = [t for t, f in zip(ticks, frames, strict=True)
             if not np.array_equal(from_image_msg(f.views[0]), camera_image(t, 0, W, H, 0))]
    assert len(wrong) <= 2


def test_missing_metadata_reads_the_storage_file(tmp_path):
    folder = write_sample_bag(tmp_path / "nometa", "mcap", 5)
    (folder / "metadata.yaml").unlink()
    with open_bag(folder) as bag:
        assert len(list(bag.frames())) == 5
        assert _problems(bag, "no metadata.yaml")


@pytest.mark.parametrize("name,content", [("junk.mcap", b"\x00garbage" * 100), ("junk.db3", b"garbage" * 100),
                                          ("junk.bag", b"#ROSBAG V2.0\n" + b"x" * 100), ("empty.mcap", b""),
                                          ("notes.txt", b"hello")])
def test_garbage_files_are_a_clear_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BagError, match=rf"{name}: .*(re-copy|reindex|pass a rosbag2 folder)"):
        open_bag(tmp_path / name)


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(BagError, match=r"nothing-here: no such file or folder"):
        open_bag(tmp_path / "nothing-here")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BagError, match=r"folder: a folder without a .mcap or .db3"):
        open_bag(tmp_path / "folder")


def test_truncated_ros1_bag_asks_for_reindex(tmp_path):
    path = write_sample_bag(tmp_path / "r.bag", "rosbag1", 10)
    _cut(path, 0.6)
    with pytest.raises(BagError, match=r"rosbag reindex"):
        open_bag(path)


def test_empty_bag_and_bag_without_camera(tmp_path):
    with open_writer(tmp_path / "empty", "mcap") as bag:
        bag.add(FRONT, "sensor_msgs/msg/Image")
    with pytest.raises(BagError, match=r"empty: the bag has no readable messages"):
        open_bag(tmp_path / "empty")
    store = project_typestore()
    with open_writer(tmp_path / "nocam", "sqlite3") as bag:
        bag.add(INSTRUCTION_TOPIC, "std_msgs/msg/String")
        bag.write(INSTRUCTION_TOPIC, 0, store.types["std_msgs/msg/String"](data="stop"))
    with pytest.raises(BagError, match=r"nocam: no camera topic"):
        open_bag(tmp_path / "nocam")


def test_out_of_order_stamps_are_replayed_in_stamp_order(tmp_path):
    store, order = project_typestore(), [0, 2, 1, 3, 6, 4, 5, 7, 9, 8]
    with open_writer(tmp_path / "shuffled", "mcap") as bag:
        bag.add(FRONT, "sensor_msgs/msg/Image")
        bag.add(ODOMETRY_TOPIC, "nav_msgs/msg/Odometry")
        for position, tick in enumerate(order):  # recorded in `order`, bag time increasing
            stamp = tick * TICK_NS
            msg = image_msg(store, header_msg(store, stamp, "f"), camera_image(tick, 0, 16, 16, 0))
            bag.write(FRONT, position * TICK_NS, msg)
            odom = odometry_msg(store, header_msg(store, stamp, "map"), 0.0, 0.0, 0.0, float(tick), 0.0)
            bag.write(ODOMETRY_TOPIC, position * TICK_NS, odom)
    with open_bag(tmp_path / "shuffled") as bag:
        frames = list(bag.frames())
        lines = _problems(bag, "out of order")
    assert sorted(line.split(" header")[0] for line in lines) == [f"{ODOMETRY_TOPIC}: 4 of 10", f"{FRONT}: 4 of 10"]
    assert [f.stamp_ns for f in frames] == [i * TICK_NS for i in range(10)]
    for i, frame in enumerate(frames):
        assert _stamp(frame.views[0]) == frame.stamp_ns
        np.testing.assert_array_equal(from_image_msg(frame.views[0]), camera_image(i, 0, 16, 16, 0))
        assert frame.speed_mps == float(i)  # odometry matched by stamp, not by recording order


def test_unknown_types_and_undecodable_messages_are_skipped(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = project_typestore()
    with Writer(tmp_path / "odd", version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection(FRONT, "sensor_msgs/msg/Image", typestore=store)
        nodef = writer.add_connection("/mystery", "mystery_msgs/msg/Thing", msgdef="", rihs01="RIHS01_" + "0" * 64)
        broken = writer.add_connection("/broken", "broken_msgs/msg/Thing", msgdef="uint8[ oops",
                                       rihs01="RIHS01_" + "1" * 64)
        # a type the bag holds no definition of, but the project's typestore knows: decoded with the latter
        plain = writer.add_connection("/say", "std_msgs/msg/String", msgdef="", rihs01="RIHS01_" + "2" * 64)
        writer.write(plain, 0, store.serialize_cdr(store.types["std_msgs/msg/String"](data="hello"),
                                                   "std_msgs/msg/String"))
        for tick in range(5):
            t_ns = tick * TICK_NS
            msg = image_msg(store, header_msg(store, t_ns, "f"), camera_image(tick, 0, 16, 16, 0))
            data = b"\x00\x01\x00\x00garbage" if tick == 2 else store.serialize_cdr(msg, "sensor_msgs/msg/Image")
            writer.write(cam, t_ns, data)
            writer.write(nodef, t_ns, b"\x00\x01\x00\x00\x01\x02")
            writer.write(broken, t_ns, b"\x00\x01\x00\x00\x01\x02")
    with open_bag(tmp_path / "odd") as bag:
        stamps = [f.stamp_ns // TICK_NS for f in bag.frames()]
        assert _problems(bag, "/mystery: message type mystery_msgs/msg/Thing has no usable definition")
        assert _problems(bag, "/broken: message type broken_msgs/msg/Thing")
        assert _problems(bag, f"{FRONT}: 1 of 5 messages could not be decoded")
        assert {t for t, *_ in bag.messages()} == {FRONT, "/say"}
        assert bag.topics.instruction == "/say" and {f.instruction for f in bag.frames()} == {"hello"}
        with pytest.raises(BagError, match=r"/mystery cannot be decoded"):
            open_bag(tmp_path / "odd", {"instruction": "/mystery"})
    assert stamps == [0, 1, 3, 4]


# ---------------------------------------------------------------- writer and sample-bag command line
def test_writer_refuses_bad_requests(tmp_path):
    write_sample_bag(tmp_path / "bag", "mcap", 1)
    with pytest.raises(BagWriteError, match="already exists"):
        open_writer(tmp_path / "bag", "sqlite3")
    with pytest.raises(ValueError, match=r"single file named \*\.bag"):
        open_writer(tmp_path / "ros1", "rosbag1")
    with pytest.raises(ValueError, match="unknown bag storage 'zip'"):
        open_writer(tmp_path / "z", "zip")
    with open_writer(tmp_path / "w", "mcap") as bag:
        with pytest.raises(BagWriteError, match="call add"):
            bag.write("/x", 0, None)
        with pytest.raises(BagWriteError, match="unknown message type"):
            bag.add("/x", "nope_msgs/msg/Nope")


def test_sample_bag_command(tmp_path, capsys):
    out = tmp_path / "cli"
    assert sample_bag.main([str(out), "--storage", "sqlite3", "--frames", "4", "--cameras", "2"]) == 0
    with open_bag(out, {"cameras": [FRONT, CAMERA_TOPICS[1]]}) as bag:
        assert len(bag) == 4 and all(len(f.views) == 2 for f in bag.frames())
    assert sample_bag.main([str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        sample_bag.main(["--help"])
    assert done.value.code == 0 and "--compressed" in capsys.readouterr().out


def test_sample_bag_is_a_function_of_its_arguments(tmp_path):
    bags = [write_sample_bag(tmp_path / name, "mcap", 5, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    with open_bag(bags[0]) as a, open_bag(bags[1]) as b, open_bag(bags[2]) as c:
        for fa, fb, fc in zip(a.frames(), b.frames(), c.frames(), strict=True):
            np.testing.assert_array_equal(fa.views[0].data, fb.views[0].data)
            assert fa.reference == fb.reference and fa.speed_mps == fb.speed_mps
            assert not np.array_equal(fa.views[0].data, fc.views[0].data)
        assert a.track().poses[-1, 2] == b.track().poses[-1, 2] != c.track().poses[-1, 2]


def test_frames_carry_the_route_in_their_ego_frame(tmp_path):
    """The recordings' reference path (map frame) is the route: each frame sees it from its own odometry pose."""
    import math

    from test_vla_train import _line, straight, write_episode

    yaw = straight(0.0)[2]
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    folder = write_episode(tmp_path / "ep", straight, seed=1,
                           reference=lambda t: _line(np.array(straight(t)[:2]) + 2.0 * left, yaw))
    with open_bag(folder) as bag:
        assert bag.topics.route == "/metadrive/hero/reference_path"
        frames = list(bag.frames())
        assert all(f.route is not None for f in frames)
        np.testing.assert_allclose(frames[5].route[0], (0.0, 2.0), atol=1e-6)  # 2 m to the left, beside the car
        np.testing.assert_allclose(frames[5].route[-1, 1], 2.0, atol=1e-6)
    types = {"/cam": "sensor_msgs/Image", "/autoprune/trajectory": "nav_msgs/Path", "/a": "nav_msgs/Path"}
    assert detect_topics(types).route == "/a", "the node's own trajectory is never the route"
    problems: list[str] = []
    assert detect_topics({**types, "/b": "nav_msgs/Path"}, problems=problems).route is None
    assert any("--route-topic" in p for p in problems), "ambiguous: a note, not an error"
    assert detect_topics({**types, "/carla/hero/waypoints": "nav_msgs/Path"}).route == "/carla/hero/waypoints"
