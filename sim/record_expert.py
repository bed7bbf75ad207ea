"""Record MetaDrive expert driving as rosbag2 (mcap, version 8: Humble reads it), one bag folder per episode.

    python -m autoprune_sim.record_expert --seeds 0-49 --maps 3,4,SCX --ticks 600 --output-dir data/expert

The expert is MetaDrive's IDM policy. Its longitudinal action obeys the instruction of each tick: the route's
command ("follow the lane", "turn left/right at the next intersection") drives it unchanged, "slow down" caps it
at half IDM's target speed and "stop" brakes to a standstill and holds it. The instruction segments are drawn per
episode from a seeded generator (or given with --instruction-schedule); every bag records the control actually
applied, so the instruction measurably changes the recorded driving. Bag contract: docs/data.md.

Runs in the simulator environment (.venv-sim) with AMENT_PREFIX_PATH pointing at it (carla_msgs definitions).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune_sim.instructions import (
    SLOW_DOWN,
    STOP,
    Segment,
    command_name,
    override_at,
    parse_schedule,
    span_at,
)

DEFAULT_MIX = {STOP: 0.25, SLOW_DOWN: 0.25}
# Random schedule shape, in ticks: warm-up before the first possible override, the gap between opportunities and
# each override's length (a stop from 30 km/h takes about 1.5 s, so every stop segment holds still for >= 1.5 s).
WARMUP_TICKS = (30, 60)
GAP_TICKS = (40, 100)
SEGMENT_TICKS = {STOP: (30, 60), SLOW_DOWN: (40, 90)}
CRASH_KEYS = ("crash", "crash_vehicle", "crash_object", "crash_building")
# Steering perturbations (DART-style noise injection): for a short while the steering is frozen at the expert's value
# from the first tick plus an offset (added to IDM's live output, the offset would be cancelled within a tick by its
# lane-keeping loop; replacing IDM's steering outright sends the car off the road in curves), so that the data
# shows the car off its lane centre and the expert steering it back (training keeps only the frames
# whose near future is free of injected noise: vla/dataset.py). Shape in ticks; offsets in MetaDrive steering units
# (1 = full lock, 40 degrees), drawn in [0.3, 1] x --steer-noise with a random sign.
PERTURB_WARMUP_TICKS = (20, 40)
PERTURB_GAP_TICKS = (30, 50)
PERTURB_TICKS = (4, 9)
# What training takes as the waypoints of a frame (episode.json "targets"; vla/dataset.py): the recorded drive, or
# the way back to the reference path (the lane the expert steers for; every bag records it).
ODOMETRY_TARGETS, REFERENCE_TARGETS = "odometry", "reference"
DROPPED_DIR = "_dropped"
STAGING_DIR = ".partial"  # episodes being recorded (the bag file is named after its folder)


# ---- command line values
def parse_seeds(text: str) -> list[int]:
    """Seeds from "0-49", "1,2,5" or a mix ("0-9,20"); ValueError for malformed or empty ranges."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.replace(" ", ",").split(",")):
        if not part:
            continue
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"bad seed {part!r}: use non-negative integers or ranges like 0-49")
        start, end = int(low), int(high) if sep else int(low)
        if end < start:
            raise ValueError(f"bad seed range {part!r}: the end is below the start")
        seeds.extend(range(start, end + 1))
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat in {text!r}")
    return seeds


def parse_maps(text: str) -> list[int | str]:
    """Map specs cycled over the episodes: block counts ("3") or block strings ("SXOT")."""
    maps: list[int | str] = [int(m) if m.isdigit() else m for m in (p.strip() for p in text.split(",")) if m]
    if not maps:
        raise ValueError("no maps given")
    for spec in maps:
        if isinstance(spec, int) and spec < 1:
            raise ValueError(f"a map needs at least one block, got {spec}")
    return maps


def parse_mix(text: str) -> dict[str, float]:
    """"stop=0.25,slow=0.25": the chance that each opportunity inserts that command (sum <= 1)."""
    mix = {STOP: 0.0, SLOW_DOWN: 0.0}
    for part in (p for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            prob = float(value)
        except ValueError:
            raise ValueError(f"bad instruction mix entry {part!r}: use name=probability") from None
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"probability of {name.strip()!r} must lie in [0, 1], got {prob}")
        mix[command_name(name)] = prob
    if sum(mix.values()) > 1.0 + 1e-9:
        raise ValueError(f"instruction mix probabilities sum to {sum(mix.values()):.2f} > 1")
    return mix


