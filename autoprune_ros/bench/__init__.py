"""`autoprune-bench`: benchmarks that print ratios measured side by side in one run (JSON + a table)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    pre = sub.add_parser("prefill", help="prefill latency of NoPrune, AutoPrune, FastV and PDrop at equal budgets, "
                         "against the FLOPs-predicted speedup")
    pre.add_argument("--config", type=Path, default=None,
                     help="model shape YAML (default: config/bench/llava_small.yaml; the 7B shape is "
                     "config/bench/llava_1_5_7b.yaml, for a GPU)")
    pre.add_argument("--device", default="cpu", help="cpu or cuda")
    pre.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    pre.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64], help="average visual tokens")
    pre.add_argument("--reps", type=int, default=5, help="timed runs per configuration (median reported)")
    pre.add_argument("--warmup", type=int, default=2)
    pre.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    pre.add_argument("--output-dir", type=Path, default=Path("results/bench"), help="where prefill.json goes")
    lat = sub.add_parser("latency", help="end-to-end node latency at a camera rate (camera stamp -> command), "
                         "with and without pruning, and the governor's deadline-miss rate")
    lat.add_argument("--frames", type=int, default=100, help="frames per configuration (default 100)")
    lat.add_argument("--rate", type=float, default=10.0, help="camera rate, Hz (default 10)")
    lat.add_argument("--latency-budget-ms", type=float, default=100.0)
    lat.add_argument("--threads", type=int, default=0, help="torch CPU threads in the node (0: torch default)")
    lat.add_argument("--output-dir", type=Path, default=Path("results/bench"), help="where latency.json goes")
    args = parser.parse_args(argv)
    if args.bench == "dds":
        from autoprune_ros.bench.transport import run_transport_bench

        return run_transport_bench(args.frames, args.rate, args.width, args.height, args.output_dir)
    if args.bench == "latency":
        from autoprune_ros.bench.latency import run_latency_bench

        return run_latency_bench(args.frames, args.rate, args.latency_budget_ms, args.threads, args.output_dir)
    import torch

    from autoprune_ros.bench.prefill import run_prefill_bench
    from autoprune_ros.paths import config_path

    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config or config_path("bench", "llava_small.yaml")
    return run_prefill_bench(config, args.device, args.dtype, args.budgets, args.reps, args.warmup, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
