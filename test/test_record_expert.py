"""The expert recorder: MetaDrive episodes (simulator environment) as rosbag2 mcap bags that the main environment
reads with rosbags, with the bag contract of docs/data.md, and instructions that change the recorded driving."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoprune_sim import episode_bag, expert_policy
from autoprune_sim import record_expert as rec
from autoprune_sim import ros_contract as contract

ROOT = Path(__file__).resolve().parent.parent
SIM_PREFIX = ROOT / ".venv-sim"
NS = 1_000_000_000
TICK_NS = NS // 10


def _record(out: Path, *args: str) -> subprocess.CompletedProcess:
    if not (SIM_PREFIX / "bin" / "python").exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although `make test` builds it: run `make setup-sim`")
        pytest.skip(".venv-sim not built (make setup-sim)")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(SIM_PREFIX))
    proc = subprocess.run([str(SIM_PREFIX / "bin" / "python"), "-m", "autoprune_sim.record_expert",
                           "--output-dir", str(out), "--traffic-density", "0", "--no-progress", *args],
                          env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _read(folder: Path) -> dict[str, list]:
    """topic -> [(t_ns, msgtype, message)] of one bag, deserialized with the project's typestore."""
    from rosbags.rosbag2 import Reader

    from autoprune_ros.replay.typestore import project_typestore

    store = project_typestore()
    topics: dict[str, list] = {}
    with Reader(folder) as reader:
        for conn, t_ns, raw in reader.messages():
            topics.setdefault(conn.topic, []).append((t_ns, conn.msgtype, store.deserialize_cdr(raw, conn.msgtype)))
    return topics


def _ns(header) -> int:
    return header.stamp.sec * NS + header.stamp.nanosec


@pytest.fixture(scope="module")
def stop_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("expert")
    _record(out, "--seeds", "1,2", "--ticks", "60", "--instruction-schedule", "stop:25-55")
    return out


@pytest.mark.sim
def test_bags_follow_the_contract(stop_dataset: Path) -> None:
    summary = json.loads((stop_dataset / "dataset.json").read_text())
    assert summary["episodes"] == 2 and summary["kept"] == 2, summary
    assert summary["frames_per_instruction"]["stop"] == 60
    roads: list[float] = []
    for seed in (1, 2):
        folder = stop_dataset / f"seed{seed:05d}_map3"
        meta = json.loads((folder / "episode.json").read_text())
        assert meta["seed"] == seed and meta["map"] == 3 and meta["traffic_density"] == 0.0
        assert (meta["width"], meta["height"], meta["ticks"]) == (160, 120, 60)
        assert meta["outcome"] == "timeout" and meta["kept"] is True and 0.0 < meta["route_completion"] < 1.0
        assert meta["segments"][0]["start"] == 0 and meta["segments"][-1]["end"] == 60
        assert {"instruction": "stop", "start": 25, "end": 55} in meta["segments"]
        assert "version: 8" in (folder / "metadata.yaml").read_text()
        assert list(folder.glob("*.mcap")) == [folder / f"{folder.name}.mcap"]

        topics = _read(folder)
        assert {t: msgs[0][1] for t, msgs in topics.items()} == episode_bag.TYPES
        images = topics[contract.CAMERA_TOPIC]
        odoms = topics[contract.ODOMETRY_TOPIC]
        controls = topics[contract.CONTROL_TOPIC]
        assert len(images) == len(odoms) == len(controls) == 60
        for msgs in (images, odoms, controls):
            stamps = [t for t, _, _ in msgs]
            assert stamps == [tick * TICK_NS for tick in range(60)], "bag time = tick x 0.1 s, strictly increasing"
            assert [_ns(m.header) for _, _, m in msgs] == stamps, "header stamp = bag time"
        for _, _, image in images:
            assert (image.encoding, image.height, image.width, image.step) == ("rgb8", 120, 160, 480)
            assert image.header.frame_id == "hero/rgb_front" and len(image.data) == 120 * 160 * 3
        assert len({bytes(images[0][2].data), bytes(images[-1][2].data)}) == 2, "the camera sees the car move"
        first = np.frombuffer(bytes(images[0][2].data), np.uint8).reshape(120, 160, 3)
        roads.append(float(first[80:].mean()))  # the lower third: asphalt just ahead
        assert odoms[0][2].header.frame_id == "map" and odoms[0][2].child_frame_id == "hero"
        paths = topics[contract.REFERENCE_PATH_TOPIC]
        assert [t for t, _, _ in paths] == [t for t, _, _ in odoms] == [_ns(m.header) for _, _, m in paths]
        for (_, _, path), (_, _, odom) in zip(paths, odoms, strict=True):
            points = np.array([(p.pose.position.x, p.pose.position.y) for p in path.poses])
            assert path.header.frame_id == "map" and len(points) >= 20  # 60 m ahead every 2 m
            np.testing.assert_allclose(np.hypot(*np.diff(points, axis=0).T), 2.0, atol=0.05)
            car = np.array([odom.pose.pose.position.x, odom.pose.pose.position.y])
            assert np.hypot(*(points[0] - car)) < 0.5, "starts beside the car: the clean expert drives on it"

        instructions = [(t, m.data) for t, _, m in topics[contract.INSTRUCTION_TOPIC]]
        assert instructions[0][0] == 0 and instructions[0][1] != "stop"
        assert (25 * TICK_NS, "stop") in instructions
        resumed = [data for t, data in instructions if t == 55 * TICK_NS]
        assert resumed and resumed[0] in contract.INSTRUCTIONS, "the route command returns after the stop"
        assert all(a[1] != b[1] for a, b in zip(instructions, instructions[1:], strict=False)), "only changes"

        # "stop" changes the driving: the car moves before, brakes throughout and stands still at the end.
        speed = [m.twist.twist.linear.x for _, _, m in odoms]
        brake = [m.brake for _, _, m in controls]
        throttle = [m.throttle for _, _, m in controls]
        assert speed[24] > 4.0, speed
        assert all(b > 0 for b in brake[25:55]) and all(t == 0 for t in throttle[25:55])
        assert max(speed[42:55]) < 0.5, speed[25:55]
        assert max(throttle[55:]) > 0.5, "resumes with the route command"
        assert all(b == 0 for b in brake[:20]) and all(-1 <= m.steer <= 1 for _, _, m in controls)
    # Both episodes are rendered like the bridge's single environment: dark asphalt (mean ~74). A second MetaDrive
    # environment in one process loses the road textures (mean ~150); the recorder isolates each episode.
    assert max(roads) < 110 and abs(roads[0] - roads[1]) < 20, roads


