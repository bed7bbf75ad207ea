"""Expert driving episodes (rosbag2 folders from sim/record_expert.py) -> (image, instruction, speed, yaw rate,
waypoints, target speed) training samples for the tiny VLA.

Bag contract, one rosbag2 folder per episode with an `episode.json` (at least `seed` and `kept`) beside it:
`/carla/hero/rgb_front/image` (sensor_msgs/Image rgb8), `/carla/hero/odometry` (nav_msgs/Odometry, REP 103 map
frame, twist.linear.x = speed, twist.angular.z = yaw rate, same header stamps as the images),
`/carla/hero/vehicle_control_cmd` (carla_msgs/CarlaEgoVehicleControl, optional here) and `/autoprune/instruction`
(std_msgs/String, at the first tick and on every change). Targets are documented in docs/training.md.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .route import (
    ROUTE_LINE_POINTS,
    path_points,
    points_along,
    project_onto,
    quaternion_yaw,
    route_line,
    route_targets,
    to_ego_frame,
)

IMAGE_TOPIC = "/carla/hero/rgb_front/image"
ODOM_TOPIC = "/carla/hero/odometry"
CONTROL_TOPIC = "/carla/hero/vehicle_control_cmd"
INSTRUCTION_TOPIC = "/autoprune/instruction"
REFERENCE_TOPIC = "/metadrive/hero/reference_path"  # nav_msgs/Path, optional: the lane the expert steers for
REFERENCE_TARGETS = "reference"  # episode.json "targets" that selects `reference_targets`
EPISODE_FILE = "episode.json"

SPEED_HORIZON_S = 1.0  # target speed = recorded speed this long after the frame
# Frames within this long before an injected steering perturbation (episode.json `perturbations`), or during one,
# are not training samples: their recorded future is the noise, not the expert. The frames after it, with the car
# off its lane centre and the expert bringing it back, are the point of injecting it.
PERTURBATION_MARGIN_S = 2.0
# Reference targets (episodes with REFERENCE_TOPIC): the car's offset from the lane centre fades to zero over this
# long (a raised-cosine blend), whatever the recorded car did meanwhile.
CONVERGE_S = 2.0
_EPS = 1e-6


class Sample(NamedTuple):
    """One training sample: what the policy sees (camera frame HxWx3 uint8 RGB, instruction, ego speed m/s and
    yaw rate rad/s, left positive, and for models with a route input the route points (P, 2) in the ego frame,
    None where the episode has no route) and its targets (waypoints (N, 2) float32, target speed m/s); for models
    whose waypoints are in the route frame, the route line they are laid along (vla/route_frame.py; (M, 2), ego
    frame, None where the episode has no route)."""

    image: np.ndarray
    instruction: str
    speed: float
    yaw_rate: float
    waypoints: torch.Tensor
    target_speed: float
    route: np.ndarray | None = None
    route_line: np.ndarray | None = None


class _BagProblem(ValueError):
    """A ValueError whose message already names the bag (not re-wrapped by `read_episode`)."""


@dataclass
class Episode:
    """One recorded episode, frames in stamp order: images (T, H, W, 3) uint8 RGB, stamps (T,) s, poses (T, 3)
    map-frame x, y, yaw, speeds (T,) m/s, yaw rates (T,) rad/s (odometry twist.angular.z), the instruction in
    force per frame, controls (T, 3) steer / throttle / brake of the expert (NaN where not recorded), the parsed
    episode.json (empty if absent) and, where the bag has REFERENCE_TOPIC for every frame, the lane centreline
    ahead per frame ((K, 2) map-frame points), else None."""

    path: Path
    images: np.ndarray
    stamps: np.ndarray
    poses: np.ndarray
    speeds: np.ndarray
    yaw_rates: np.ndarray
    instructions: list[str]
    controls: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    references: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def reference_labelled(self) -> bool:
        """Whether episode.json asks for `reference_targets` (`"targets": "reference"`) instead of odometry ones."""
        return self.meta.get("targets") == REFERENCE_TARGETS


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _decode_image(msg: Any, where: str) -> np.ndarray:
    """sensor_msgs/Image rgb8 / bgr8 -> HxWx3 uint8 RGB."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise _BagProblem(f"{where}: image encoding {msg.encoding!r} is not supported (expected rgb8)")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if height == 0 or width == 0 or step < 3 * width or data.size < height * step:
        raise _BagProblem(f"{where}: malformed image {width}x{height}, step {step}, {data.size} bytes")
    image = data[: height * step].reshape(height, step)[:, : 3 * width].reshape(height, width, 3)
    return np.ascontiguousarray(image[..., ::-1] if msg.encoding == "bgr8" else image)


