"""`autoprune-closed-loop` end to end on a very short MetaDrive route: the expert row and the node, results files,
plots, and resuming without re-running finished runs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from autoprune_sim.evaluate import main, node_params, report
from autoprune_sim.metrics import RouteResult

SIM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-sim" / "bin" / "python"


def test_configuration_strings() -> None:
    assert node_params("none", 100.0)["pruning_policy"] == "none"
    fixed = node_params("autoprune:22", 100.0)
    assert (fixed["min_token_budget"], fixed["max_token_budget"], fixed["use_sim_time"]) == (22, 22, True)
    assert "min_token_budget" not in node_params("fastv:governed", 80.0)
    assert node_params("none", 100.0)["model"] == "tiny"
    assert node_params("none", 100.0, "models/tiny_drive")["model"] == "models/tiny_drive"
    for bad in ("tome:64", "autoprune", "none:5", "pdrop:-3"):
        with pytest.raises(ValueError, match="bad"):
            node_params(bad, 100.0)


def test_bad_arguments_exit_2_with_a_reason(capsys, tmp_path) -> None:
    assert main(["--configs", "sparsevlm:64", "--output-dir", str(tmp_path)]) == 2
    assert "bad configuration 'sparsevlm:64'" in capsys.readouterr().err
    assert main(["--sim-python", str(tmp_path / "nope"), "--output-dir", str(tmp_path)]) == 2
    assert "make setup-sim" in capsys.readouterr().err
    assert main(["--record", str(tmp_path / "rec"), "--takeover-m", "0", "--output-dir", str(tmp_path)]) == 2
    assert "takeover thresholds" in capsys.readouterr().err


def test_report_pairs_each_configuration_with_the_unpruned_runs(tmp_path) -> None:
    def run(config: str, seed: int, completion: float) -> dict:
        result = RouteResult(route_id=f"r{seed}", seed=seed, length_m=100.0, completion=completion, infractions=[],
                             status="Failed - off road", duration_s=1.0, ticks=10, speeds_mps=[5.0] * 10,
                             positions=[(0.5 * i, 0.0) for i in range(10)], dt=0.1)
        return {"config": config, "result": result.to_dict()}

    completions = {1: 0.2, 2: 0.8, 3: 0.5, 4: 0.3}
    runs = {f"none/seed{s}": run("none", s, c) for s, c in completions.items()}
    runs |= {f"pdrop:22/seed{s}": run("pdrop:22", s, 0.5 * c) for s, c in completions.items()}
    runs["pdrop:22/seed9"] = run("pdrop:22", 9, 1.0)  # no unpruned run on this seed: not paired
    runs |= {f"expert/seed{s}": run("expert", s, 1.0) for s in completions}
    results = {"runs": runs, "mode": "sync"}
    table = report(results, tmp_path)
    pruned = results["summary"]["pdrop:22"]
    assert pruned["driving_score_vs_none"]["routes"] == 4
    assert pruned["driving_score_vs_none"]["ratio"] == pytest.approx(0.5)  # each paired route kept half
    assert pruned["driving_score_vs_none"]["low"] == pytest.approx(0.5)
    assert "driving_score_vs_none" not in results["summary"]["none"]
    assert "driving_score_vs_none" not in results["summary"]["expert"], "the reference is not a share of the model"
    assert "DS / none (95% CI)" in table and "| 50% (50-50%) |" in table
    lo, hi = results["summary"]["none"]["driving_score_ci95"]
    assert lo < 45.0 < hi and f"{lo:.1f}-{hi:.1f}" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(("kept", "option"), [({"mode": "sync"}, "--termination metadrive"),
                                              ({"mode": "latency", "termination": "leaderboard"}, "--mode latency")])
def test_resume_refuses_runs_driven_under_other_conditions(tmp_path, capsys, kept, option) -> None:
    """Runs from before --termination existed ended at line contact: resuming them under the Leaderboard rule would
    mix two scorings in one table."""
    run = {"config": "none", "seed": 7, "wall_s": 1.0, "result": {}}
    (tmp_path / "results.json").write_text(json.dumps({**kept, "runs": {"none/seed7": run}}))
    args = ["--seeds", "7", "--configs", "none", "--output-dir", str(tmp_path), "--sim-python", sys.executable,
            "--resume"]
    assert main(args) == 2
    assert f"holds runs with {option}" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == {"none/seed7": run}, "left as it was"


@pytest.mark.sim
@pytest.mark.ros
def test_short_run_writes_results_and_resumes(tmp_path, capsys) -> None:
    if not SIM_PYTHON.exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although `make test` builds it")
        pytest.skip(".venv-sim not built (make setup-sim)")
    args = ["--seeds", "7", "--configs", "autoprune:22", "--ticks", "15", "--traffic-density", "0",
            "--output-dir", str(tmp_path)]
    assert main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"expert/seed7", "autoprune:22/seed7"} and results["mode"] == "sync"
    node_run = results["runs"]["autoprune:22/seed7"]["result"]
    assert node_run["ticks"] >= 1 and node_run["control_timeouts"] == 0
    assert node_run["kept_tokens"] and all(abs(k - 22) <= 1.0 for k in node_run["kept_tokens"])
    assert results["summary"]["expert"]["route_completion"] > 0
    for name in ("results.md", "score_latency_vs_budget.png", "trajectories_seed7.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert results["termination"] == "leaderboard" and node_run["meta"]["termination"] == "leaderboard"
    assert "termination: leaderboard" in (tmp_path / "results.md").read_text()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "2 finished runs kept" in capsys.readouterr().out