@pytest.mark.sim
def test_slow_down_and_resume(stop_dataset: Path, tmp_path: Path) -> None:
    proc = _record(stop_dataset, "--seeds", "1,2", "--ticks", "60", "--resume")
    assert "2 episode(s) already recorded" in proc.stderr
    assert json.loads((stop_dataset / "dataset.json").read_text())["episodes"] == 2

    _record(tmp_path, "--seeds", "3", "--ticks", "90", "--instruction-schedule", "slow:35-90")
    folder = tmp_path / "seed00003_map3"
    speed = [m.twist.twist.linear.x for _, _, m in _read(folder)[contract.ODOMETRY_TOPIC]]
    assert speed[34] > 6.0, speed
    assert max(speed[60:]) < 0.6 * speed[34] and min(speed[60:]) > 2.0, speed[30:]


@pytest.mark.sim
def test_steering_perturbations_hold_the_expert_off_course(tmp_path: Path) -> None:
    _record(tmp_path, "--seeds", "4", "--maps", "3", "--ticks", "80", "--steer-noise", "0.06",
            "--targets", "reference")
    folder = tmp_path / "seed00004_map3"
    meta = json.loads((folder / "episode.json").read_text())
    assert meta["targets"] == "reference"
    perturbations = [rec.Perturbation(**p) for p in meta["perturbations"]]
    assert perturbations == rec.random_perturbations(4, 0, 80, 0.06) and perturbations
    bag = _read(folder)
    steer = [m.steer for _, _, m in bag[contract.CONTROL_TOPIC]]
    y = [m.pose.pose.position.y for _, _, m in bag[contract.ODOMETRY_TOPIC]]
    first = perturbations[0]
    held = steer[first.start:first.end]
    assert max(held) - min(held) < 1e-6 and abs(held[0]) > 0.01, held  # frozen, and off IDM's ~0 on a straight
    assert abs(y[first.end] - y[first.start]) > 0.05, y[first.start:first.end + 1]

    # Reference targets: off its lane after the perturbation, the car is labelled with the way back onto it.
    from autoprune_ros.vla.dataset import episode_targets, read_episode
    from autoprune_ros.vla.route import project_onto

    episode = read_episode(folder)
    index, waypoints, _ = episode_targets(episode, 4, 0.5)  # 2 s ahead: frames up to tick 59
    row = int(np.flatnonzero(index == first.end)[0])
    path, (x, y0, yaw) = episode.references[first.end], episode.poses[first.end]
    assert abs(project_onto(path, np.array([x, y0]))[1]) > 0.05
    c, s = np.cos(yaw), np.sin(yaw)
    after_2s = np.array([x + c * waypoints[row, 3, 0] - s * waypoints[row, 3, 1],
                         y0 + s * waypoints[row, 3, 0] + c * waypoints[row, 3, 1]])
    assert abs(project_onto(path, after_2s)[1]) < 0.05, "back on the lane centre 2 s later"


