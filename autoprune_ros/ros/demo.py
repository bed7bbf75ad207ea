"""`autoprune-demo` (what `make demo` runs): the node on a synthetic camera stream, frame by frame.

Starts the synthetic camera and the autoprune node as processes, prints one line per answered frame from
/autoprune/frame_stats, checks that every command either carries the stamp of a camera frame or is a safe stop,
and writes demo.json and summary.md. Until the bundled driving model lands, the model is the tiny LLaVA built
from config with untrained weights: the commands are meaningless, the pipeline and its timings are real.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoprune_ros.cli import markdown_table, write_json
from autoprune_ros.ros.stream_run import mean_kept, run_stream


def _frame_line(values: dict[str, str]) -> None:
    print(f"frame {values['stamp']}  latency {float(values['latency_ms']):6.1f} ms ({values['deadline']})  "
          f"model {float(values.get('model_ms', 'nan')):5.1f} ms  {values.get('policy', '')} budget "
          f"{values.get('budget') or '-':>5}  kept {mean_kept(values):5.1f}/{values['visual_tokens']}  "
          f"steer {float(values['steer']):+.3f}  throttle {float(values['throttle']):.2f}  "
          f"brake {float(values['brake']):.2f}  dropped {values['dropped_stale']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50, help="camera frames to publish (default 50)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate, Hz (default 10)")
    parser.add_argument("--instruction", default="follow the lane", help="instruction given to the model")
    parser.add_argument("--latency-budget-ms", type=float, default=100.0,
                        help="the node's per-frame latency budget; the governor picks token budgets to fit it")
    parser.add_argument("--output-dir", type=Path, default=Path("results/demo"))
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting the node (model load, warm-up, latency calibration) and a {args.rate:g} Hz synthetic "
          f"camera, {args.frames} frames; node log in {args.output_dir / 'node.log'}", flush=True)
    run = run_stream({"instruction": args.instruction, "latency_budget_ms": args.latency_budget_ms}, args.frames,
                     args.rate, args.timeout, on_frame=_frame_line, node_log=args.output_dir / "node.log")
    summary = run.summary() | {"instruction": args.instruction, "latency_budget_ms": args.latency_budget_ms,
                               "model": "tiny LLaVA built from config/models/tiny_llava.yaml (untrained weights)"}
    lat = summary["latency_ms"]
    table = markdown_table(
        ["frames sent", "answered", "dropped stale", "latency p50 ms", "p99 ms", "max ms", "model p50 ms",
         "deadline misses", "mean kept tokens", "unexplained commands"],
        [[args.frames, summary["frames_answered"], summary["dropped_stale"], f"{lat['p50']:.1f}", f"{lat['p99']:.1f}",
          f"{lat['max']:.1f}", f"{summary['model_ms_p50']:.1f}", summary["deadline_misses"],
          f"{summary['mean_kept_tokens']:.1f}", summary["unexplained_commands"]]])
    write_json(args.output_dir / "demo.json", {"summary": summary, "frames": run.stats})
    (args.output_dir / "summary.md").write_text(f"# autoprune demo\n\n{table}\n", encoding="utf-8")
    print("\n" + table + f"\n\nresults: {args.output_dir / 'demo.json'}, {args.output_dir / 'summary.md'}")
    if not run.stats or summary["unexplained_commands"]:
        print("demo: FAILED (no frame answered, or a command that is neither a safe stop nor stamped with a camera "
              "frame)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
