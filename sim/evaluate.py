"""`autoprune-closed-loop`: drive MetaDrive routes with the autoprune node for each policy configuration and score it.

    autoprune-closed-loop --seeds 0 1 2 --configs none autoprune:64 autoprune:22 fastv:22 pdrop:22

Each run starts the node (main environment, use_sim_time) and the MetaDrive bridge (simulator environment) as
processes, as `ros2 launch` would, and keeps the bridge's route result. A configuration is `none` or
`<policy>:<tokens>` (the node's governor held at that many visual tokens per layer), or `<policy>:governed`
(the governor free within the node's latency budget). The expert row (MetaDrive's IDM policy) is the reference.
Results go to results.json (resumable: `--resume` skips finished runs), results.md and plots.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from autoprune_ros.runtime.configs import POLICIES, node_params
from autoprune_sim.instructions import parse_schedule
from autoprune_sim.metadrive_env import TERMINATION_RULES
from autoprune_sim.metrics import RouteResult, paired_ratio, route_score, summarize
from autoprune_sim.takeover import Takeover

REPO = Path(__file__).resolve().parent.parent
EXPERT = "expert"


def _sim_python(path: Path | None) -> Path:
    python = path or REPO / ".venv-sim" / "bin" / "python"
    if not Path(python).exists():
        raise FileNotFoundError(f"no simulator environment at {python}: run `make setup-sim` (MetaDrive needs its own "
                                "environment) or pass --sim-python")
    return Path(python)


def _follow(bridge: subprocess.Popen, log, bar) -> None:
    """Copy the bridge's stdout into the run's log; its progress lines move the route's progress bar."""
    from autoprune_sim.metadrive_bridge import PROGRESS_PREFIX

    for line in bridge.stdout:
        if not line.startswith(PROGRESS_PREFIX):
            log.write(line)
            continue
        try:
            state = json.loads(line[len(PROGRESS_PREFIX):])
        except json.JSONDecodeError:
            continue
        bar.total, bar.n = state["ticks"], state["tick"]
        bar.set_postfix(route=f"{100 * state['completion']:.0f}%", speed=f"{state['speed_mps']:.1f} m/s",
                        instruction=state["instruction"], refresh=False)
        bar.refresh()


def run_one(config: str, seed: int, args: argparse.Namespace, workdir: Path) -> RouteResult:
    """One route: the bridge (and, unless expert, the node) as processes; returns the bridge's result. A tick
    progress bar follows the route live."""
    import threading

    from tqdm import tqdm

    from autoprune_ros.processes import ros_args, start_module, stop
    from autoprune_ros.rosenv import ros_environment

    sim_python = _sim_python(args.sim_python)
    out = workdir / f"{config.replace(':', '-')}-seed{seed}.json"
    env = ros_environment()
    sim_env = dict(env, AMENT_PREFIX_PATH=str(sim_python.parent.parent))
    bridge_cmd = [str(sim_python), "-m", "autoprune_sim.metadrive_bridge", "--seed", str(seed), "--map", str(args.map),
                  "--ticks", str(args.ticks), "--mode", args.mode, "--traffic-density", str(args.traffic_density),
                  "--control-timeout", str(args.control_timeout), "--termination", args.termination,
                  "--output", str(out), "--progress",
                  "--instruction-schedule", args.instruction_schedule]
    if config == EXPERT:
        bridge_cmd.append("--expert")
    elif args.record is not None:
        bridge_cmd += ["--record", str(args.record / config.replace(":", "-")), "--takeover-m", str(args.takeover_m)]
    with (open(workdir / f"{out.stem}.log", "w") as log,
          tqdm(total=args.ticks, desc=f"{config} seed {seed}", unit="tick", leave=False, position=1) as bar):
        node = None if config == EXPERT else start_module(
            "autoprune_ros.ros.node", ros_args(node_params(config, args.latency_budget_ms, args.model)), env=env,
            stdout=log, stderr=subprocess.STDOUT)
        bridge = subprocess.Popen(bridge_cmd, env=sim_env, stdout=subprocess.PIPE, stderr=log, text=True,
                                  start_new_session=True)
        follower = threading.Thread(target=_follow, args=(bridge, log, bar), daemon=True)
        follower.start()
        try:
            status = bridge.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            stop(bridge)
            follower.join(timeout=5.0)
            if node is not None:
                stop(node)
    if status != 0 or not out.exists():
        raise RuntimeError(f"{config} seed {seed}: the bridge ended with status {status}; see {workdir / out.name}"
                           ".log")
    return RouteResult.from_dict(json.loads(out.read_text()))


def _load(path: Path) -> dict:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); move it away or run without --resume") from exc
    return {"runs": {}}


