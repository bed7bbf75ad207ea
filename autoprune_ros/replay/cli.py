"""`autoprune-replay`: replay rosbag2 / ROS 1 bags through the node's pipeline, report and gate on regressions."""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from itertools import islice
from pathlib import Path
from typing import Any

PROG = "autoprune-replay"
DEFAULT_CONFIGS = ["none", "autoprune:64"]
DESCRIPTION = """Replay the camera, instruction and odometry topics of a bag (rosbag2 folder, .mcap, .db3 or ROS 1
.bag) through the pipeline the autoprune node runs, for one or more policy configurations.
  offline  every frame in order through the node's FramePipeline, no DDS, no drops; deterministic for fixed
           token budgets
  live     the bag is published on ROS with /clock to a real autoprune node; what it publishes is recorded
           into an output bag per configuration
Writes report.json, report.md and plots (tokens.png, latency.png, actions.png) to the output folder, prints the
summary table and the regression gate's verdict (thresholds: --gate; comparison: --baseline)."""
EXAMPLE = """examples:
  python -m autoprune_ros.replay.sample_bag data/sample_bag --frames 60
  autoprune-replay data/sample_bag --configs none autoprune:64 --output-dir results/replay/base
  autoprune-replay data/sample_bag --configs none autoprune:64 --baseline results/replay/base/report.json

exit status: 0 the gate passed (or --no-gate), 1 a check regressed (the table names it), 2 a usage, bag, model
or gate-file error (one line on stderr)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE,
        description=DESCRIPTION)
    parser.add_argument("bag", help="bag folder, .mcap, .db3 or ROS 1 .bag")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="CONFIG",
                        help="policy configurations: none, <policy>:<tokens> (fixed visual tokens per layer) or "
                        "<policy>:governed (the latency governor chooses; timing-dependent), policy in autoprune, "
                        f"fastv, pdrop (default: {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--model", default="tiny",
                        help="as the node's `model` parameter: 'tiny' (random weights from "
                        "config/models/tiny_llava.yaml, seed 0), a model bundled under models/ or a folder written "
                        "by autoprune-train / save_vla (default: tiny)")
    parser.add_argument("--mode", choices=("offline", "live"), default="offline", help="default: offline")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="live: playback speed factor of the recorded timing; 0 = step mode, each frame "
                        "published once the node answered the previous one (default: 1.0)")
    parser.add_argument("--camera-topics", nargs="+", metavar="TOPIC",
                        help="camera topics, primary first (default: detected when unambiguous)")
    parser.add_argument("--instruction-topic", metavar="TOPIC", help="std_msgs/String instruction topic")
    parser.add_argument("--odometry-topic", metavar="TOPIC", help="nav_msgs/Odometry topic (speed, trajectory)")
    parser.add_argument("--reference-topic", metavar="TOPIC",
                        help="recorded driver's command (carla_msgs/CarlaEgoVehicleControl or "
                        "ackermann_msgs/AckermannDriveStamped) the report scores against")
    parser.add_argument("--route-topic", metavar="TOPIC",
                        help="nav_msgs/Path route for models with a route input (default: /carla/hero/waypoints, "
                        "else the recordings' /metadrive/hero/reference_path, else the bag's only Path topic; "
                        "'none': without)")
    parser.add_argument("--baseline", metavar="REPORT_JSON", type=Path,
                        help="an earlier report.json of this bag to compare against (drift, latency, tokens)")
    parser.add_argument("--gate", metavar="YAML", type=Path,
                        help="gate thresholds (default: config/replay/gate.yaml of the package)")
    parser.add_argument("--no-gate", action="store_true", help="report only; exit 0 whatever the results")
    parser.add_argument("--latency-budget-ms", type=float, metavar="MS",
                        help="the node's latency_budget_ms (what governed configurations keep within; default: "
                        "the node's default)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="offline: replay only the first N frames")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output-storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="live: storage of the output bags (default: mcap)")
    parser.add_argument("--output-dir", type=Path, help="where the report goes (default: results/replay/<bag name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


class ReplayError(ValueError):
    """A run that cannot go on (bad arguments, a bag with no frame); the message names the cause and the fix."""


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rate < 0:
        parser.error("--rate must be >= 0 (0 = step mode)")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    if args.max_frames is not None and args.mode == "live":
        parser.error("--max-frames applies to offline mode only (live mode plays the whole bag)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.no_gate and (args.baseline or args.gate):
        parser.error("--no-gate turns the gate off: drop --baseline / --gate, or drop --no-gate")
    if args.latency_budget_ms is not None and args.latency_budget_ms <= 0:
        parser.error("--latency-budget-ms must be > 0")


def _bag_name(bag: str) -> str:
    path = Path(bag.rstrip("/"))
    return path.stem if path.suffix in (".mcap", ".db3", ".bag") else path.name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _model_head(model: str) -> tuple[int, float]:
    """(waypoints, seconds between them) of the model's action head, from its config file alone; ReplayError
    when `model` is not something the node loads."""
    from autoprune_ros.paths import BUILT_FROM_CONFIG, config_path, resolve_model
    from autoprune_ros.vla.builder import CONFIG_FILE, load_model_config

    if model == BUILT_FROM_CONFIG:
        path = config_path("models", "tiny_llava.yaml")
    else:
        try:
            path = Path(resolve_model(model)) / CONFIG_FILE
        except FileNotFoundError as exc:
            raise ReplayError(f"--model {model}: {exc}") from None
        if not path.is_file():
            raise ReplayError(f"--model {model} is not a saved VLA (no {CONFIG_FILE} in it): pass 'tiny', a bundled "
                              "name or a folder written by autoprune-train / save_vla")
    head = load_model_config(path)["action_head"]
    return int(head["num_waypoints"]), float(head["waypoint_dt"])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {"cameras": args.camera_topics, "instruction": args.instruction_topic,
              "odometry": args.odometry_topic, "reference_control": args.reference_topic, "route": args.route_topic}
    return {k: v for k, v in values.items() if v}


def _frames(reader, max_frames: int | None):
    frames = reader.frames()
    return islice(frames, max_frames) if max_frames else frames


def _run_offline(reader, configs, args, latency_budget_ms: float, total: int | None, controls: dict):
    from autoprune_ros.replay.offline import build_pipeline, run_offline
    from autoprune_ros.replay.report import recording_references
    from autoprune_ros.runtime.policy_setup import load_policy

    policy = load_policy(args.model, threads=args.threads or 0)
    num_cameras = len(reader.info.topics.cameras)
    runs = {}
    for i, config in enumerate(configs):
        pipeline = build_pipeline(args.model, config, latency_budget_ms, num_cameras, threads=args.threads,
                                  policy=policy)
        frames = _frames(reader, args.max_frames)
        if i == 0:
            frames = recording_references(frames, controls)
        runs[config.name] = run_offline(frames, pipeline, config, progress=not args.no_progress, total=total)
    return runs, {}


def _run_live(reader, configs, args, latency_budget_ms: float, output_dir: Path, controls: dict):
    from autoprune_ros.replay.live import run_live
    from autoprune_ros.replay.report import recording_references

    for _ in recording_references(reader.frames(), controls):
        pass
    runs, bags = {}, {}
    for config in configs:
        name = _safe(config.name)
        output_bag = output_dir / f"output_{name}"
        if output_bag.is_dir():  # this command's own output of an earlier run into the same folder
            shutil.rmtree(output_bag)
        runs[config.name] = run_live(reader, config, model=args.model, rate=args.rate, output_bag=output_bag,
                                     output_storage=args.output_storage, latency_budget_ms=latency_budget_ms,
                                     node_log=output_dir / f"node_{name}.log", progress=not args.no_progress,
                                     extra_params={"num_threads": args.threads} if args.threads else None)
        bags[config.name] = str(output_bag)
    return runs, bags


def run(args: argparse.Namespace) -> int:
    """Replay, report, gate; returns the exit status. Raises ValueError (BagError, GateError, ...) for errors."""
    from autoprune_ros.cli import write_json
    from autoprune_ros.paths import config_path
    from autoprune_ros.replay.bag_reader import open_bag
    from autoprune_ros.replay.gate import evaluate, gate_table, load_baseline, load_thresholds, regression_table
    from autoprune_ros.replay.plots import write_plots
    from autoprune_ros.replay.report import build_report, frame_references, markdown_report, summary_table
    from autoprune_ros.ros.parameters import PARAMETERS
    from autoprune_ros.runtime.configs import parse_config

    configs = [parse_config(text) for text in args.configs]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ReplayError(f"configurations repeat in --configs {' '.join(args.configs)}: name each once")
    num_waypoints, waypoint_dt = _model_head(args.model)
    thresholds = None if args.no_gate else load_thresholds(args.gate or config_path("replay", "gate.yaml"))
    baseline = load_baseline(args.baseline) if args.baseline else None
    latency_budget_ms = args.latency_budget_ms or PARAMETERS["latency_budget_ms"].default
    output_dir = args.output_dir or Path("results", "replay", _bag_name(args.bag))
    output_dir.mkdir(parents=True, exist_ok=True)

    controls: dict = {}
    with open_bag(args.bag, _overrides(args) or None) as reader:
        info = reader.info
        total = info.message_counts.get(info.topics.cameras[0])
        if args.max_frames:
            total = min(total or args.max_frames, args.max_frames)
        if args.mode == "offline":
            runs, output_bags = _run_offline(reader, configs, args, latency_budget_ms, total, controls)
        else:
            runs, output_bags = _run_live(reader, configs, args, latency_budget_ms, output_dir, controls)
        track = reader.track()

    references = frame_references(controls, track, num_waypoints, waypoint_dt)
    settings = {"mode": args.mode, "model": args.model, "rate": args.rate if args.mode == "live" else None,
                "configs": names, "latency_budget_ms": latency_budget_ms, "max_frames": args.max_frames,
                "threads": args.threads, "num_waypoints": num_waypoints, "waypoint_dt": waypoint_dt,
                "gate": None if thresholds is None else str(args.gate or config_path("replay", "gate.yaml")),
                "baseline": None if baseline is None else str(args.baseline), "output_bags": output_bags}
    report = build_report(info, settings, runs, references)
    result = None
    if thresholds is not None:
        result = evaluate(report, thresholds, baseline, settings["baseline"])
        report["gate"] = result.to_dict()
    write_json(output_dir / "report.json", report)
    (output_dir / "report.md").write_text(markdown_report(report, "" if result is None else gate_table(result)),
                                          encoding="utf-8")
    write_plots(report, output_dir)

    print(summary_table(report))
    for problem in report["bag"]["problems"]:
        print(f"problem: {problem}")
    for name, path in output_bags.items():
        print(f"{name}: node output recorded in {path}")
    print(f"report: {output_dir / 'report.json'}, {output_dir / 'report.md'}")
    if not report["bag"]["frames"]:
        raise ReplayError(f"no camera frame could be replayed from {args.bag}: see the problems above")
    if result is None:
        return 0
    if not result.passed:
        print(regression_table(result))
    print(result.verdict())
    return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # BagError, GateError, bad configurations, missing model or files
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for users; say what broke
        print(f"{PROG}: unexpected error: {type(exc).__name__}: {_one_line(str(exc))} (please report it with the "
              "command line and the bag)", file=sys.stderr)
        return 2


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or "(no message)"


if __name__ == "__main__":
    sys.exit(main())
