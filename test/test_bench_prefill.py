"""`autoprune-bench prefill` runs end to end on a tiny shape and writes a complete, consistent report."""
from __future__ import annotations

import json

import yaml

from autoprune_ros.bench import main

TINY = {"vision": {"image_size": 112, "patch_size": 14, "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 2},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 500},
        "feature_layer": -2, "prompt": {"pre_tokens": 5, "text_tokens": 8}}


def test_prefill_bench_report(tmp_path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["prefill", "--config", str(config), "--budgets", "16", "8", "--reps", "1", "--warmup", "0",
                 "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "prefill.json").read_text())
    assert report["num_visual"] == 64 and report["num_layers"] == 6
    runs = {(r["policy"], r["budget"]): r for r in report["runs"]}
    assert set(runs) == {("none", None)} | {(p, b) for p in ("autoprune", "fastv", "pdrop") for b in (16, 8)}
    assert runs[("none", None)]["flops_ratio"] == 1.0 and runs[("none", None)]["speedup"] == 1.0
    for (policy, budget), run in runs.items():
        if budget:
            assert abs(run["mean_visual_tokens"] - budget) <= 1.0, (policy, run["mean_visual_tokens"])
            assert run["flops_ratio"] < 1.0 and run["predicted_speedup"] > 1.0 and run["median_ms"] > 0
    assert "measured/predicted" in capsys.readouterr().out