def random_schedule(seed: int, mix_seed: int, ticks: int, mix: dict[str, float]) -> list[Segment]:
    """Override segments for one episode, reproducible from (mix_seed, seed)."""
    rng = np.random.default_rng([mix_seed, seed])
    segments = []
    t = int(rng.integers(*WARMUP_TICKS))
    while t < ticks:
        u, chosen, acc = rng.random(), None, 0.0
        for name in (STOP, SLOW_DOWN):
            acc += mix.get(name, 0.0)
            if u < acc:
                chosen = name
                break
        if chosen is not None:
            end = min(ticks, t + int(rng.integers(*SEGMENT_TICKS[chosen])))
            segments.append(Segment(chosen, t, end))
            t = end
        t += int(rng.integers(*GAP_TICKS))
    return segments


@dataclass(frozen=True)
class Perturbation:
    """Over ticks [start, end) the steering is held at the expert's steering at `start` plus `steer`."""

    start: int
    end: int
    steer: float


def random_perturbations(seed: int, mix_seed: int, ticks: int, scale: float) -> list[Perturbation]:
    """Steering perturbations for one episode, reproducible from (mix_seed, seed); none when scale is 0."""
    if scale <= 0.0:
        return []
    rng = np.random.default_rng([mix_seed, seed, 1])
    perturbations = []
    t = int(rng.integers(*PERTURB_WARMUP_TICKS))
    while t < ticks:
        end = min(ticks, t + int(rng.integers(*PERTURB_TICKS)))
        steer = float(rng.uniform(0.3, 1.0) * scale * rng.choice((-1.0, 1.0)))
        perturbations.append(Perturbation(t, end, round(steer, 4)))
        t = end + int(rng.integers(*PERTURB_GAP_TICKS))
    return perturbations


def steer_offset_at(perturbations: list[Perturbation], tick: int) -> float | None:
    perturbation = span_at(perturbations, tick)
    return None if perturbation is None else perturbation.steer


# ---- recording
def episode_name(seed: int, map_spec: int | str) -> str:
    """An episode's folder name (also the bridge's supervised recordings)."""
    return f"seed{seed:05d}_map{map_spec}"


@dataclass
class EpisodeSpec:
    seed: int
    map: int | str
    ticks: int
    width: int
    height: int
    traffic_density: float
    schedule: list[Segment] = field(default_factory=list)
    perturbations: list[Perturbation] = field(default_factory=list)
    targets: str = ODOMETRY_TARGETS

    @property
    def name(self) -> str:
        return episode_name(self.seed, self.map)


def kept(outcome: str, perturbed: bool, targets: str) -> bool:
    """Whether an episode is training data. Crashes never are. Leaving the road is the expert failing, unless
    steering noise was injected into an episode labelled by its reference paths: then it is the noise, and the
    frames before it still carry correct labels (the last seconds, without a whole recorded future, are no
    samples anyway: vla/dataset.py)."""
    return outcome in ("arrive_dest", "timeout") or (
        outcome == "out_of_road" and perturbed and targets == REFERENCE_TARGETS)


def episode_outcome(crashed: bool, off_road: bool, arrived: bool) -> str:
    """episode.json's outcome (also of the bridge's supervised recordings)."""
    if crashed:
        return "crash"
    if off_road:
        return "out_of_road"
    return "arrive_dest" if arrived else "timeout"


