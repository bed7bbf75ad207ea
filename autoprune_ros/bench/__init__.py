"""`autoprune-bench`: benchmarks that print ratios measured side by side in one run (JSON + a table)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoprune_ros.cli import not_built_yet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune-bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    dds = sub.add_parser("dds", help="camera-image transport over DDS: loss and latency with and without the "
                         "project's Fast DDS profile, reliable and best effort")
    dds.add_argument("--frames", type=int, default=200, help="frames per run (default 200)")
    dds.add_argument("--rate", type=float, default=20.0, help="publish rate, Hz (default 20)")
    dds.add_argument("--width", type=int, default=640)
    dds.add_argument("--height", type=int, default=480)
    dds.add_argument("--output-dir", type=Path, default=Path("results/bench"), help="where dds.json goes")
    sub.add_parser("prefill", help="prefill latency of NoPrune, AutoPrune, FastV and PDrop at equal budgets")
    args = parser.parse_args(argv)
    if args.bench == "dds":
        from autoprune_ros.bench.transport import run_transport_bench

        return run_transport_bench(args.frames, args.rate, args.width, args.height, args.output_dir)
    return not_built_yet("autoprune-bench prefill", "the prefill benchmark",
                         "AutoPrune engine for transformers VLMs, with FastV and PDrop baselines")


if __name__ == "__main__":
    sys.exit(main())
