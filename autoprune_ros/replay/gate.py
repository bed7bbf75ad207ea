"""The regression gate: checks a replay report against absolute limits (the bag's own reference) and, given one,
against a baseline report of the same bag. Thresholds come from a YAML file (config/replay/gate.yaml); a null
threshold is not checked. Exit status of `autoprune-replay`: 1 when a check fails, else 0.

Check kinds (per configuration); limits are ceilings, except for the metrics where more is better
(FLOOR_METRICS: `ok`, `lateral_gain`), where they are floors and the inequalities turn round:
- reference:  summary metric <= limit (errors against the bag's references, latency, failed / missing frames);
- drift:      mean difference between the two runs' outputs for the same frames (matched by stamp) <= limit;
- relative:   summary metric <= baseline * (1 + rel) + abs (latency percentiles);
- tolerance:  |summary metric - baseline| <= |baseline| * rel + abs (mean kept tokens);
- regression: error against the bag's references <= baseline's error + tolerance (lateral gain >= baseline's -
  tolerance).
A check whose value cannot be computed (no reference topic, no frame in both runs, ...) is reported as skipped.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autoprune_ros.replay.report import ERROR_METRICS, SCHEMA, SUMMARY_METRICS, TURN_METRICS, waypoint_errors

DRIFT_METRICS = ("steer_mae", "target_speed_mae", "ade", "fde")
SECTIONS = {"reference": ("reference",), "baseline": ("drift", "relative", "tolerance", "regression")}
RELATIVE_KEYS = ("rel", "abs")
#: Summary metrics where more is better: a limit on them is a floor.
FLOOR_METRICS = frozenset({"ok", *TURN_METRICS})


def _passes(metric: str):
    """The comparison a value of `metric` must pass against its limit."""
    return (lambda v, lim: v >= lim) if metric in FLOOR_METRICS else (lambda v, lim: v <= lim)


def _margin(metric: str, margin: float) -> float:
    """`margin` in the direction in which `metric` may get worse."""
    return -margin if metric in FLOOR_METRICS else margin


class GateError(ValueError):
    """A gate file or baseline report that cannot be used; the message names the file and the fix."""


@dataclass
class Check:
    config: str
    kind: str  # reference, drift, relative, tolerance or regression
    metric: str
    value: float | None
    limit: float | None
    passed: bool | None  # None: skipped (`note` says why)
    note: str = ""


@dataclass
class GateResult:
    checks: list[Check]
    baseline: str | None = None  # path of the baseline report, if any

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def verdict(self) -> str:
        done = [c for c in self.checks if c.passed is not None]
        skipped = len(self.checks) - len(done)
        tail = f" ({skipped} skipped)" if skipped else ""
        if self.passed:
            return f"gate PASSED: {len(done)} checks passed{tail}"
        names = ", ".join(sorted({f"{c.config} {c.metric}" for c in self.regressions}))
        return f"gate FAILED: {len(self.regressions)} of {len(done)} checks regressed{tail}: {names}"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdict": self.verdict(), "baseline": self.baseline,
                "checks": [asdict(c) for c in self.checks]}


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise GateError(f"{where}: expected a non-negative number or null, got {value!r}")
    return float(value)


def _keys(section: Any, known: Sequence[str], where: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise GateError(f"{where}: expected a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise GateError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
    return section


def load_thresholds(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate a gate file -> {"reference": {metric: limit}, "drift": {...}, "relative": {metric:
    {rel, abs}}, "tolerance": {...}, "regression": {...}}; GateError naming the file and key when malformed."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GateError(f"gate file {path}: unreadable ({type(exc).__name__}: {exc}); pass a YAML file like "
                        "config/replay/gate.yaml") from None
    data = _keys(data, tuple(SECTIONS), f"gate file {path}")
    out: dict[str, dict[str, Any]] = {}
    out["reference"] = {k: _number(v, f"{path}: reference.{k}")
                        for k, v in _keys(data.get("reference"), SUMMARY_METRICS, f"{path}: reference").items()}
    baseline = _keys(data.get("baseline"), SECTIONS["baseline"], f"{path}: baseline")
    known = {"drift": DRIFT_METRICS, "relative": SUMMARY_METRICS, "tolerance": SUMMARY_METRICS,
             "regression": ERROR_METRICS + TURN_METRICS}
    for kind in SECTIONS["baseline"]:
        entries = _keys(baseline.get(kind), known[kind], f"{path}: baseline.{kind}")
        if kind in ("relative", "tolerance"):
            out[kind] = {}
            for metric, spec in entries.items():
                where = f"{path}: baseline.{kind}.{metric}"
                spec = _keys(spec, RELATIVE_KEYS, where)
                out[kind][metric] = None if not spec else {k: _number(spec.get(k, 0.0), f"{where}.{k}") or 0.0
                                                           for k in RELATIVE_KEYS}
        else:
            out[kind] = {k: _number(v, f"{path}: baseline.{kind}.{k}") for k, v in entries.items()}
    return out


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A report.json written by autoprune-replay; GateError when it is missing, unreadable or not a report."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GateError(f"baseline {path}: unreadable ({type(exc).__name__}: {exc}); pass a report.json written "
                        "by autoprune-replay") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("configs"), dict):
        raise GateError(f"baseline {path}: not an autoprune-replay report ({SCHEMA}); pass a report.json written "
                        "by autoprune-replay")
    return data


def frame_drift(current: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]
                ) -> tuple[dict[str, float | None], int]:
    """Mean absolute output differences between two runs over the frames ok in both (matched by stamp):
    {steer_mae, target_speed_mae, ade, fde} and the number of frames compared."""
    base = {f["stamp_ns"]: f for f in baseline if f.get("status") == "ok"}
    diffs: dict[str, list[float]] = {name: [] for name in DRIFT_METRICS}
    pairs = [(f, base[f["stamp_ns"]]) for f in current if f.get("status") == "ok" and f["stamp_ns"] in base]
    for cur, old in pairs:
        for key in ("steer", "target_speed"):
            if cur.get(key) is not None and old.get(key) is not None:
                diffs[f"{key}_mae"].append(abs(cur[key] - old[key]))
        a, b = cur.get("waypoints"), old.get("waypoints")
        if a and b:
            ade, fde = waypoint_errors(a, b) if len(a) == len(b) else (math.inf, math.inf)
            diffs["ade"].append(ade)
            diffs["fde"].append(fde)
    return {k: float(np.mean(v)) if v else None for k, v in diffs.items()}, len(pairs)


def _check(config: str, kind: str, metric: str, value: float | None, limit: float | None, passed_if) -> Check:
    if value is None:
        return Check(config, kind, metric, None, limit, None, "not computed for this run")
    return Check(config, kind, metric, float(value), limit, bool(passed_if(value, limit)))


def evaluate(report: Mapping[str, Any], thresholds: Mapping[str, Mapping[str, Any]],
             baseline: Mapping[str, Any] | None = None, baseline_path: str | None = None) -> GateResult:
    """Run every non-null check of `thresholds` on `report` (a report.json document, gate not needed) and, when
    given, against `baseline` for the configurations present in both."""
    checks: list[Check] = []
    for name, run in report["configs"].items():
        summary = run["summary"]
        for metric, limit in thresholds.get("reference", {}).items():
            if limit is not None:
                checks.append(_check(name, "reference", metric, summary.get(metric), limit, _passes(metric)))
        if baseline is None:
            continue
        old = baseline["configs"].get(name)
        if old is None:
            checks.append(Check(name, "baseline", "-", None, None, None, "configuration not in the baseline"))
            continue
        checks += _baseline_checks(name, run, old, thresholds)
    return GateResult(checks, baseline_path)


def _baseline_checks(name: str, run: Mapping[str, Any], old: Mapping[str, Any],
                     thresholds: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    summary, old_summary = run["summary"], old["summary"]
    checks = []
    drift_limits = {m: lim for m, lim in thresholds.get("drift", {}).items() if lim is not None}
    if drift_limits:
        drift, compared = frame_drift(run["frames"], old["frames"])
        for metric, limit in drift_limits.items():
            check = _check(name, "drift", metric, drift[metric], limit, lambda v, lim: v <= lim)
            check.note = check.note if check.passed is not None or compared else "no frame ok in both runs"
            checks.append(check)
    for kind in ("relative", "tolerance", "regression"):
        for metric, spec in thresholds.get(kind, {}).items():
            if spec is None:
                continue
            ref = old_summary.get(metric)
            if ref is None:
                checks.append(Check(name, kind, metric, summary.get(metric), None, None, "no baseline value"))
            elif kind == "relative":
                limit = ref + _margin(metric, abs(ref) * spec["rel"] + spec["abs"])
                checks.append(_check(name, kind, metric, summary.get(metric), limit, _passes(metric)))
            elif kind == "tolerance":
                limit = abs(ref) * spec["rel"] + spec["abs"]
                check = _check(name, kind, metric, summary.get(metric), limit,
                               lambda v, lim, ref=ref: abs(v - ref) <= lim)
                check.note = check.note or f"|value - baseline {ref:.4g}| <= limit"
                checks.append(check)
            else:
                checks.append(_check(name, kind, metric, summary.get(metric), ref + _margin(metric, spec),
                                     _passes(metric)))
    return checks


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _rows(checks: Sequence[Check]) -> list[list[object]]:
    status = {True: "pass", False: "REGRESSED", None: "skipped"}
    return [[c.config, c.kind, c.metric, _fmt(c.value), _fmt(c.limit), status[c.passed], c.note] for c in checks]


HEADERS = ["config", "check", "metric", "value", "limit", "result", "note"]


def gate_table(result: GateResult) -> str:
    """Every check, as a Markdown table."""
    from autoprune_ros.cli import markdown_table

    return markdown_table(HEADERS, _rows(result.checks)) if result.checks else "no checks configured"


def regression_table(result: GateResult) -> str:
    """The checks that failed, as a Markdown table naming configuration and metric ("" when none failed)."""
    from autoprune_ros.cli import markdown_table

    return markdown_table(HEADERS, _rows(result.regressions)) if result.regressions else ""
