"""The regression gate: threshold semantics on hand-made reports, and through `autoprune-replay` a baseline run
that passes against itself while a policy with perturbed action-head weights fails, naming what regressed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune_ros.paths import config_path
from autoprune_ros.replay.gate import (
    GateError,
    evaluate,
    frame_drift,
    load_baseline,
    load_thresholds,
    regression_table,
)
from autoprune_ros.replay.report import SCHEMA, SUMMARY_METRICS

FRAMES = 20
GATE = """reference:
  failed: 0
  missing: 0
  latency_ms_p95: null
baseline:
  drift: {steer_mae: 0.01, target_speed_mae: 0.05, ade: 0.05, fde: 0.1}
  relative: {latency_ms_p95: null, latency_ms_p99: null}
  tolerance: {kept_tokens_mean: {rel: 0.05, abs: 1.0}}
  regression: {steer_mae: null}
"""


def frame(stamp: int, steer: float = 0.0, speed: float = 5.0, shift: float = 0.0, status: str = "ok") -> dict:
    return {"index": stamp, "stamp_ns": stamp, "status": status, "steer": steer, "target_speed": speed,
            "waypoints": [[1.0 + shift, 0.0], [2.0 + 2 * shift, 0.0]]}


def report(frames: list[dict] | None = None, config: str = "autoprune:64", **summary) -> dict:
    values = dict.fromkeys(SUMMARY_METRICS, None)
    values.update(frames=len(frames or []), ok=len(frames or []), failed=0, missing=0)
    values.update(summary)
    return {"schema": SCHEMA, "configs": {config: {"summary": values, "frames": frames or []}}}


def thresholds(**sections) -> dict:
    return {"reference": {}, "drift": {}, "relative": {}, "tolerance": {}, "regression": {}, **sections}


def test_null_thresholds_are_not_checked_and_missing_values_are_skipped() -> None:
    result = evaluate(report(steer_mae=9.0), thresholds(reference={"steer_mae": None, "ade": 1.0}))
    assert [(c.metric, c.passed) for c in result.checks] == [("ade", None)]  # no ADE in this run: skipped
    assert result.passed and "1 skipped" in result.verdict()


def test_absolute_limits_against_the_reference() -> None:
    result = evaluate(report(steer_mae=0.3, failed=2, speed_mae=0.5),
                      thresholds(reference={"steer_mae": 0.2, "failed": 0, "speed_mae": 0.5}))
    assert {c.metric: c.passed for c in result.checks} == {"steer_mae": False, "failed": False, "speed_mae": True}
    assert not result.passed
    table = regression_table(result)
    assert "| autoprune:64 | reference | steer_mae | 0.3 | 0.2 | REGRESSED |" in table
    assert "speed_mae" not in table and "failed" in result.verdict()


def test_drift_compares_the_frames_ok_in_both_runs_by_stamp() -> None:
    baseline = [frame(1, 0.1), frame(2, 0.2), frame(3, 0.3, status="failed"), frame(4, 0.4)]
    current = [frame(4, 0.4, shift=0.5), frame(2, 0.25), frame(3, 0.3), frame(1, 0.1, speed=6.0)]
    drift, compared = frame_drift(current, baseline)
    assert compared == 3
    assert drift["steer_mae"] == pytest.approx(0.05 / 3)
    assert drift["target_speed_mae"] == pytest.approx(1 / 3)
    assert drift["ade"] == pytest.approx((0.5 + 1.0) / 2 / 3)  # only frame 4 moved: by 0.5 and 1.0 m
    assert drift["fde"] == pytest.approx(1.0 / 3)
    result = evaluate(report(current), thresholds(drift={"steer_mae": 0.02, "ade": 0.3}), report(baseline))
    assert {c.metric: c.passed for c in result.checks} == {"steer_mae": True, "ade": True}
    result = evaluate(report(current), thresholds(drift={"target_speed_mae": 0.1}), report(baseline))
    assert [c.kind for c in result.regressions] == ["drift"]
    none_shared = evaluate(report([frame(9)]), thresholds(drift={"steer_mae": 0.01}), report(baseline))
    assert none_shared.checks[0].passed is None and "no frame ok in both" in none_shared.checks[0].note


def test_relative_tolerance_and_regression_limits() -> None:
    base = report(latency_ms_p95=30.0, kept_tokens_mean=64.0, ade=1.0)
    limits = thresholds(relative={"latency_ms_p95": {"rel": 0.5, "abs": 5.0}},
                        tolerance={"kept_tokens_mean": {"rel": 0.05, "abs": 1.0}}, regression={"ade": 0.2})
    same = evaluate(report(latency_ms_p95=50.0, kept_tokens_mean=67.0, ade=1.2), limits, base)
    assert same.passed and len(same.checks) == 3  # 50 <= 30 * 1.5 + 5, |67 - 64| <= 4.2, 1.2 <= 1.0 + 0.2
    worse = evaluate(report(latency_ms_p95=51.0, kept_tokens_mean=16.0, ade=1.5), limits, base)
    assert {c.metric: c.kind for c in worse.regressions} == {"latency_ms_p95": "relative",
                                                             "kept_tokens_mean": "tolerance", "ade": "regression"}
    more_tokens = evaluate(report(kept_tokens_mean=80.0), limits, base)  # a change either way is flagged
    assert [c.metric for c in more_tokens.regressions] == ["kept_tokens_mean"]


def test_limits_on_metrics_where_more_is_better_are_floors() -> None:
    """A model that predicts less of each turn is worse: a lateral gain under its limit fails, above it passes."""
    limits = thresholds(reference={"lateral_gain": 0.5, "ok": 20}, regression={"lateral_gain": 0.05},
                        relative={"lateral_gain": {"rel": 0.1, "abs": 0.0}})
    base = report(lateral_gain=0.8)
    better = evaluate(report(lateral_gain=0.9, ok=20), limits, base)
    assert better.passed and len(better.checks) == 4
    worse = evaluate(report(lateral_gain=0.7, ok=19), limits, base)
    assert {(c.kind, c.metric): c.limit for c in worse.regressions} == {
        ("reference", "ok"): 20, ("relative", "lateral_gain"): pytest.approx(0.72),
        ("regression", "lateral_gain"): pytest.approx(0.75)}
    alone = evaluate(report(lateral_gain=0.4, ok=20), limits)
    assert [c.metric for c in alone.regressions] == ["lateral_gain"], "under the absolute floor"


def test_configurations_missing_from_the_baseline_are_reported_not_failed() -> None:
    result = evaluate(report(config="fastv:32"), thresholds(drift={"steer_mae": 0.01}), report([frame(1)]))
    assert result.passed and result.checks[0].passed is None and "not in the baseline" in result.checks[0].note


def test_gate_files_are_validated(tmp_path) -> None:
    default = load_thresholds(config_path("replay", "gate.yaml"))
    assert default["reference"]["failed"] == 0 and default["reference"]["steer_mae"] is None
    assert default["relative"]["latency_ms_p95"] == {"rel": 0.5, "abs": 10.0}
    for text, words in (("reference:\n  steer_error: 0.1\n", "steer_error"),
                        ("baseline:\n  drift: {steer_mae: -1}\n", "non-negative"),
                        ("baseline:\n  relative: {latency_ms_p95: {relative: 1}}\n", "relative"),
                        ("thresholds: {}\n", "thresholds"), ("reference: [1, 2\n", "unreadable")):
        path = tmp_path / "gate.yaml"
        path.write_text(text)
        with pytest.raises(GateError, match=words):
            load_thresholds(path)
    path = tmp_path / "nulls.yaml"
    path.write_text("baseline:\n  tolerance: {kept_tokens_mean: null}\n")
    assert load_thresholds(path)["tolerance"] == {"kept_tokens_mean": None}


def test_baselines_must_be_replay_reports(tmp_path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"configs": {}}))
    with pytest.raises(GateError, match="not an autoprune-replay report"):
        load_baseline(path)
    with pytest.raises(GateError, match="unreadable"):
        load_baseline(tmp_path / "none.json")


# ---- through the command line
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny VLA and a copy whose action-head output layer got noise: its waypoints must change."""
    import torch

    from autoprune_ros.vla.builder import build_tiny_vla, save_vla

    root = tmp_path_factory.mktemp("models")
    policy = build_tiny_vla(config_path("models", "tiny_llava.yaml"), seed=0)
    good = save_vla(policy, root / "good")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = policy.head.mlp[-1]
        out.weight.add_(0.5 * torch.randn(out.weight.shape, generator=generator))
    return {"good": good, "degraded": save_vla(policy, root / "degraded")}


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    from autoprune_ros.replay.sample_bag import write_sample_bag

    return write_sample_bag(tmp_path_factory.mktemp("bag") / "sample", "mcap", FRAMES)


