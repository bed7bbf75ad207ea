"""Image transport benchmark: a synthetic camera process and a probe process, per transport profile and QoS."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from tqdm import tqdm

from autoprune_ros.cli import markdown_table, write_json
from autoprune_ros.processes import ros_args, start_module, stop
from autoprune_ros.rosenv import ros_environment

PROFILES = ("project", "fastdds-defaults")
RELIABILITIES = ("reliable", "best_effort")
# Depth 5 on both sides, as qos_profile_sensor_data, so "best effort" is the usual sensor setting.
DEPTH = 5


def _run_pair(profile: str, reliability: str, frames: int, rate: float, width: int, height: int,
              workdir: Path) -> dict:
    env = ros_environment()
    if profile == "fastdds-defaults":
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    out = workdir / f"{profile}-{reliability}.json"
    probe = start_module("autoprune_ros.ros.frame_probe", [
        "--reliability", reliability, "--depth", str(DEPTH), "--expected", str(frames),
        "--timeout", str(30 + 3 * frames / rate), "--output", str(out)], env=env)
    camera = start_module("autoprune_ros.ros.synthetic_camera", ros_args({
        "rate_hz": rate, "count": frames, "width": width, "height": height, "reliability": reliability,
        "depth": DEPTH}), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        camera.wait(timeout=60 + 2 * frames / rate)
        probe.wait(timeout=30)
    finally:
        stop(camera)
        stop(probe)
    return json.loads(out.read_text()) if out.is_file() else {"received": 0, "loss": 1.0, "error": "no probe output"}


def run_transport_bench(frames: int, rate: float, width: int, height: int, output_dir: Path) -> int:
    """Run every (profile, reliability) pair, print a table, write dds.json; 0 unless a run produced nothing."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="autoprune-dds-") as tmp:
        pairs = [(p, r) for p in PROFILES for r in RELIABILITIES]
        for profile, reliability in tqdm(pairs, desc="dds runs", unit="run"):
            result = _run_pair(profile, reliability, frames, rate, width, height, Path(tmp))
            runs.append({"profile": profile, "reliability": reliability, **result})
    report = {"frames": frames, "rate_hz": rate, "width": width, "height": height, "encoding": "rgb8",
              "depth": DEPTH, "runs": runs}
    path = write_json(output_dir / "dds.json", report)
    rows = [[r["profile"], r["reliability"], f"{r['received']}/{frames}", f"{100 * r.get('loss', 1.0):.1f}%",
             *(f"{r['latency_ms'][k]:.1f}" if "latency_ms" in r else "-" for k in ("mean", "p50", "p95", "max"))]
            for r in runs]
    print(markdown_table(["transport", "QoS", "received", "loss", "mean ms", "p50 ms", "p95 ms", "max ms"], rows))
    print(f"\n{width}x{height} rgb8 at {rate:g} Hz, depth {DEPTH}; results in {path}")
    return 0 if all(r["received"] > 0 for r in runs) else 1