def record_episode(spec: EpisodeSpec, folder: Path) -> dict[str, Any]:
    """Drive one episode with the instructed expert and write its bag into `folder` (must not exist)."""
    from autoprune_sim.episode_bag import EpisodeBag
    from autoprune_sim.expert_policy import instructed_idm_policy
    from autoprune_sim.metadrive_env import STEP_S, Route, ego_state, frame_rgb, make_env
    from autoprune_sim.metrics import ProgressTracker
    from autoprune_sim.reference_path import expert_lane, lane_ahead

    bag = EpisodeBag(folder, STEP_S)
    env = make_env(spec.seed, spec.map, spec.width, spec.height, spec.traffic_density, horizon=spec.ticks + 50,
                   expert=True)
    env.config["agent_policy"] = instructed_idm_policy()
    crashed = off_road = arrived = False
    started = loop_started = time.perf_counter()
    try:
        obs = env.reset()
        loop_started = time.perf_counter()
        policy = env.engine.agent_manager.get_policy(env.vehicle.id)
        route = Route(env)
        progress = ProgressTracker(route.segment_lengths)
        with bag:
            tick = 0
            for tick in range(spec.ticks):
                progress.update(*route.locate(env))
                command = override_at(spec.schedule, tick) or route.instruction(env)
                policy.instruction = command
                policy.steer_offset = steer_offset_at(spec.perturbations, tick)
                stamp = bag.write_frame(tick, frame_rgb(obs), ego_state(env), lane_ahead(env, expert_lane(env, policy)),
                                        command)
                obs, _, done, info = env.step([0.0, 0.0])  # the policy drives; the env action is ignored
                bag.write_control(stamp, env.vehicle.steering, env.vehicle.throttle_brake)
                crashed |= any(bool(info.get(key)) for key in CRASH_KEYS)
                off_road |= bool(info.get("out_of_road"))
                if info.get("arrive_dest"):
                    arrived = True
                    progress.complete()
                if done:
                    break
            ticks = tick + 1
    finally:
        env.close()
    finished = time.perf_counter()
    elapsed, loop = finished - started, finished - loop_started
    outcome = episode_outcome(crashed, off_road, arrived)
    return {
        "name": spec.name, "seed": spec.seed, "map": spec.map, "traffic_density": spec.traffic_density,
        "width": spec.width, "height": spec.height, "ticks": ticks, "max_ticks": spec.ticks, "dt_s": STEP_S,
        "outcome": outcome, "route_completion": round(progress.value, 4), "route_length_m": round(route.length_m, 2),
        "kept": kept(outcome, bool(spec.perturbations), spec.targets), "segments": bag.segments,
        "targets": spec.targets,
        "schedule": [vars(s) for s in spec.schedule], "perturbations": [vars(p) for p in spec.perturbations],
        "wall_s": round(elapsed, 2),
        "frames_per_s": round(ticks / elapsed, 2), "loop_frames_per_s": round(ticks / loop, 2),
    }


def record_isolated(spec: EpisodeSpec, folder: Path) -> dict[str, Any]:
    """`record_episode` in a fresh process. MetaDrive 0.3.0.1 renders the road of every environment after the
    first one of a process without its textures (pale grey asphalt, lane markings barely visible), while the bridge
    runs one environment per process; recording in-process gave training frames that looked unlike closed loop."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(record_episode, spec, folder).result()


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError(f"output dir {folder} is not writable: {exc}") from None


def finalize(meta: dict[str, Any], partial: Path, output_dir: Path, keep_dropped: bool) -> Path:
    """Move a finished episode into place: kept bags under output_dir, dropped ones' metadata under _dropped."""
    if meta["kept"]:
        target = output_dir / meta["name"]
    else:
        target = output_dir / DROPPED_DIR / meta["name"]
        target.parent.mkdir(exist_ok=True)
        if not keep_dropped:
            for path in partial.iterdir():
                path.unlink()
    (partial / "episode.json").write_text(json.dumps(meta, indent=1) + "\n")
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def recorded(output_dir: Path, name: str) -> bool:
    return any((output_dir / sub / name / "episode.json").is_file() for sub in ("", DROPPED_DIR))


def summarize(output_dir: Path) -> dict[str, Any]:
    """The dataset summary from every episode.json under output_dir (kept and dropped)."""
    episodes = [json.loads(p.read_text()) for p in sorted(output_dir.glob("*/episode.json"))]
    episodes += [json.loads(p.read_text()) for p in sorted((output_dir / DROPPED_DIR).glob("*/episode.json"))]
    kept = [e for e in episodes if e["kept"]]
    frames = Counter()
    for e in kept:
        for s in e["segments"]:
            frames[s["instruction"]] += s["end"] - s["start"]
    return {
        "episodes": len(episodes), "kept": len(kept), "dropped": len(episodes) - len(kept),
        "outcomes": dict(Counter(e["outcome"] for e in episodes)),
        "frames": sum(e["ticks"] for e in kept), "frames_per_instruction": dict(sorted(frames.items())),
        "mean_route_completion": round(float(np.mean([e["route_completion"] for e in kept])), 4) if kept else None,
        "kept_episodes": [e["name"] for e in kept],
        "dropped_episodes": {e["name"]: e["outcome"] for e in episodes if not e["kept"]},
    }