def read_episode_meta(bag_dir: str | Path) -> dict[str, Any]:
    """The parsed `episode.json` of an episode folder; ValueError if missing, unreadable or without seed/kept."""
    path = Path(bag_dir) / EPISODE_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{bag_dir}: no {EPISODE_FILE}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("seed"), int) or not isinstance(meta.get("kept"), bool):
        raise ValueError(f"{path}: must be a JSON object with an integer 'seed' and a boolean 'kept'")
    return meta


def read_episode(bag_dir: str | Path) -> Episode:
    """Read one episode bag (any rosbag2 storage rosbags reads). Frames are the image stamps that also have an
    odometry message; the instruction of a frame is the latest one at or before its stamp (the first one for
    frames before it). ValueError naming the bag for corrupt bags, missing topics or no usable frames."""
    from rosbags.rosbag2 import Reader

    from autoprune_ros.replay.typestore import project_typestore

    bag_dir = Path(bag_dir)
    store = project_typestore()
    images: dict[int, np.ndarray] = {}
    odom: dict[int, tuple[float, float, float, float, float]] = {}
    controls: dict[int, tuple[float, float, float]] = {}
    instructions: list[tuple[int, str]] = []
    references: dict[int, np.ndarray] = {}
    try:
        with Reader(bag_dir) as reader:
            topics = {c.topic for c in reader.connections}
            missing = [t for t in (IMAGE_TOPIC, ODOM_TOPIC, INSTRUCTION_TOPIC) if t not in topics]
            if missing:
                raise _BagProblem(f"{bag_dir}: missing topic(s) {', '.join(missing)} "
                                  f"(has: {', '.join(sorted(topics)) or 'none'})")
            wanted = [c for c in reader.connections
                      if c.topic in (IMAGE_TOPIC, ODOM_TOPIC, CONTROL_TOPIC, INSTRUCTION_TOPIC, REFERENCE_TOPIC)]
            for conn, t_ns, raw in reader.messages(connections=wanted):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                if conn.topic == IMAGE_TOPIC:
                    images[_stamp(msg.header)] = _decode_image(msg, f"{bag_dir}: {IMAGE_TOPIC}")
                elif conn.topic == ODOM_TOPIC:
                    pose = msg.pose.pose
                    odom[_stamp(msg.header)] = (pose.position.x, pose.position.y, quaternion_yaw(pose.orientation),
                                                msg.twist.twist.linear.x, msg.twist.twist.angular.z)
                elif conn.topic == CONTROL_TOPIC:
                    controls[_stamp(msg.header)] = (msg.steer, msg.throttle, msg.brake)
                elif conn.topic == REFERENCE_TOPIC:
                    references[_stamp(msg.header)] = path_points(msg)
                else:
                    instructions.append((t_ns, str(msg.data)))
    except _BagProblem:
        raise
    except Exception as exc:  # rosbags raises its own errors, KeyError, struct / mcap errors for damaged files
        raise ValueError(f"{bag_dir}: corrupt or unreadable bag: {type(exc).__name__}: {exc}") from None

    stamps_ns = sorted(set(images) & set(odom))
    if not stamps_ns:
        raise ValueError(f"{bag_dir}: no frame has both an image and an odometry message with the same stamp "
                         f"({len(images)} images, {len(odom)} odometry messages)")
    if not instructions:
        raise ValueError(f"{bag_dir}: no message on {INSTRUCTION_TOPIC}")
    shapes = {images[s].shape for s in stamps_ns}
    if len(shapes) != 1:
        raise ValueError(f"{bag_dir}: images change size within the episode: {sorted(shapes)}")
    instructions.sort(key=lambda item: item[0])
    inst_stamps = np.array([s for s, _ in instructions], dtype=np.int64)
    frame_ns = np.array(stamps_ns, dtype=np.int64)
    which = np.clip(np.searchsorted(inst_stamps, frame_ns, side="right") - 1, 0, None)
    nan3 = (math.nan, math.nan, math.nan)
    state = np.array([odom[s] for s in stamps_ns], dtype=np.float64)
    meta = read_episode_meta(bag_dir) if (bag_dir / EPISODE_FILE).is_file() else {}
    return Episode(
        path=bag_dir,
        images=np.stack([images[s] for s in stamps_ns]),
        stamps=(frame_ns - frame_ns[0]).astype(np.float64) * 1e-9,
        poses=state[:, :3],
        speeds=state[:, 3],
        yaw_rates=state[:, 4],
        instructions=[instructions[i][1] for i in which],
        controls=np.array([controls.get(s, nan3) for s in stamps_ns], dtype=np.float64),
        meta=meta,
        references=[references[s] for s in stamps_ns] if all(s in references for s in stamps_ns) else None,
    )


