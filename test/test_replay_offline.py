"""Offline replay through `autoprune-replay`: sample bags written, replayed and reported on every storage; the
same frames give the same actions on every storage and run; a corrupt frame fails alone; damaged bags and bad
arguments end in one line and exit status 2, never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprune_ros.replay.cli import main
from autoprune_ros.replay.sample_bag import CAMERA_TOPICS, write_sample_bag

FRAMES = 20
ACTION_KEYS = ("steer", "throttle", "brake", "target_speed", "waypoints", "kept_tokens_per_layer", "budget")
LENIENT_GATE = "reference:\n  failed: 0\n  missing: 0\n"


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    return {"mcap": write_sample_bag(root / "sample_mcap", "mcap", FRAMES),
            "sqlite3": write_sample_bag(root / "sample_sqlite3", "sqlite3", FRAMES),
            "rosbag1": write_sample_bag(root / "sample.bag", "rosbag1", FRAMES)}


@pytest.fixture(scope="module")
def gate_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gate") / "gate.yaml"
    path.write_text(LENIENT_GATE, encoding="utf-8")
    return path


def replay(bag: Path, out: Path, *args: str) -> tuple[int, dict | None]:
    code = main([str(bag), "--output-dir", str(out), "--no-progress", "--threads", "1", *args])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.is_file() else None


def actions(report: dict, config: str) -> list[tuple]:
    return [tuple(json.dumps(f[k]) for k in ACTION_KEYS) for f in report["configs"][config]["frames"]]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3", "rosbag1"])
def test_round_trip_report(bags, gate_file, tmp_path, storage, capsys) -> None:
    code, report = replay(bags[storage], tmp_path, "--configs", "none", "autoprune:16", "--gate", str(gate_file))
    out = capsys.readouterr().out
    assert code == 0, out
    assert report["schema"] == "autoprune-replay/1"
    assert set(report) == {"schema", "bag", "settings", "configs", "reference", "gate"}
    bag = report["bag"]
    assert bag["storage"] == storage and bag["frames"] == FRAMES and bag["problems"] == []
    assert bag["topics"]["cameras"] == [CAMERA_TOPICS[0]]
    assert bag["topics"]["odometry"] and bag["topics"]["reference_control"] and bag["topics"]["instruction"]
    assert report["settings"]["mode"] == "offline" and report["settings"]["configs"] == ["none", "autoprune:16"]
    assert {"python", "torch", "rosbags"} <= set(report["settings"]["versions"])
    for name in ("none", "autoprune:16"):
        run = report["configs"][name]
        frames, summary = run["frames"], run["summary"]
        assert len(frames) == FRAMES and [f["index"] for f in frames] == list(range(FRAMES))
        assert all(f["status"] == "ok" and len(f["waypoints"]) == 8 for f in frames)
        assert summary["ok"] == FRAMES and summary["failed"] == summary["missing"] == 0
        # the recorded control is on every frame; 1 s of future speed on all but the last 10 frames; the 4 s
        # waypoint horizon is longer than this bag
        assert summary["reference_frames"] == FRAMES and summary["steer_mae"] is not None
        assert summary["speed_frames"] == FRAMES - 10 and summary["speed_mae"] is not None
        assert summary["waypoint_frames"] == 0 and summary["ade"] is None
        assert summary["latency_ms_p50"] <= summary["latency_ms_p95"] <= summary["latency_ms_max"]
    assert report["configs"]["none"]["summary"]["kept_tokens_mean"] == 196
    assert report["configs"]["autoprune:16"]["summary"]["kept_tokens_mean"] == pytest.approx(16, abs=1)
    assert report["configs"]["autoprune:16"]["summary"]["flops_ratio_mean"] < 1.0
    assert report["gate"]["passed"] is True
    assert "| autoprune:16 |" in out and "gate PASSED" in out
    md = (tmp_path / "report.md").read_text()
    assert "| config |" in md and "## Regression gate" in md
    for plot in ("tokens.png", "latency.png", "actions.png"):
        assert (tmp_path / plot).stat().st_size > 1000


def test_same_frames_same_actions_on_every_storage_and_run(bags, tmp_path) -> None:
    """Offline replay is deterministic: two runs, the same frames read from mcap and sqlite3, and a configuration
    run after another one (the controller is reset between configurations) act alike."""
    config = "fastv:16"
    runs = [replay(bags[storage], tmp_path / f"{storage}{i}", "--configs", *configs, "--no-gate")[1]
            for storage, i, configs in (("mcap", 0, [config]), ("mcap", 1, [config]),
                                        ("sqlite3", 0, ["none", config]))]
    first = actions(runs[0], config)
    assert len(first) == FRAMES and len({a[0] for a in first}) > 1  # the steer changes along the episode
    assert actions(runs[1], config) == first
    assert actions(runs[2], config) == first
    assert actions(runs[2], "none") != first


def test_waypoint_errors_with_the_whole_future_recorded(tmp_path) -> None:
    """A bag longer than the 4 s waypoint horizon scores ADE / FDE on the frames that have it."""
    bag = write_sample_bag(tmp_path / "long", "mcap", 45)
    code, report = replay(bag, tmp_path / "out", "--configs", "autoprune:16", "--no-gate")
    assert code == 0
    summary = report["configs"]["autoprune:16"]["summary"]
    assert summary["waypoint_frames"] == 45 - 40 and summary["ade"] > 0 and summary["fde"] >= summary["ade"] * 0.5
    refs = [r for r in report["reference"] if r["waypoints"] is not None]
    assert len(refs) == 5 and all(np.asarray(r["waypoints"])[:, 0].min() > 0 for r in refs)  # driving forward


def corrupt_copy(src: Path, dst: Path, bad_tick: int) -> Path:
    """`src` (a rosbag2 folder) rewritten to `dst` with the camera image of `bad_tick` cut short."""
    from rosbags.rosbag2 import Reader

    from autoprune_ros.replay.bag_writer import open_writer

    with Reader(src) as reader, open_writer(dst, "mcap") as writer:
        store = writer.typestore
        for conn in reader.connections:
            writer.add(conn.topic, conn.msgtype)
        for conn, t_ns, raw in reader.messages():
            if conn.topic == CAMERA_TOPICS[0] and t_ns == bad_tick * 100_000_000:
                msg = store.deserialize_cdr(raw, conn.msgtype)
                msg.data = msg.data[: len(msg.data) // 2]
                writer.write(conn.topic, t_ns, msg)
            else:
                writer.write_cdr(conn.topic, t_ns, raw)
    return dst


def test_a_corrupt_frame_fails_alone_and_the_gate_counts_it(bags, tmp_path, capsys) -> None:
    bag = corrupt_copy(bags["mcap"], tmp_path / "corrupt", bad_tick=4)
    code, report = replay(bag, tmp_path / "default", "--configs", "autoprune:16")
    out = capsys.readouterr().out
    frames = report["configs"]["autoprune:16"]["frames"]
    assert len(frames) == FRAMES
    assert [f["index"] for f in frames if f["status"] == "failed"] == [4]
    assert "truncated data" in frames[4]["error"] and frames[4]["steer"] is None
    assert all(f["status"] == "ok" for f in frames if f["index"] != 4)
    # the default gate allows no failed frame: exit 1, the table names the metric
    assert code == 1 and "gate FAILED" in out
    assert any("| autoprune:16 | reference | failed | 1 |" in line for line in out.splitlines())
    allow_one = tmp_path / "allow.yaml"
    allow_one.write_text("reference:\n  failed: 1\n")
    code, report = replay(bag, tmp_path / "allowed", "--configs", "autoprune:16", "--gate", str(allow_one))
    assert code == 0 and report["gate"]["passed"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_truncated_bag_is_an_error_or_a_report_with_problems(bags, tmp_path, capsys) -> None:
    import shutil

    bag = tmp_path / "truncated"
    shutil.copytree(bags["mcap"], bag)
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, report = replay(bag, tmp_path / "out", "--configs", "autoprune:16", "--no-gate")
    if code == 2:
        assert "autoprune-replay: error:" in one_line_error(capsys)
    else:
        assert code == 0 and report["bag"]["problems"], "a truncated bag must say so"
        assert 0 < report["bag"]["frames"] < FRAMES
        assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("case", ["garbage", "missing", "bad_config", "missing_model", "not_a_model",
                                  "missing_camera_topic"])
def test_errors_are_one_line_with_exit_status_2(bags, tmp_path, capsys, case) -> None:
    bag, extra = bags["mcap"], []
    if case == "garbage":
        bag = tmp_path / "garbage.mcap"
        bag.write_bytes(b"not a bag at all" * 10)
    elif case == "missing":
        bag = tmp_path / "nowhere"
    elif case == "bad_config":
        extra = ["--configs", "autoprune:lots"]
    elif case == "missing_model":
        extra = ["--model", str(tmp_path / "no_such_model")]
    elif case == "not_a_model":
        extra = ["--model", str(tmp_path)]
    else:
        extra = ["--camera-topics", "/no/such/camera"]
    code, _ = replay(bag, tmp_path / "out", *extra)
    assert code == 2
    err = one_line_error(capsys)
    assert err.startswith("autoprune-replay: error:")
    if case.endswith("model"):
        assert "--model" in err and "pass 'tiny'" in err


def test_lateral_gain_measures_how_much_of_each_turn_is_predicted() -> None:
    from autoprune_ros.replay.frames import FrameRecord
    from autoprune_ros.replay.report import lateral_gain, summarize

    def path(offset_2s: float) -> list[list[float]]:  # 8 x 0.5 s, sideways offset growing with time squared
        return [[4.0 * (k + 1), offset_2s * ((k + 1) / 4) ** 2] for k in range(8)]

    recorded = [0.0, 0.2, -3.0, 4.0, 2.5, -0.5]  # offsets at 2 s; the first two are straight frames
    references = [{"stamp_ns": i, "steer": None, "throttle": None, "brake": None, "speed_future": None,
                   "waypoints": path(y)} for i, y in enumerate(recorded)]
    records = [FrameRecord(i, i, waypoints=path(0.4 * y + (0.3 if abs(y) < 1 else 0.0)))
               for i, y in enumerate(recorded)]  # a policy that predicts 40% of every turn, plus a straight bias
    summary = summarize(records, references)
    assert summary["turn_frames"] == 3 and summary["lateral_gain"] == pytest.approx(0.4)
    assert summary["ade"] > 0  # ADE mixes the cut turns with the straight frames; the gain isolates them
    assert lateral_gain([], []) is None and lateral_gain([1.0], [2.0]) == pytest.approx(0.5)
