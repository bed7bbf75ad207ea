"""`autoprune-closed-loop` end to end on a very short MetaDrive route: the expert row and the node, results files,
plots, and resuming without re-running finished runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoprune_sim.evaluate import main, node_params

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
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "2 finished runs kept" in capsys.readouterr().out