def _mismatch(results: dict, args: argparse.Namespace) -> str | None:
    """The option ("--mode sync") under which the kept runs were driven, if it differs from this invocation's: runs
    driven under other conditions are not comparable, so a resume must not mix them."""
    legacy = {"termination": "metadrive"} if results["runs"] else {}  # runs from before --termination existed
    for key in ("mode", "termination"):
        kept = results.get(key, legacy.get(key))
        if kept is not None and kept != getattr(args, key):
            return f"--{key} {kept}"
    return None


def _budget_of(config: str) -> str:
    return config.partition(":")[2] or ("all" if config == "none" else "-")


def report(results: dict, output_dir: Path) -> str:
    """Per-configuration summary: results.md (table) and plots; returns the table."""
    from autoprune_ros.cli import markdown_table

    by_config: dict[str, list[RouteResult]] = {}
    for run in results["runs"].values():
        by_config.setdefault(run["config"], []).append(RouteResult.from_dict(run["result"]))
    rows, summaries = [], {}
    for config, routes in by_config.items():
        s = summaries[config] = summarize(routes)
        if config not in ("none", EXPERT) and "none" in by_config:  # the expert is the reference, not a pruning
            s["driving_score_vs_none"] = _vs_reference(routes, by_config["none"])
        collisions = sum(s[f"collisions_{kind}_per_km"] for kind in ("vehicle", "layout", "pedestrian"))
        rows.append([config, _budget_of(config), len(routes), f"{s['driving_score']:.1f}",
                     _interval(s["driving_score_ci95"]), _ratio(s.get("driving_score_vs_none")),
                     f"{s['route_completion']:.1f}", f"{100 * s['success_rate']:.0f}%", f"{collisions:.2f}",
                     f"{s['off_road_routes']}", f"{s['mean_speed_mps']:.1f}", _fmt(s.get("comfort"), 2),
                     _fmt(s.get("latency_ms_p50")), _fmt(s.get("latency_ms_p99")), _fmt(s.get("mean_kept_tokens"))])
    table = markdown_table(["configuration", "tokens", "routes", "driving score", "DS 95% CI", "DS / none (95% CI)",
                            "route completion %", "success", "collisions/km", "off-road routes", "mean speed m/s",
                            "comfort", "latency p50 ms", "p99 ms", "kept tokens"], rows)
    results["summary"] = summaries
    (output_dir / "results.md").write_text(f"# Closed-loop results\n\n{table}\n\n{_conditions(results)}\n",
                                           encoding="utf-8")
    _plots(by_config, summaries, output_dir)
    return table


def _conditions(results: dict) -> str:
    """The line under every table: what the runs were scored under."""
    return f"mode: {results.get('mode', '?')}; termination: {results.get('termination', 'metadrive')}"


def _vs_reference(routes: list[RouteResult], reference: list[RouteResult]) -> dict:
    """Driving score of `routes` over that of `reference` on the seeds both drove (`metrics.paired_ratio`)."""
    scores = {r.seed: route_score(r) for r in reference}
    pairs = [(route_score(r), scores[r.seed]) for r in routes if r.seed in scores]
    return paired_ratio([c for c, _ in pairs], [ref for _, ref in pairs])


def _interval(ci) -> str:
    return "-" if ci is None else f"{ci[0]:.1f}-{ci[1]:.1f}"


