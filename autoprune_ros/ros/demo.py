"""`autoprune-demo` (what `make demo` runs): the node on a synthetic camera stream, frame by frame.

Starts the synthetic camera and the autoprune node as processes, prints one line per answered frame from
/autoprune/frame_stats, checks that every command carries the stamp of a camera frame, and writes demo.json
and summary.md. Until the bundled driving model lands, the model is the tiny LLaVA built from config with
untrained weights: the commands are meaningless, the pipeline and its timings are real.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from carla_msgs.msg import CarlaEgoVehicleControl
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor

from autoprune_ros.cli import markdown_table, write_json
from autoprune_ros.processes import ros_args, start_module, stop
from autoprune_ros.ros.node import CONTROL_TOPICS, FRAME_STATS_TOPIC


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _frame_line(values: dict[str, str]) -> str:
    return (f"frame {values['stamp']}  latency {float(values['latency_ms']):7.1f} ms  "
            f"(model {float(values.get('model_ms', 'nan')):6.1f})  visual tokens {values['visual_tokens']:>4}  "
            f"steer {float(values['steer']):+.3f}  throttle {float(values['throttle']):.2f}  "
            f"brake {float(values['brake']):.2f}  dropped {values['dropped_stale']}")


def run_demo(frames: int, rate: float, instruction: str, output_dir: Path, timeout: float) -> int:
    node_proc = start_module("autoprune_ros.ros.node", ros_args({"instruction": instruction}))
    camera = start_module("autoprune_ros.ros.synthetic_camera", ros_args(
        {"rate_hz": rate, "count": frames, "wait_for_subscribers": 1, "wait_timeout_s": timeout}))
    rclpy.init()
    watcher = rclpy.create_node("autoprune_demo")
    stats: list[dict[str, str]] = []
    controls: list[int] = []
    watcher.create_subscription(DiagnosticStatus, FRAME_STATS_TOPIC,
                                lambda m: stats.append({kv.key: kv.value for kv in m.values}), 50)
    watcher.create_subscription(CarlaEgoVehicleControl, CONTROL_TOPICS["carla"],
                                lambda m: controls.append(_stamp_ns(m.header.stamp)), 50)
    executor = SingleThreadedExecutor()
    executor.add_node(watcher)
    print(f"demo: starting the node (model load + warm-up) and a {rate:g} Hz synthetic camera, {frames} frames",
          flush=True)
    printed = 0
    deadline = time.monotonic() + timeout
    camera_done_at = None
    try:
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            for values in stats[printed:]:
                print(_frame_line(values), flush=True)
            printed = len(stats)
            if node_proc.poll() is not None:
                print(f"demo: the node exited early with status {node_proc.returncode}", file=sys.stderr)
                break
            if camera_done_at is None and camera.poll() is not None:
                camera_done_at = time.monotonic()
            if camera_done_at and time.monotonic() - camera_done_at > 2.0:
                break
    finally:
        stop(camera)
        node_status = stop(node_proc)
        watcher.destroy_node()
        rclpy.try_shutdown()
    return _report(stats, controls, frames, rate, instruction, node_status, output_dir)


def _report(stats, controls, frames, rate, instruction, node_status, output_dir: Path) -> int:
    frame_stamps = {int(sec) * 1_000_000_000 + int(nsec) for sec, nsec in (s["stamp"].split(".") for s in stats)}
    unmatched = [c for c in controls if c not in frame_stamps]
    latency = np.array([float(s["latency_ms"]) for s in stats]) if stats else np.array([np.nan])
    model = np.array([float(s.get("model_ms", "nan")) for s in stats]) if stats else np.array([np.nan])
    summary = {
        "frames_published": frames, "rate_hz": rate, "instruction": instruction,
        "frames_answered": len(stats), "controls_received": len(controls),
        "controls_with_unmatched_stamp": len(unmatched),
        "dropped_stale": int(stats[-1]["dropped_stale"]) if stats else 0,
        "latency_ms": {"p50": float(np.nanpercentile(latency, 50)), "p95": float(np.nanpercentile(latency, 95)),
                       "max": float(np.nanmax(latency))},
        "model_ms_p50": float(np.nanpercentile(model, 50)),
        "node_exit_status": node_status,
        "model": "tiny LLaVA built from config/models/tiny_llava.yaml (untrained weights)",
    }
    table = markdown_table(
        ["frames sent", "answered", "dropped stale", "latency p50 ms", "p95 ms", "max ms", "model p50 ms",
         "unmatched stamps"],
        [[frames, len(stats), summary["dropped_stale"], f"{summary['latency_ms']['p50']:.1f}",
          f"{summary['latency_ms']['p95']:.1f}", f"{summary['latency_ms']['max']:.1f}",
          f"{summary['model_ms_p50']:.1f}", len(unmatched)]])
    write_json(output_dir / "demo.json", {"summary": summary, "frames": stats})
    (output_dir / "summary.md").write_text(f"# autoprune demo\n\n{table}\n", encoding="utf-8")
    print("\n" + table + f"\n\nresults: {output_dir / 'demo.json'}, {output_dir / 'summary.md'}")
    ok = stats and not unmatched
    if not ok:
        print("demo: FAILED (no frame answered, or a command whose stamp matches no camera frame)", file=sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoprune-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50, help="camera frames to publish (default 50)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate, Hz (default 10)")
    parser.add_argument("--instruction", default="follow the lane", help="instruction given to the model")
    parser.add_argument("--output-dir", type=Path, default=Path("results/demo"))
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    return run_demo(args.frames, args.rate, args.instruction, args.output_dir, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