def replay(bag: Path, out: Path, *args: str) -> tuple[int, dict]:
    from autoprune_ros.replay.cli import main

    code = main([str(bag), "--output-dir", str(out), "--no-progress", "--threads", "1", "--configs", "autoprune:32",
                 *args])
    return code, json.loads((out / "report.json").read_text())


def test_the_gate_passes_a_rerun_and_fails_a_degraded_policy(bag, models, tmp_path, capsys) -> None:
    gate = tmp_path / "gate.yaml"
    gate.write_text(GATE)
    code, base = replay(bag, tmp_path / "base", "--model", str(models["good"]), "--gate", str(gate))
    assert code == 0 and base["gate"]["passed"]
    baseline = str(tmp_path / "base" / "report.json")

    code, again = replay(bag, tmp_path / "again", "--model", str(models["good"]), "--gate", str(gate),
                         "--baseline", baseline)
    out = capsys.readouterr().out
    assert code == 0 and "gate PASSED" in out, out
    drift = {c["metric"]: c["value"] for c in again["gate"]["checks"] if c["kind"] == "drift"}
    assert drift == {"steer_mae": 0.0, "target_speed_mae": 0.0, "ade": 0.0, "fde": 0.0}
    assert again["gate"]["baseline"] == baseline

    code, worse = replay(bag, tmp_path / "worse", "--model", str(models["degraded"]), "--gate", str(gate),
                         "--baseline", baseline)
    out = capsys.readouterr().out
    assert code == 1 and "gate FAILED" in out
    regressed = {(c["kind"], c["metric"]) for c in worse["gate"]["checks"] if c["passed"] is False}
    assert {("drift", "ade"), ("drift", "fde")} <= regressed
    assert "| autoprune:32 | drift | ade |" in out  # the printed table names what regressed
    assert "REGRESSED" in (tmp_path / "worse" / "report.md").read_text()


def test_a_bad_baseline_or_gate_file_is_a_usage_error(bag, tmp_path, capsys) -> None:
    from autoprune_ros.replay.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main([str(bag), "--output-dir", str(tmp_path / "out"), "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune-replay: error: baseline") and len(err.splitlines()) == 1
    gate = tmp_path / "gate.yaml"
    gate.write_text("reference: {ade: fast}\n")
    assert main([str(bag), "--output-dir", str(tmp_path / "out"), "--gate", str(gate)]) == 2
    assert "reference.ade" in capsys.readouterr().err