def _table(summary: dict[str, Any]) -> str:
    lines = [f"episodes {summary['episodes']}  kept {summary['kept']}  dropped {summary['dropped']}  "
             f"frames {summary['frames']}  outcomes {summary['outcomes']}",
             f"{'instruction':<36}{'frames':>8}{'share':>8}"]
    total = max(1, summary["frames"])
    for name, count in summary["frames_per_instruction"].items():
        lines.append(f"{name:<36}{count:>8}{count / total:>8.1%}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autoprune_sim.record_expert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-49", help="seeds: 0-49, 1,2,5 or a mix (default 0-49)")
    parser.add_argument("--maps", default="3", help="map specs cycled over episodes: block counts or strings, "
                                                    "e.g. 3,4,SCX (default 3)")
    parser.add_argument("--ticks", type=int, default=600, help="max ticks (0.1 s) per episode (default 600)")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--traffic-density", type=float, default=0.1)
    parser.add_argument("--output-dir", type=Path, default=Path("data/expert"))
    parser.add_argument("--instruction-mix", default="stop=0.25,slow=0.25",
                        help="chance per opportunity (every 4-10 s) of a stop / slow-down segment")
    parser.add_argument("--mix-seed", type=int, default=0, help="seed of the instruction segments (with each seed)")
    parser.add_argument("--instruction-schedule", default=None,
                        help="fixed segments for every episode instead of random ones, e.g. stop:20-45,slow:50-80")
    parser.add_argument("--steer-noise", type=float, default=0.0,
                        help="hold the expert's steering plus an offset of up to this size (MetaDrive units, 1 = full "
                             "lock) for 0.4-0.8 s every 3-5 s, so the data shows recoveries (default 0: none)")
    parser.add_argument("--targets", choices=(ODOMETRY_TARGETS, REFERENCE_TARGETS), default=ODOMETRY_TARGETS,
                        help="training waypoints of the episodes: the recorded drive (default) or the way back to "
                             "the lane the expert steers for; with 'reference', episodes that the steering noise "
                             "drove off the road are kept (docs/training.md)")
    parser.add_argument("--resume", action="store_true", help="skip episodes already recorded in --output-dir")
    parser.add_argument("--keep-dropped", action="store_true", help="keep the bags of crashed/off-road episodes "
                                                                    f"(under {DROPPED_DIR}/)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = "record_expert"
    try:
        seeds, maps = parse_seeds(args.seeds), parse_maps(args.maps)
        mix = parse_mix(args.instruction_mix)
        schedule = parse_schedule(args.instruction_schedule) if args.instruction_schedule else None
        if args.ticks < 1 or args.width < 16 or args.height < 16 or not 0.0 <= args.traffic_density <= 1.0:
            raise ValueError("need --ticks >= 1, --width/--height >= 16 and --traffic-density in [0, 1]")
        if not 0.0 <= args.steer_noise <= 1.0:
            raise ValueError(f"--steer-noise must lie in [0, 1], got {args.steer_noise}")
        _check_writable(args.output_dir)
    except (ValueError, PermissionError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    output_dir = args.output_dir
    specs = [EpisodeSpec(seed, maps[i % len(maps)], args.ticks, args.width, args.height, args.traffic_density,
                         schedule if schedule is not None else random_schedule(seed, args.mix_seed, args.ticks, mix),
                         random_perturbations(seed, args.mix_seed, args.ticks, args.steer_noise), args.targets)
             for i, seed in enumerate(seeds)]
    todo = [s for s in specs if not (args.resume and recorded(output_dir, s.name))]
    if len(todo) < len(specs):
        print(f"{prog}: resuming, {len(specs) - len(todo)} episode(s) already recorded", file=sys.stderr)
    frames, wall = 0, 0.0
    bar = tqdm(todo, unit="ep", disable=args.no_progress, file=sys.stderr)
    for spec in bar:
        bar.set_description(spec.name)
        partial = output_dir / STAGING_DIR / spec.name
        partial.parent.mkdir(exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        try:
            meta = record_isolated(spec, partial)
        except Exception:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finalize(meta, partial, output_dir, args.keep_dropped)
        frames, wall = frames + meta["ticks"], wall + meta["wall_s"]
        bar.set_postfix(outcome=meta["outcome"], fps=f"{frames / max(wall, 1e-9):.1f}")
    shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)
    summary = summarize(output_dir)
    summary["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    summary["recorded_now"] = {"episodes": len(todo), "frames": frames,
                               "frames_per_s": round(frames / wall, 2) if wall else None}
    (output_dir / "dataset.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
