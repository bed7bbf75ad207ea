"""`autoprune-demo` (what `make demo` runs): the bundled driving VLA drives a MetaDrive route through the node.

Runs `autoprune-closed-loop` on a route the model never saw in training: MetaDrive's expert (IDM) as the
reference, the model unpruned, and the model with AutoPrune holding 11% of its visual tokens (22 of 196). The node
and the MetaDrive bridge run as separate processes talking ROS 2 (camera, odometry, instruction in; CARLA-style
control out). A progress bar follows each route live (tick, route completion, speed, instruction); the final
table gives driving score, route completion, collisions and node latency. Results: results/demo/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoprune_ros.paths import resolve_model

DEFAULT_MODEL = "tiny_drive"
DEFAULT_SEED = 1000  # training used seeds 0-43 (models/README.md)
DEFAULT_CONFIGS = ("none", "autoprune:22")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"MetaDrive route seed (default {DEFAULT_SEED})")
    parser.add_argument("--map", default="3", help="MetaDrive block count or block string (default 3)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="none, <policy>:<tokens> or <policy>:governed (default: none autoprune:22)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"bundled model name or a folder from autoprune-train (default {DEFAULT_MODEL})")
    parser.add_argument("--ticks", type=int, default=600, help="tick limit per route, 0.1 s each (default 600)")
    parser.add_argument("--output-dir", type=Path, default=Path("results/demo"))
    args = parser.parse_args(argv)
    try:
        model = resolve_model(args.model)
    except FileNotFoundError as exc:
        print(f"autoprune-demo: {exc}", file=sys.stderr)
        return 2
    from autoprune_sim.evaluate import main as closed_loop

    print(f"autoprune-demo: model {args.model} ({model}) drives MetaDrive map {args.map}, seed {args.seed} (not "
          f"seen in training): expert, then {', '.join(args.configs)}; logs and results in {args.output_dir}",
          flush=True)
    return closed_loop(["--seeds", str(args.seed), "--map", str(args.map), "--configs", *args.configs,
                        "--model", model, "--ticks", str(args.ticks), "--output-dir", str(args.output_dir)])


if __name__ == "__main__":
    sys.exit(main())
