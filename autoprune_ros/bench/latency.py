"""End-to-end latency of the node at a camera rate: camera stamp -> command publish, with and without pruning.

Each configuration runs the real node process against the synthetic camera; the table gives latency
percentiles, the governor's deadline-miss rate and the mean visual tokens kept.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from autoprune_ros.cli import markdown_table, write_json

CONFIGS = {
    "no pruning": {"pruning_policy": "none"},
    "AutoPrune + governor": {"pruning_policy": "autoprune"},
    "AutoPrune + governor, complexity-aware": {"pruning_policy": "autoprune", "complexity_aware": True},
}


def run_latency_bench(frames: int, rate: float, latency_budget_ms: float, threads: int, output_dir: Path) -> int:
    from autoprune_ros.ros.stream_run import run_stream

    output_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, params in tqdm(CONFIGS.items(), desc="latency runs", unit="run"):
        node_params = {**params, "latency_budget_ms": latency_budget_ms, "num_threads": threads}
        log = output_dir / f"node-{name.split()[0].lower().strip(',')}-{len(results)}.log"
        run = run_stream(node_params, frames, rate, timeout=120 + 3 * frames / rate, node_log=log)
        results[name] = run.summary() | {"params": node_params}
    report = {"frames": frames, "rate_hz": rate, "latency_budget_ms": latency_budget_ms, "torch_threads": threads,
              "model": "tiny LLaVA (config/models/tiny_llava.yaml), 196 visual tokens per frame", "runs": results}
    path = write_json(output_dir / "latency.json", report)
    rows = [[name, f"{r['frames_answered']}/{frames}", f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}",
             f"{r['latency_ms']['max']:.1f}", f"{100 * r['deadline_misses'] / max(1, r['frames_answered']):.1f}%",
             f"{r['mean_kept_tokens']:.1f}", r["dropped_stale"], r["unexplained_commands"]]
            for name, r in results.items()]
    print(markdown_table(["configuration", "answered", "p50 ms", "p99 ms", "max ms", "deadline misses",
                          "mean kept tokens", "dropped stale", "unexplained commands"], rows))
    print(f"\ncamera {rate:g} Hz, latency budget {latency_budget_ms:g} ms, latency = camera stamp to command "
          f"publish; results in {path}")
    return 0 if all(r["frames_answered"] and not r["unexplained_commands"] for r in results.values()) else 1