@pytest.mark.sim
def test_turn_commands_last_through_the_junction(tmp_path: Path) -> None:
    """Seed 0 of the straight-curve-intersection map turns right at the intersection (ticks ~360-445 at 0.1 traffic
    density): the command announced before it stays in force while the car turns, as the CARLA bridge keeps it
    until the junction's exit, so a frame inside the junction is not labelled "follow the lane"."""
    _record(tmp_path, "--seeds", "0", "--maps", "SCX", "--ticks", "480", "--instruction-mix", "stop=0,slow=0")
    from autoprune_ros.vla.dataset import read_episode

    episode = read_episode(tmp_path / "seed00000_mapSCX")
    yaw = np.unwrap(episode.poses[:, 2])
    rate = yaw[10:] - yaw[:-10]  # rad/s over the next second (10 ticks), left positive
    sharp = np.flatnonzero(np.abs(rate) > 0.3)  # the intersection turn, not the gentle curve before it
    assert sharp.size >= 20, f"no sharp turn recorded: peak yaw rate {np.abs(rate).max():.2f} rad/s"
    for tick in sharp:
        side = "left" if rate[tick] > 0 else "right"
        assert episode.instructions[tick] == f"turn {side} at the next intersection", (int(tick), side)
    after = int(sharp[-1]) + 20
    assert after < len(yaw) and episode.instructions[after] == "follow the lane"  # out of the junction


def test_kept_episodes() -> None:
    assert rec.kept("timeout", False, "odometry") and rec.kept("arrive_dest", True, "reference")
    assert not rec.kept("crash", True, "reference") and not rec.kept("out_of_road", False, "reference")
    assert not rec.kept("out_of_road", True, "odometry"), "an odometry label would teach leaving the road"
    assert rec.kept("out_of_road", True, "reference"), "the frames before are labelled with the way back"


def test_random_perturbations() -> None:
    first = rec.random_perturbations(4, 0, 600, 0.12)
    assert first == rec.random_perturbations(4, 0, 600, 0.12) != rec.random_perturbations(5, 0, 600, 0.12)
    every = [p for seed in range(20) for p in rec.random_perturbations(seed, 0, 600, 0.12)]
    assert all(0.036 - 1e-9 <= abs(p.steer) <= 0.12 and p.start < p.end <= 600 for p in every)  # [0.3, 1] x 0.12
    assert {p.steer > 0 for p in every} == {True, False}
    for a, b in zip(first, first[1:], strict=False):
        assert b.start - a.end >= rec.PERTURB_GAP_TICKS[0]
    assert rec.random_perturbations(4, 0, 600, 0.0) == []
    assert rec.steer_offset_at(first, first[0].start) == first[0].steer
    assert rec.steer_offset_at(first, first[0].end) is None


def test_cli_values() -> None:
    assert rec.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("5-2", "a", "-3", "", "1,1"):
        with pytest.raises(ValueError):
            rec.parse_seeds(bad)
    assert rec.parse_maps("3,SXOT") == [3, "SXOT"]
    assert rec.parse_mix("stop=0.1,slow=0.2") == {"stop": 0.1, "slow down": 0.2}
    with pytest.raises(ValueError):
        rec.parse_mix("stop=0.7,slow=0.7")
    expected = [rec.Segment("stop", 20, 45), rec.Segment("slow down", 50, 80)]
    assert rec.parse_schedule("slow:50-80,stop:20-45") == expected
    with pytest.raises(ValueError):
        rec.parse_schedule("stop:20-45,slow:40-80")


def test_random_schedule_is_seeded_and_mixed() -> None:
    mix = rec.parse_mix("stop=0.3,slow=0.3")
    first = rec.random_schedule(4, 0, 600, mix)
    assert first == rec.random_schedule(4, 0, 600, mix) and first != rec.random_schedule(5, 0, 600, mix)
    segments = [s for seed in range(20) for s in rec.random_schedule(seed, 0, 600, mix)]
    assert {s.instruction for s in segments} == {"stop", "slow down"}
    assert all(s.start >= rec.WARMUP_TICKS[0] and s.end <= 600 for s in segments)
    assert rec.random_schedule(4, 0, 600, rec.parse_mix("stop=0,slow=0")) == []


def test_longitudinal_overrides() -> None:
    assert expert_policy.adjust_longitudinal("follow the lane", 0.8, 20.0, 30.0, 10.0) == 0.8
    assert expert_policy.adjust_longitudinal("stop", 1.0, 30.0, 30.0, 10.0) < -0.5
    assert expert_policy.adjust_longitudinal("stop", 1.0, 100.0, 30.0, 10.0) == -1.0
    assert expert_policy.adjust_longitudinal("stop", 1.0, 0.0, 30.0, 10.0) < 0, "holds the brake when stopped"
    assert expert_policy.adjust_longitudinal("slow down", 1.0, 25.0, 30.0, 10.0) == -0.6
    assert expert_policy.adjust_longitudinal("slow down", 1.0, 5.0, 30.0, 10.0) > 0.9


def test_clear_errors(tmp_path: Path, capsys) -> None:
    assert rec.main(["--seeds", "9-3", "--output-dir", str(tmp_path)]) == 2
    assert "end is below the start" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert rec.main(["--seeds", "1", "--output-dir", str(blocker / "out")]) == 2
    assert "not writable" in capsys.readouterr().err
    assert rec.main(["--seeds", "1", "--steer-noise", "2", "--output-dir", str(tmp_path)]) == 2
    assert "--steer-noise" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