def _ratio(vs: dict | None) -> str:
    if vs is None or vs["ratio"] is None:
        return "-"
    spread = "" if vs["low"] is None else f" ({100 * vs['low']:.0f}-{100 * vs['high']:.0f}%)"
    return f"{100 * vs['ratio']:.0f}%{spread}"


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plots(by_config: dict[str, list[RouteResult]], summaries: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (score_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for policy in POLICIES[1:]:
        points = sorted((int(c.partition(":")[2]), summaries[c]) for c in summaries
                        if c.startswith(policy + ":") and c.partition(":")[2].isdigit())
        if points:
            score_ax.plot([p for p, _ in points], [s["driving_score"] for _, s in points], "o-", label=policy)
            latency_ax.plot([p for p, _ in points], [s.get("latency_ms_p50") or float("nan") for _, s in points],
                            "o-", label=policy)
    for name, style in (("none", "k--"), (EXPERT, "g:")):
        if name in summaries:
            score_ax.axhline(summaries[name]["driving_score"], color=style[0], linestyle=style[1:], label=name)
    score_ax.set(xlabel="visual tokens per layer (budget)", ylabel="driving score", title="Driving score vs budget")
    latency_ax.set(xlabel="visual tokens per layer (budget)", ylabel="node latency p50 (ms)",
                   title="Latency vs budget")
    for ax in (score_ax, latency_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "score_latency_vs_budget.png", dpi=120)
    plt.close(fig)
    seeds = sorted({r.seed for routes in by_config.values() for r in routes})
    for seed in seeds:
        fig, ax = plt.subplots(figsize=(6, 6))
        for config, routes in by_config.items():
            for route in routes:
                if route.seed == seed and route.positions:
                    xs, ys = zip(*route.positions, strict=True)
                    ax.plot(xs, ys, label=f"{config} ({route.status})")
        ax.set(xlabel="x (m)", ylabel="y (m)", title=f"Trajectories, seed {seed} (map frame, REP 103)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(output_dir / f"trajectories_seed{seed}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune-closed-loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulator", choices=["metadrive", "carla"], default="metadrive",
                        help="carla: run `python -m autoprune_sim.carla_bridge` against a server (docs/carla.md)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--map", default="3", help="MetaDrive block count or block string")
    parser.add_argument("--configs", nargs="+", default=["none", "autoprune:64", "fastv:64", "pdrop:64"],
                        help="none, <policy>:<tokens> or <policy>:governed")
    parser.add_argument("--no-expert", action="store_true", help="skip the expert (IDM) reference row")
    parser.add_argument("--mode", choices=["sync", "latency"], default="sync")
    parser.add_argument("--ticks", type=int, default=600, help="tick limit per route (0.1 s each)")
    parser.add_argument("--traffic-density", type=float, default=0.1)
    parser.add_argument("--termination", choices=TERMINATION_RULES, default="leaderboard",
                        help="when a straying car's run ends: leaderboard (default) once its centre has left every "
                             "lane, the distance outside the route's lanes charged; metadrive also at the first touch "
                             "of a solid line or the sidewalk (docs/closed_loop.md, \"Termination rules\")")
    parser.add_argument("--latency-budget-ms", type=float, default=100.0, help="the node's latency budget")
    parser.add_argument("--model", default="tiny_drive",
                        help="the node's model: a bundled one (default tiny_drive, models/README.md), 'tiny' "
                             "(untrained, built from config) or a folder from autoprune-train")
    parser.add_argument("--instruction-schedule", default="",
                        help="override the route's commands over tick ranges for every run, e.g. stop:100-160 "
                        "(the instruction check); the expert ignores it")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="expert-supervised runs, recorded as training episodes under DIR/<config>/ (DAgger-style "
                             "data, docs/data.md): the node steers, the IDM expert keeps the speed and takes over "
                             "while the car strays; their scores measure the pair, not the model")
    parser.add_argument("--takeover-m", type=float, default=0.7,
                        help="with --record: the expert takes the wheel when the car is, or in 1 s at its speed and "
                             "turn rate will be, this far (m) from the expert's lane (default 0.7)")
    parser.add_argument("--control-timeout", type=float, default=5.0, help="seconds the bridge waits per control")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds before a run is abandoned")
    parser.add_argument("--sim-python", type=Path, default=None, help="the simulator environment's python")
    parser.add_argument("--output-dir", type=Path, default=Path("results/closed_loop"))
    parser.add_argument("--resume", action="store_true", help="keep finished runs of results.json and skip them")
    args = parser.parse_args(argv)
    if args.simulator == "carla":
        print("autoprune-closed-loop: CARLA runs go through `python -m autoprune_sim.carla_bridge` with the node "
              "launched beside it (launch/closed_loop_carla.launch.py, docs/carla.md)", file=sys.stderr)
        return 2
    try:
        for config in args.configs:
            node_params(config, args.latency_budget_ms)
        _sim_python(args.sim_python)
        parse_schedule(args.instruction_schedule)
        Takeover(args.takeover_m)
    except (ValueError, FileNotFoundError) as exc:
        print(f"autoprune-closed-loop: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    args.output_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.output_dir / "results.json"
    results = _load(results_path) if args.resume else {"runs": {}}
    mismatch = _mismatch(results, args)
    if mismatch:
        print(f"autoprune-closed-loop: {results_path} holds runs with {mismatch}; resume with the same option or "
              "write to another --output-dir", file=sys.stderr)
        return 2
    results["mode"] = args.mode
    results["termination"] = args.termination
    results["instruction_schedule"] = args.instruction_schedule
    configs = ([] if args.no_expert else [EXPERT]) + list(args.configs)
    todo = [(c, s) for c in configs for s in args.seeds if f"{c}/seed{s}" not in results["runs"]]
    skipped = len(configs) * len(args.seeds) - len(todo)
    if skipped:
        print(f"autoprune-closed-loop: resuming, {skipped} finished runs kept")
    failures = 0
    for config, seed in tqdm(todo, desc="closed-loop runs", unit="run"):
        start = time.monotonic()
        try:
            result = run_one(config, seed, args, args.output_dir)
        except (RuntimeError, FileNotFoundError) as exc:
            failures += 1
            tqdm.write(f"autoprune-closed-loop: {exc}")
            continue
        results["runs"][f"{config}/seed{seed}"] = {"config": config, "seed": seed, "wall_s": time.monotonic() - start,
                                                   "result": result.to_dict()}
        results_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")  # resumable after each run
    table = report(results, args.output_dir) if results["runs"] else "(no finished runs)"
    results_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table + f"\n\n{_conditions(results)}; results in {results_path}, {args.output_dir / 'results.md'} and plots")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