def future_targets(stamps: np.ndarray, poses: np.ndarray, speeds: np.ndarray, num_waypoints: int,
                   waypoint_dt: float, speed_horizon: float = SPEED_HORIZON_S,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a driver recorded after each sample of a track: stamps (T,) s in increasing order, poses (T, 3)
    map-frame x, y, yaw, speeds (T,) m/s -> (indices (M,) of the samples that have the whole future recorded,
    waypoints (M, N, 2) = ego positions at t + k * waypoint_dt, k = 1..N, linearly interpolated on the poses and
    expressed in the ego frame at t (x forward, y left), target speeds (M,) = speed at t + speed_horizon,
    interpolated). Samples closer to the end than max(N * waypoint_dt, speed_horizon) are skipped, not padded.
    Shared by training (targets) and replay (the reference a policy's outputs are scored against)."""
    horizon = max(num_waypoints * waypoint_dt, speed_horizon)
    index = np.flatnonzero(stamps + horizon <= stamps[-1] + _EPS)
    if index.size == 0:
        return index, np.zeros((0, num_waypoints, 2)), np.zeros(0)
    t = stamps[index]
    future = t[:, None] + waypoint_dt * np.arange(1, num_waypoints + 1)[None, :]
    fx = np.interp(future, stamps, poses[:, 0]) - poses[index, 0, None]
    fy = np.interp(future, stamps, poses[:, 1]) - poses[index, 1, None]
    cos, sin = np.cos(poses[index, 2])[:, None], np.sin(poses[index, 2])[:, None]
    waypoints = np.stack((cos * fx + sin * fy, -sin * fx + cos * fy), axis=-1)
    target_speed = np.interp(t + speed_horizon, stamps, speeds)
    return index, waypoints, target_speed


def reference_targets(stamps: np.ndarray, poses: np.ndarray, speeds: np.ndarray, references: Sequence[np.ndarray],
                      num_waypoints: int, waypoint_dt: float, speed_horizon: float = SPEED_HORIZON_S,
                      converge_s: float = CONVERGE_S) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like `future_targets`, but the waypoints go where the car should have gone rather than where it went: at
    t + k * waypoint_dt the car has covered the distance it recorded, measured along the frame's reference
    centreline (`references[i]`, (K, 2) map-frame points ahead), and its lateral offset from that centreline at
    t has faded by a raised cosine that reaches zero after `converge_s`. A car put off its lane (injected steering
    noise) is thus labelled with the way back, whatever it did next. Same frames and target speeds as
    `future_targets`."""
    index, _, target_speed = future_targets(stamps, poses, speeds, num_waypoints, waypoint_dt, speed_horizon)
    if index.size == 0:
        return index, np.zeros((0, num_waypoints, 2)), target_speed
    step = np.hypot(*np.diff(poses[:, :2], axis=0).T)
    travelled = np.concatenate(([0.0], np.cumsum(step)))
    offsets = waypoint_dt * np.arange(1, num_waypoints + 1)
    fade = 0.5 * (1.0 + np.cos(np.pi * np.minimum(offsets / converge_s, 1.0)))
    waypoints = np.zeros((index.size, num_waypoints, 2))
    for row, i in enumerate(index):
        path, origin, yaw = references[i], poses[i, :2], poses[i, 2]
        if len(path) < 2:
            raise ValueError(f"frame {i}: the reference path needs at least 2 points, got {len(path)}")
        s0, lateral = project_onto(path, origin)
        distance = np.interp(stamps[i] + offsets, stamps, travelled) - travelled[i]
        points, normals = points_along(path, s0 + distance)
        waypoints[row] = to_ego_frame(points + normals * (lateral * fade)[:, None], *origin, yaw)
    return index, waypoints, target_speed


def episode_targets(episode: Episode, num_waypoints: int, waypoint_dt: float,
                    speed_horizon: float = SPEED_HORIZON_S) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets of the frames that have the whole future recorded: (frame indices (M,), waypoints
    (M, N, 2), target speeds (M,)): `reference_targets` where episode.json says `"targets": "reference"`, else
    `future_targets` on its odometry."""
    if episode.reference_labelled:
        if episode.references is None:
            raise ValueError(f"{episode.path}: episode.json asks for reference targets but not every frame has a "
                             f"message on {REFERENCE_TOPIC}: re-record it")
        return reference_targets(episode.stamps, episode.poses, episode.speeds, episode.references, num_waypoints,
                                 waypoint_dt, speed_horizon)
    return future_targets(episode.stamps, episode.poses, episode.speeds, num_waypoints, waypoint_dt, speed_horizon)


def unperturbed(stamps: np.ndarray, meta: Mapping[str, Any], margin_s: float = PERTURBATION_MARGIN_S) -> np.ndarray:
    """Boolean mask over frame stamps (s from the first tick): False within [start - margin_s, end) of any
    perturbation in the episode.json `meta` (ticks of `dt_s` seconds, default 0.1)."""
    keep = np.ones(len(stamps), dtype=bool)
    dt = float(meta.get("dt_s", 0.1))
    for p in meta.get("perturbations", ()):
        keep &= ~((stamps >= p["start"] * dt - margin_s - _EPS) & (stamps < p["end"] * dt - _EPS))
    return keep


def find_episodes(root: str | Path) -> list[Path]:
    """Episode folders (those with an episode.json) at or under `root`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    return sorted(p.parent for p in root.rglob(EPISODE_FILE))


def kept_episodes(bag_dirs: Sequence[str | Path]) -> list[Path]:
    """The folders whose episode.json says `kept: true`."""
    return [Path(d) for d in bag_dirs if read_episode_meta(d)["kept"]]


def split_by_seed(bag_dirs: Sequence[str | Path], val_fraction: float,
                  seed: int) -> tuple[list[Path], list[Path]]:
    """(train, val) folders such that no episode seed is in both: a seeded shuffle of the distinct seeds puts
    round(val_fraction * seeds) of them (at least one when val_fraction > 0 and there are two seeds or more)
    in validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    seeds_of = {Path(d): read_episode_meta(d)["seed"] for d in bag_dirs}
    seeds = sorted(set(seeds_of.values()))
    n_val = round(val_fraction * len(seeds))
    if val_fraction > 0 and len(seeds) > 1:
        n_val = min(max(n_val, 1), len(seeds) - 1)
    order = np.random.default_rng(seed).permutation(len(seeds))
    val_seeds = {seeds[i] for i in order[:n_val]}
    train = [d for d, s in seeds_of.items() if s not in val_seeds]
    val = [d for d, s in seeds_of.items() if s in val_seeds]
    return train, val


class DrivingDataset(Dataset):
    """`Sample`s from the `kept: true` episodes among `bag_dirs` (targets: `episode_targets`), minus the frames
    `unperturbed` rejects in episodes with odometry targets; N and the waypoint spacing come from the model
    config's `action_head`. Frames are held in memory as uint8 (the processor resizes them at batch time)."""

    def __init__(self, bag_dirs: Sequence[str | Path], config: Mapping[str, Any]) -> None:
        head = config["action_head"]
        self.num_waypoints = int(head["num_waypoints"])
        self.waypoint_dt = float(head["waypoint_dt"])
        self.route_lookahead_m: float | None = head.get("route_lookahead_m")
        self.route_points = int(head.get("route_points", 1))
        self.route_frame = head.get("waypoint_frame", "ego") == "route"
        self.episodes: list[Episode] = []
        self._index: list[tuple[int, int, int]] = []  # (episode, frame, target row)
        self._targets: list[tuple[np.ndarray, np.ndarray]] = []
        self._routes: list[np.ndarray | None] = []  # per episode: (T, route points, 2), ego frame
        self._lines: list[np.ndarray | None] = []  # per episode: (T, route line points, 2), ego frame
        self.seeds: list[int] = []
        for bag_dir in kept_episodes(bag_dirs):
            episode = read_episode(bag_dir)
            frames, waypoints, speeds = episode_targets(episode, self.num_waypoints, self.waypoint_dt)
            e = len(self.episodes)
            self.episodes.append(episode)
            self.seeds.append(int(episode.meta["seed"]))
            self._targets.append((waypoints.astype(np.float32), speeds.astype(np.float32)))
            routes, lines = self._route_inputs(episode)
            self._routes.append(routes)
            self._lines.append(lines)
            # with reference targets the label is the way back to the lane, so perturbed frames are good samples
            clean = (np.ones(len(frames), dtype=bool) if episode.reference_labelled
                     else unperturbed(episode.stamps[frames], episode.meta))
            self._index.extend((e, int(f), row) for row, f in enumerate(frames) if clean[row])

    def _route_inputs(self, episode: Episode) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Each frame's route points and, for a route-frame model, route line, from its reference centreline (the
        lane the expert steers for, on the route) taken as the route, as the bridge's route is in closed loop;
        None without a route input (or a route frame) or references."""
        if self.route_lookahead_m is None or episode.references is None:
            return None, None
        routes = [to_ego_frame(path, *pose) for path, pose in zip(episode.references, episode.poses, strict=True)]
        targets = [route_targets(route, self.route_lookahead_m, self.route_points) for route in routes]
        lines = [route_line(route) for route in routes] if self.route_frame else None
        return _stack_or_nan(targets, (self.route_points, 2)), _stack_or_nan(lines, (ROUTE_LINE_POINTS, 2))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def instructions(self) -> list[str]:
        """The instruction of every sample, in sample order (without touching the images)."""
        return [self.episodes[e].instructions[frame] for e, frame, _ in self._index]

    def __getitem__(self, i: int) -> Sample:
        e, frame, row = self._index[i]
        episode = self.episodes[e]
        waypoints, speeds = self._targets[e]
        return Sample(episode.images[frame], episode.instructions[frame], float(episode.speeds[frame]),
                      float(episode.yaw_rates[frame]), torch.from_numpy(waypoints[row]), float(speeds[row]),
                      _finite_or_none(self._routes[e], frame), _finite_or_none(self._lines[e], frame))


def _stack_or_nan(arrays: Sequence[np.ndarray | None] | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Per-frame arrays stacked as float32 (T, *shape), NaN for the frames that have none; None for None."""
    if arrays is None:
        return None
    return np.stack([np.full(shape, np.nan) if a is None else a for a in arrays]).astype(np.float32)


def _finite_or_none(per_frame: np.ndarray | None, frame: int) -> np.ndarray | None:
    return None if per_frame is None or not np.isfinite(per_frame[frame]).all() else per_frame[frame]


def collate(batch: Sequence[Sample]) -> tuple[list[np.ndarray], list[str], list[float], list[float], torch.Tensor,
                                              torch.Tensor, torch.Tensor, torch.Tensor]:
    """DataLoader collate: images, instructions, speeds and yaw rates as lists (the processor batches them),
    targets as tensors (B, N, 2) and (B,), route points (B, P, 2) and route lines (B, M, 2), NaN where a sample
    has none (a batch in which no sample has one gets (B, 1, 2))."""
    images, instructions, speeds, yaw_rates, waypoints, target_speeds, routes, lines = zip(*batch, strict=True)
    return (list(images), list(instructions), list(speeds), list(yaw_rates), torch.stack(waypoints),
            torch.tensor(target_speeds, dtype=torch.float32), _nan_padded(routes), _nan_padded(lines))


def _nan_padded(arrays: Sequence[np.ndarray | None]) -> torch.Tensor:
    return torch.from_numpy(_stack_or_nan(arrays, next((a.shape for a in arrays if a is not None), (1, 2))))
