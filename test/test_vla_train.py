"""Training data and `autoprune-train`: targets from synthetic expert bags, kept flag and seed split, a tiny
seeded training run that lowers its loss, saves safetensors only and reproduces itself; corrupt bags fail clearly."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from autoprune_ros.vla.dataset import (
    CONTROL_TOPIC,
    IMAGE_TOPIC,
    INSTRUCTION_TOPIC,
    ODOM_TOPIC,
    REFERENCE_TOPIC,
    DrivingDataset,
    episode_targets,
    future_targets,
    kept_episodes,
    read_episode,
    reference_targets,
    split_by_seed,
)

FRAMES, DT, SPEED = 30, 0.1, 5.0
RADIUS = 10.0  # m, the turn's radius (left turn, yaw rate SPEED / RADIUS)
CONFIG = Path(__file__).resolve().parents[1] / "config" / "models" / "tiny_llava.yaml"
YAW_RATE_TEMPLATE = ("USER: {images}\nYou are driving a car. Instruction: {instruction}. Yaw rate: {yaw_rate:+.0f} "
                     "deg/s. Speed: {speed:.1f} m/s. ASSISTANT:")  # the ego yaw rate in the prompt (docs/training.md)
N_WP, WP_DT = 4, 0.5  # a 2 s horizon so that 30-frame episodes have 10 training frames


def straight(s: float) -> tuple[float, float, float]:
    """x, y, yaw after s seconds on a straight line at SPEED heading 0.6 rad from (1, 2)."""
    yaw = 0.6
    return 1.0 + SPEED * s * math.cos(yaw), 2.0 + SPEED * s * math.sin(yaw), yaw


def turn(s: float) -> tuple[float, float, float]:
    """x, y, yaw after s seconds on a left circle of RADIUS at SPEED, starting at (3, -2) heading -0.3 rad."""
    yaw0, x0, y0 = -0.3, 3.0, -2.0
    cx, cy = x0 - RADIUS * math.sin(yaw0), y0 + RADIUS * math.cos(yaw0)
    theta = yaw0 + SPEED / RADIUS * s
    return cx + RADIUS * math.sin(theta), cy - RADIUS * math.cos(theta), theta


def write_episode(folder: Path, path_fn: Callable[[float], tuple[float, float, float]], seed: int, kept: bool = True,
                  instructions: tuple[str, ...] = ("follow the lane",), topics: tuple[str, ...] | None = None,
                  extra_meta: dict | None = None, reference: Callable[[float], np.ndarray] | None = None) -> Path:
    """A rosbag2 (mcap, v8) episode on the bag contract plus its episode.json; speed ramps 4 -> 6.9 m/s. With
    `reference`, every frame also has a nav_msgs/Path on REFERENCE_TOPIC through reference(t)'s (K, 2) points."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from autoprune_ros.replay.typestore import project_typestore

    ts = project_typestore()
    t = ts.types
    rng = np.random.default_rng(seed)
    types = {IMAGE_TOPIC: "sensor_msgs/msg/Image", ODOM_TOPIC: "nav_msgs/msg/Odometry",
             CONTROL_TOPIC: "carla_msgs/msg/CarlaEgoVehicleControl", INSTRUCTION_TOPIC: "std_msgs/msg/String",
             REFERENCE_TOPIC: "nav_msgs/msg/Path"}
    topics = tuple(t for t in types if t != REFERENCE_TOPIC or reference) if topics is None else topics
    with Writer(folder, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {topic: writer.add_connection(topic, types[topic], typestore=ts) for topic in topics}

        def put(topic: str, stamp_ns: int, msg: object) -> None:
            if topic in conns:
                writer.write(conns[topic], stamp_ns, ts.serialize_cdr(msg, types[topic]))

        for i in range(FRAMES):
            ns = 1_000_000_000 + i * 100_000_000
            header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=ns // 10**9,
                                                                                     nanosec=ns % 10**9),
                                              frame_id="map")
            if i % 10 == 0:
                put(INSTRUCTION_TOPIC, ns, t["std_msgs/msg/String"](data=instructions[(i // 10) % len(instructions)]))
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            put(IMAGE_TOPIC, ns, t["sensor_msgs/msg/Image"](header=header, height=48, width=64, encoding="rgb8",
                                                            is_bigendian=0, step=64 * 3, data=pixels.reshape(-1)))
            x, y, yaw = path_fn(i * DT)
            pose = t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
                orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
            vec = t["geometry_msgs/msg/Vector3"]
            twist = t["geometry_msgs/msg/Twist"](linear=vec(x=4.0 + 0.1 * i, y=0.0, z=0.0),
                                                 angular=vec(x=0.0, y=0.0, z=0.01 * i))
            put(ODOM_TOPIC, ns, t["nav_msgs/msg/Odometry"](
                header=header, child_frame_id="hero",
                pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                twist=t["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36))))
            if reference is not None:
                put(REFERENCE_TOPIC, ns, t["nav_msgs/msg/Path"](header=header, poses=[
                    t["geometry_msgs/msg/PoseStamped"](header=header, pose=t["geometry_msgs/msg/Pose"](
                        position=t["geometry_msgs/msg/Point"](x=float(px), y=float(py), z=0.0),
                        orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
                    for px, py in reference(i * DT)]))
            put(CONTROL_TOPIC, ns, t["carla_msgs/msg/CarlaEgoVehicleControl"](
                header=header, throttle=0.3, steer=-0.1, brake=0.0, hand_brake=False, reverse=False, gear=1,
                manual_gear_shift=False))
    meta = {"seed": seed, "kept": kept, **(extra_meta or {})}
    (folder / "episode.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("expert")
    return {
        "straight": write_episode(root / "ep_straight", straight, seed=11, instructions=("follow the lane",
                                                                                         "stop at the light")),
        "turn": write_episode(root / "ep_turn", turn, seed=12, instructions=("turn left",)),
        "straight2": write_episode(root / "ep_straight2", straight, seed=13),
        "dropped": write_episode(root / "ep_dropped", turn, seed=14, kept=False),
    }


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    cfg["action_head"].update(num_waypoints=N_WP, waypoint_dt=WP_DT)
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_read_episode(episodes: dict[str, Path]) -> None:
    ep = read_episode(episodes["straight"])
    assert ep.images.shape == (FRAMES, 48, 64, 3) and ep.images.dtype == np.uint8
    np.testing.assert_allclose(ep.stamps, np.arange(FRAMES) * DT, atol=1e-9)
    np.testing.assert_allclose(ep.poses[3], straight(0.3), atol=1e-9)
    np.testing.assert_allclose(ep.speeds, 4.0 + 0.1 * np.arange(FRAMES), atol=1e-6)
    np.testing.assert_allclose(ep.yaw_rates, 0.01 * np.arange(FRAMES), atol=1e-9)  # odometry twist.angular.z
    assert ep.instructions[:10] == ["follow the lane"] * 10 and ep.instructions[10:20] == ["stop at the light"] * 10
    assert ep.instructions[20] == "follow the lane"
    np.testing.assert_allclose(ep.controls[0], (-0.1, 0.3, 0.0), atol=1e-6)
    assert ep.meta == {"seed": 11, "kept": True}


def test_targets_straight_and_turn(episodes: dict[str, Path]) -> None:
    ep = read_episode(episodes["straight"])
    index, waypoints, target_speed = episode_targets(ep, N_WP, WP_DT)
    assert index.tolist() == list(range(10))  # t + 2 s must be recorded (last stamp 2.9 s)
    expected = np.stack([SPEED * WP_DT * np.arange(1, N_WP + 1), np.zeros(N_WP)], axis=-1)  # 2.5 m ahead per step
    np.testing.assert_allclose(waypoints, np.broadcast_to(expected, waypoints.shape), atol=1e-6)
    np.testing.assert_allclose(target_speed, 4.0 + 0.1 * (index + 10), atol=1e-6)  # speed 1 s later

    ep = read_episode(episodes["turn"])
    index, waypoints, _ = episode_targets(ep, N_WP, WP_DT)
    angle = SPEED / RADIUS * WP_DT * np.arange(1, N_WP + 1)  # turned by 0.25 rad per waypoint
    expected = np.stack([RADIUS * np.sin(angle), RADIUS * (1 - np.cos(angle))], axis=-1)  # ahead and to the left
    assert expected[0] == pytest.approx((2.474, 0.311), abs=1e-3)
    np.testing.assert_allclose(waypoints, np.broadcast_to(expected, waypoints.shape), atol=1e-6)

    # N * dt longer than the episode: no frame has a full future, nothing is padded.
    assert episode_targets(ep, 8, 0.5)[0].size == 0


def test_kept_flag_and_seed_split(tmp_path: Path, episodes: dict[str, Path], small_config: Path) -> None:
    dirs = sorted(episodes.values())
    kept = kept_episodes(dirs)
    assert episodes["dropped"] not in kept and len(kept) == 3
    cfg = yaml.safe_load(small_config.read_text(encoding="utf-8"))
    data = DrivingDataset(dirs, cfg)
    assert len(data) == 30 and sorted(data.seeds) == [11, 12, 13]
    image, instruction, speed, yaw_rate, waypoints, target_speed, route, line = data[0]
    assert route is None is line, "a model without a route input gets no route"
    assert image.shape == (48, 64, 3) and isinstance(instruction, str) and waypoints.shape == (N_WP, 2)
    assert isinstance(speed, float) and isinstance(target_speed, float) and isinstance(yaw_rate, float)

    for seed in range(5):
        train, val = split_by_seed(kept, 0.34, seed)
        assert len(val) == 1 and len(train) == 2 and not set(train) & set(val)
    assert split_by_seed(kept, 0.34, 3) == split_by_seed(kept, 0.34, 3)
    # Two episodes of one seed always land on the same side.
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "episode.json").write_text(json.dumps({"seed": 11, "kept": True}), encoding="utf-8")
    for seed in range(6):
        train, val = split_by_seed([*kept, twin], 0.34, seed)
        side = train if twin in train else val
        assert episodes["straight"] in side
    assert split_by_seed(kept, 0.0, 0) == (kept, [])


def test_frames_near_injected_steering_noise_are_not_samples(tmp_path: Path, small_config: Path) -> None:
    # 30 frames of 0.1 s; frames 0-9 have the whole future. A perturbation rejects [start - 2 s, end).
    cfg = yaml.safe_load(small_config.read_text(encoding="utf-8"))
    late = {"dt_s": 0.1, "perturbations": [{"start": 25, "end": 28, "steer": 0.1}]}
    data = DrivingDataset([write_episode(tmp_path / "late", straight, seed=1, extra_meta=late)], cfg)
    assert [frame for _, frame, _ in data._index] == [0, 1, 2, 3, 4]  # frames 5-9 are within 2 s of tick 25
    early = {"dt_s": 0.1, "perturbations": [{"start": 2, "end": 6, "steer": -0.1}]}
    data = DrivingDataset([write_episode(tmp_path / "early", straight, seed=2, extra_meta=early)], cfg)
    assert [frame for _, frame, _ in data._index] == [6, 7, 8, 9]  # the recovery after tick 6 is kept
    assert len(DrivingDataset([write_episode(tmp_path / "none", straight, seed=3)], cfg)) == 10


def _line(start: np.ndarray, yaw: float, length: float = 60.0, step: float = 2.0) -> np.ndarray:
    return start + np.arange(0.0, length, step)[:, None] * np.array([math.cos(yaw), math.sin(yaw)])


def test_reference_targets_lead_back_to_the_lane() -> None:
    # A car 1 m left of a straight centreline, parallel to it at 5 m/s: the offset fades by a raised cosine over
    # 2 s (0.854, 0.5, 0.146, 0 of it left at 0.5 s steps) while the car covers its recorded distance.
    stamps = np.arange(40) * 0.1
    poses = np.stack([3.0 + 5.0 * stamps, np.ones(40), np.zeros(40)], axis=-1)
    speeds = np.full(40, 5.0)
    refs = [_line(np.array([p[0] - 1.0, 0.0]), 0.0) for p in poses]
    index, waypoints, target_speed = reference_targets(stamps, poses, speeds, refs, 4, 0.5, converge_s=2.0)
    assert index.tolist() == list(range(20))
    fade = np.array([0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])
    expected = np.stack([2.5 * np.arange(1, 5), fade - 1.0], axis=-1)
    np.testing.assert_allclose(waypoints, np.broadcast_to(expected, waypoints.shape), atol=1e-9)
    np.testing.assert_allclose(target_speed, 5.0)

    # Heading 0.2 rad to the left of the lane while on its centre: the way back bends right in the car's frame.
    poses[:, 1], poses[:, 2] = 0.0, 0.2
    refs = [_line(np.array([p[0], 0.0]), 0.0) for p in poses]
    _, waypoints, _ = reference_targets(stamps, poses, speeds, refs, 4, 0.5)
    along = 2.5 * np.arange(1, 5)  # the recorded distance, covered along the lane
    expected = np.stack([math.cos(0.2) * along, -math.sin(0.2) * along], axis=-1)
    np.testing.assert_allclose(waypoints[0], expected, atol=1e-9)

    with pytest.raises(ValueError, match="at least 2 points"):
        reference_targets(stamps, poses, speeds, [np.zeros((1, 2))] * 40, 4, 0.5)


def test_reference_targets_match_the_drive_on_the_centreline() -> None:
    # Driving exactly along a curved centreline, the reference labels are the recorded future (future_targets)
    # up to the polyline's chords (0.5 m spacing on a 10 m radius: < 1 cm).
    stamps = np.arange(40) * DT
    poses = np.array([turn(t) for t in stamps])
    speeds = np.full(40, SPEED)
    refs = [np.array([turn(t + ds / SPEED)[:2] for ds in np.arange(0.0, 30.0, 0.5)]) for t in stamps]
    index, waypoints, _ = reference_targets(stamps, poses, speeds, refs, 4, 0.5)
    f_index, f_waypoints, _ = future_targets(stamps, poses, speeds, 4, 0.5)
    assert index.tolist() == f_index.tolist()
    np.testing.assert_allclose(waypoints, f_waypoints, atol=0.01)


def test_reference_paths_from_bags_keep_perturbed_frames(tmp_path: Path, small_config: Path) -> None:
    # The same perturbed episode with reference paths: every frame with a full future is a sample, labelled with
    # the way back to the path (here 1 m to the right of the drive), not with the recorded drive.
    cfg = yaml.safe_load(small_config.read_text(encoding="utf-8"))
    early = {"dt_s": 0.1, "perturbations": [{"start": 2, "end": 6, "steer": -0.1}], "targets": "reference"}
    yaw = straight(0.0)[2]
    right = np.array([math.sin(yaw), -math.cos(yaw)])

    def reference(t: float) -> np.ndarray:
        return _line(np.array(straight(t)[:2]) + right, yaw)

    folder = write_episode(tmp_path / "ref", straight, seed=2, extra_meta=early, reference=reference)
    episode = read_episode(folder)
    assert episode.references is not None and len(episode.references) == FRAMES
    np.testing.assert_allclose(episode.references[3][0], reference(0.3)[0], atol=1e-9)
    data = DrivingDataset([folder], cfg)
    assert [frame for _, frame, _ in data._index] == list(range(10))
    waypoints = data[0].waypoints.numpy()
    np.testing.assert_allclose(waypoints[-1], (SPEED * 2.0, -1.0), atol=1e-4)  # on the path after 2 s
    assert waypoints[0, 1] == pytest.approx(-(1 - 0.5 * (1 + math.cos(math.pi / 4))), abs=1e-4)

    # Odometry targets (the default) ignore the recorded paths and drop the frames near the perturbation.
    odometry = write_episode(tmp_path / "odometry", straight, seed=3, extra_meta=dict(early, targets="odometry"),
                             reference=reference)
    data = DrivingDataset([odometry], cfg)
    assert [frame for _, frame, _ in data._index] == [6, 7, 8, 9]
    np.testing.assert_allclose(data[0].waypoints.numpy()[:, 1], 0.0, atol=1e-6)

    # Reference targets asked for, but the bag has no reference topic: a clear error naming the fix.
    missing = write_episode(tmp_path / "missing", straight, seed=4, extra_meta=early)
    assert read_episode(missing).references is None
    with pytest.raises(ValueError, match="re-record"):
        DrivingDataset([missing], cfg)


def test_corrupt_and_incomplete_bags(tmp_path: Path, episodes: dict[str, Path]) -> None:
    bad = write_episode(tmp_path / "corrupt", straight, seed=1)
    for mcap in bad.glob("*.mcap"):
        data = mcap.read_bytes()
        mcap.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        read_episode(bad)

    no_text = write_episode(tmp_path / "no_text", straight, seed=2, topics=(IMAGE_TOPIC, ODOM_TOPIC))
    with pytest.raises(ValueError, match=f"no_text.*missing topic.*{INSTRUCTION_TOPIC}"):
        read_episode(no_text)
    with pytest.raises(ValueError, match="not_a_bag"):
        read_episode(tmp_path / "not_a_bag")


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {f"{p.name}:{k}": v for p in sorted(folder.glob("*.safetensors")) for k, v in load_file(p).items()}


def test_training_run(tmp_path: Path, episodes: dict[str, Path], small_config: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    from autoprune_ros.vla.builder import load_vla
    from autoprune_ros.vla.train import main

    data = episodes["straight"].parent
    args = ["--data", str(data), "--config", str(small_config), "--epochs", "2", "--seed", "0", "--batch-size", "4",
            "--lr", "1e-3", "--val-fraction", "0.34", "--no-progress", "--threads", "2"]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--output", str(out_a)]) == 0
    report = json.loads((out_a / "training.json").read_text(encoding="utf-8"))
    losses = [e["train_loss"] for e in report["epochs"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[1] < losses[0]
    assert all(math.isfinite(e["val_loss"]) for e in report["epochs"])
    assert not set(report["train_seeds"]) & set(report["val_seeds"]) and 14 not in report["train_seeds"]
    assert report["train_samples"] == 20 and report["val_samples"] == 10 and report["seconds_per_sample"] > 0
    assert [e["samples"] for e in report["epochs"]] == [20, 20]
    assert report["hyperparameters"]["mirror_prob"] == 0
    assert "time per training sample" in capsys.readouterr().out

    files = {p.name for p in out_a.iterdir()}
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}
    assert {"model.safetensors", "action_head.safetensors"} <= files
    policy = load_vla(out_a)
    action = policy.act([np.zeros((48, 64, 3), np.uint8)], "follow the lane", 5.0).action
    assert action.waypoints.shape == (N_WP, 2) and np.isfinite(action.waypoints).all()

    with pytest.raises(SystemExit):  # refuses a non-empty output without --force
        main([*args, "--output", str(out_a)])

    assert main([*args, "--output", str(out_b)]) == 0
    again = json.loads((out_b / "training.json").read_text(encoding="utf-8"))
    assert [e["train_loss"] for e in again["epochs"]] == losses
    wa, wb = _weights(out_a), _weights(out_b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_frame_stride_and_mirroring(tmp_path: Path, episodes: dict[str, Path], small_config: Path) -> None:
    from autoprune_ros.vla.train import main

    args = ["--data", str(episodes["straight"].parent), "--config", str(small_config), "--epochs", "3", "--seed", "0",
            "--batch-size", "4", "--val-fraction", "0.34", "--no-progress", "--threads", "2", "--frame-stride", "3",
            "--mirror-prob", "1", "--aux-vision-weight", "0", "--output", str(tmp_path / "m")]
    assert main(args) == 0
    report = json.loads((tmp_path / "m" / "training.json").read_text(encoding="utf-8"))
    assert [e["samples"] for e in report["epochs"]] == [7, 7, 6]
    assert report["hyperparameters"]["frame_stride"] == 3 and report["hyperparameters"]["mirror_prob"] == 1
    with pytest.raises(SystemExit):
        main([*args[:-2], "--output", str(tmp_path / "n"), "--mirror-prob", "1.5"])


def test_lateral_weight_and_vision_probe(small_config: Path) -> None:
    import torch

    from autoprune_ros.vla.builder import build_tiny_vla
    from autoprune_ros.vla.train import Objective, action_loss, batch_loss
    from autoprune_ros.vla.vision_probe import ProjectorTap, VisionProbe

    target = torch.zeros(2, N_WP, 2)
    pred = target.clone()
    pred[..., 0] += 1.0  # 1 m longitudinal error everywhere
    pred[..., 1] += 0.5  # 0.5 m lateral
    speed = torch.zeros(2)
    plain = action_loss(pred, speed + 2.0, target, speed, Objective())
    assert float(plain) == pytest.approx((1.0 + 0.5) / 2 + 2.0)  # = l1 over all coordinates + speed term
    torch.testing.assert_close(plain, torch.nn.functional.l1_loss(pred, target) + 2.0)
    weighted = action_loss(pred, speed, target, speed, Objective(lateral_weight=3.0, speed_weight=0.0))
    assert float(weighted) == pytest.approx((1.0 + 3 * 0.5) / 2)

    policy = build_tiny_vla(small_config, seed=3)
    tap = ProjectorTap(policy.model.model)
    probe = VisionProbe(policy.visual_tokens_per_image, policy.model.config.text_config.hidden_size, 2 * N_WP + 1)
    rng = np.random.default_rng(0)
    batch = ([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)], ["go"] * 3, [1.0, 2.0, 3.0],
             [0.0, 0.1, -0.1], torch.zeros(3, N_WP, 2), torch.zeros(3), *[torch.full((3, 1, 2), float("nan"))] * 2)
    main, aux = batch_loss(policy, batch, Objective(aux_weight=1.0, probe=probe, tap=tap))
    assert tap.features.shape == (3, policy.visual_tokens_per_image, policy.model.config.text_config.hidden_size)
    aux.backward()  # the probe's loss reaches the vision tower directly
    patch = next(w for n, w in policy.model.model.vision_tower.named_parameters() if "patch_embedding" in n)
    assert patch.grad is not None and patch.grad.abs().sum() > 0
    assert probe.reduce.weight.grad is not None and all(w.grad is None for w in policy.head.parameters())
    assert math.isfinite(float(main.detach()))
    tap.close()
    with pytest.raises(ValueError, match="visual tokens"):
        probe(torch.zeros(1, 5, policy.model.config.text_config.hidden_size))
    assert batch_loss(policy, batch, Objective())[1] is None


def test_vision_pretraining_trains_the_vision_side_only(tmp_path: Path, episodes: dict[str, Path],
                                                        small_config: Path) -> None:
    import torch

    from autoprune_ros.vla.builder import build_tiny_vla
    from autoprune_ros.vla.train import Objective, batch_loss, main, vision_loss
    from autoprune_ros.vla.vision_probe import ProjectorTap, VisionProbe

    policy = build_tiny_vla(small_config, seed=3)
    tap = ProjectorTap(policy.model.model)
    probe = VisionProbe(policy.visual_tokens_per_image, policy.model.config.text_config.hidden_size, 2 * N_WP + 1)
    rng = np.random.default_rng(1)
    batch = ([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)], ["go", "stop"], [1.0, 2.0],
             [0.0, 0.0], torch.ones(2, N_WP, 2), torch.ones(2), *[torch.full((2, 1, 2), float("nan"))] * 2)
    objective = Objective(lateral_weight=3.0, aux_weight=1.0, probe=probe, tap=tap)
    loss = vision_loss(policy, batch, objective)
    torch.testing.assert_close(loss, batch_loss(policy, batch, objective)[1])  # the same probe loss, decoder unrun
    policy.model.zero_grad(set_to_none=True)
    loss.backward()
    named = dict(policy.model.model.named_parameters())
    assert all(p.grad is None for n, p in named.items() if n.startswith("language_model"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if "vision_tower" in n)
    assert all(p.grad is not None for n, p in named.items() if "multi_modal_projector" in n)
    tap.close()

    args = ["--data", str(episodes["straight"].parent), "--config", str(small_config), "--epochs", "1", "--seed", "0",
            "--batch-size", "4", "--val-fraction", "0.34", "--no-progress", "--threads", "2", "--lr", "1e-3",
            "--vision-epochs", "3"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "training.json").read_text(encoding="utf-8"))
    stage = report["vision_epochs"]
    assert [e["epoch"] for e in stage] == [1, 2, 3] and report["hyperparameters"]["vision_epochs"] == 3
    assert all(math.isfinite(e["train_loss"]) and math.isfinite(e["val_loss"]) for e in stage)
    assert stage[-1]["train_loss"] < stage[0]["train_loss"]
    assert len(report["epochs"]) == 1 and math.isfinite(report["epochs"][0]["val_loss"])
    assert main([*args, "--output", str(tmp_path / "b")]) == 0  # reproducible
    again = json.loads((tmp_path / "b" / "training.json").read_text(encoding="utf-8"))
    assert [e["train_loss"] for e in again["vision_epochs"] + again["epochs"]] == [
        e["train_loss"] for e in stage + report["epochs"]]
    for extra in (["--aux-vision-weight", "0"], ["--freeze-vision"], ["--vision-epochs", "-1"]):
        with pytest.raises(SystemExit):
            main([*args, *extra, "--output", str(tmp_path / "c")])


def test_batched_encoding_matches_the_policy(small_config: Path) -> None:
    import torch

    from autoprune_ros.vla.builder import build_tiny_vla
    from autoprune_ros.vla.train import encode_batch

    cfg = yaml.safe_load(small_config.read_text(encoding="utf-8"))
    cfg["prompt"]["template"] = YAW_RATE_TEMPLATE
    policy = build_tiny_vla(cfg, seed=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["go", "turn left at the second intersection after the bridge", "stop"]  # prompts of unequal length
    speeds = [0.0, 7.5, 12.25]
    yaw_rates = [0.0, -0.35, 0.6]
    with torch.no_grad():
        batched = encode_batch(policy, images, texts, speeds, yaw_rates)
        single = torch.stack([policy._encode([im], t, s, yaw_rate_rps=w)[0]
                              for im, t, s, w in zip(images, texts, speeds, yaw_rates, strict=True)])
        still = encode_batch(policy, images, texts, speeds)
    assert batched.shape == single.shape
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    assert (still[1:] - batched[1:]).abs().amax() > 1e-4  # the yaw rate reaches the model through the prompt


def test_token_dropout_reaches_the_decoder(small_config: Path) -> None:
    import torch

    from autoprune_ros.vla.builder import build_tiny_vla
    from autoprune_ros.vla.train import TokenDropout, encode_batch

    policy = build_tiny_vla(small_config, seed=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    args = (policy, images, ["go", "stop"], [3.0, 4.0])
    with torch.no_grad():
        plain = encode_batch(*args)
        same = encode_batch(*args, dropout=TokenDropout(1.0, 1.0, torch.Generator().manual_seed(0)))
        dropped = encode_batch(*args, dropout=TokenDropout(1.0, 0.1, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(same, plain)
    assert ((dropped - plain).abs().amax(dim=1) > 1e-4).all()


def test_instruction_balance_and_visual_dropout(tmp_path: Path, episodes: dict[str, Path],
                                                small_config: Path) -> None:
    from autoprune_ros.vla.train import main

    args = ["--data", str(episodes["straight"].parent), "--config", str(small_config), "--epochs", "2", "--seed", "0",
            "--batch-size", "4", "--val-fraction", "0.34", "--no-progress", "--threads", "2",
            "--instruction-balance", "0.5", "--visual-dropout", "0.5", "--visual-keep-min", "0.2"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "training.json").read_text(encoding="utf-8"))
    assert all(math.isfinite(e["train_loss"]) and math.isfinite(e["val_loss"]) for e in report["epochs"])
    assert [e["samples"] for e in report["epochs"]] == [report["train_samples"]] * 2
    hyper = report["hyperparameters"]
    assert (hyper["instruction_balance"], hyper["visual_dropout"], hyper["visual_keep_min"]) == (0.5, 0.5, 0.2)
    assert sum(report["train_instructions"].values()) == report["train_samples"]
    assert main([*args, "--output", str(tmp_path / "b")]) == 0  # reproducible with the sampler and the dropout
    again = json.loads((tmp_path / "b" / "training.json").read_text(encoding="utf-8"))
    assert [e["train_loss"] for e in again["epochs"]] == [e["train_loss"] for e in report["epochs"]]
    for flag, value in (("--instruction-balance", "2"), ("--visual-dropout", "-0.1"), ("--visual-keep-min", "0")):
        with pytest.raises(SystemExit):
            main([*args, flag, value, "--output", str(tmp_path / "c")])


def test_fine_tuning_starts_from_a_model_and_reads_several_folders(tmp_path: Path, episodes: dict[str, Path],
                                                                   small_config: Path) -> None:
    from autoprune_ros.vla.train import main

    data = episodes["straight"].parent
    base = ["--epochs", "1", "--seed", "0", "--batch-size", "4", "--val-fraction", "0.34", "--no-progress",
            "--threads", "2", "--aux-vision-weight", "0"]
    assert main(["--data", str(data), "--config", str(small_config), *base, "--output", str(tmp_path / "a")]) == 0
    assert main(["--data", str(data), "--config", str(small_config), *base, "--seed", "1",
                 "--output", str(tmp_path / "fresh")]) == 0
    assert main(["--data", str(episodes["straight"]), str(episodes["turn"]), str(episodes["turn"]), "--init",
                 str(tmp_path / "a"), *base, "--seed", "1", "--lr", "1e-9", "--output", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "training.json").read_text(encoding="utf-8"))
    first = json.loads((tmp_path / "a" / "training.json").read_text(encoding="utf-8"))
    assert report["init"] == str(tmp_path / "a") and len(report["data"]) == 3
    assert first["init_training"] is None and first["recipe_seconds"] == first["total_seconds"]
    assert report["init_training"] == first, "a fine-tune keeps the record of the run it started from"
    assert report["recipe_seconds"] == pytest.approx(first["total_seconds"] + report["total_seconds"])
    assert sorted(report["train_seeds"] + report["val_seeds"]) == [11, 12], "both folders, each episode once"
    assert report["train_samples"] + report["val_samples"] < first["train_samples"] + first["val_samples"]
    wa, wb, fresh = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "fresh")
    assert all(np.allclose(wa[k], wb[k], atol=1e-6) for k in wa), "a tiny learning rate keeps the initial weights"
    assert not all(np.allclose(fresh[k], wb[k], atol=1e-6) for k in wa), "not a seeded initialisation"
    for extra in (["--init", "tiny"], ["--init", str(tmp_path / "missing")],
                  ["--init", str(tmp_path / "a"), "--config", str(small_config)]):
        with pytest.raises(SystemExit):
            main(["--data", str(data), *base, *extra, "--output", str(tmp_path / "c")])


def test_pruned_samples_train_through_the_node_s_pruned_prefill(small_config: Path) -> None:
    """A pruned sample's hidden state is the inference path's for the same frame and pruning, it has gradients
    into the decoder, and the vision probe still sees every sample's visual tokens in batch order."""
    import random

    import torch

    from autoprune_ros.pruning.policies import AutoPrune
    from autoprune_ros.vla.builder import build_tiny_vla
    from autoprune_ros.vla.pruning_aware import PrunedSamples, fixed_budget_configs
    from autoprune_ros.vla.train import Objective, _encode_mixed, encode_batch
    from autoprune_ros.vla.vision_probe import ProjectorTap

    policy = build_tiny_vla(small_config, seed=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    batch = (images, ["go", "turn left", "stop"], [3.0, 4.0, 5.0], [0.0, 0.1, -0.2])
    budget = policy.visual_tokens_per_image // 4
    pruned = PrunedSamples(0.5, fixed_budget_configs([f"autoprune:{budget}"]), random.Random(0))
    plans = PrunedSamples(0.5, pruned.configs, random.Random(0)).draw(3, 2, policy.visual_tokens_per_image)
    assert any(plans) and not all(plans), "the seed draws a mixed batch"
    tap = ProjectorTap(policy.model.model)
    hidden = _encode_mixed(policy, batch, Objective(tap=tap, pruned=pruned))
    mixed_features = tap.features
    with torch.no_grad():
        plain = encode_batch(policy, *batch)
        plain_features = tap.features
        expected = torch.stack([
            plain[i] if plan is None else policy._encode([images[i]], batch[1][i], batch[2][i],
                                                         pruning=AutoPrune(budget), yaw_rate_rps=batch[3][i])[0]
            for i, plan in enumerate(plans)])
    tap.close()
    torch.testing.assert_close(hidden.detach(), expected, atol=1e-4, rtol=1e-4)
    assert all(((hidden[i] - plain[i]).abs().amax() > 1e-4) == (plan is not None) for i, plan in enumerate(plans))
    torch.testing.assert_close(mixed_features.detach(), plain_features, atol=1e-5, rtol=1e-5)
    hidden.sum().backward()
    decoder = policy.model.model.language_model.layers[-1].mlp.down_proj.weight
    assert decoder.grad is not None and decoder.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="<policy>:<tokens>"):
        fixed_budget_configs(["autoprune:governed"])


@pytest.mark.parametrize("extra", [["--pruned-configs", "none"], ["--pruned-configs", "fastv:governed"],
                                   ["--pruned-configs", "sparse:22"], ["--pruned-share", "1.5"]])
def test_bad_pruning_aware_arguments_are_refused(tmp_path: Path, capsys, extra: list[str]) -> None:
    from autoprune_ros.vla.train import _check_args, _parser

    parser = _parser()
    args = parser.parse_args(["--data", str(tmp_path), "--output", str(tmp_path / "out"), *extra])
    with pytest.raises(SystemExit):
        _check_args(args, parser)
    assert "--pruned-" in capsys.readouterr().err
