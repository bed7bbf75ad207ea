"""The replay report: per-configuration metrics from the frame records and the bag's own references, report.json
and its Markdown summary.

References, per frame: the recorded driver's command (the reference control topic) and what the vehicle did next
(the odometry track): the waypoints it drove through, in the ego frame at the frame's stamp, and its speed
`SPEED_HORIZON_S` later, computed with the training targets' function so that replay scores a policy against
exactly what it was trained to predict. Frames without the whole future recorded are left out of those means.
"""
from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from autoprune_ros.replay.frames import BagInfo, FrameRecord, ReferenceControl, ReplayFrame, Track
from autoprune_ros.vla.dataset import SPEED_HORIZON_S, future_targets

SCHEMA = "autoprune-replay/1"
MATCH_TOLERANCE_NS = 20_000_000  # a frame takes the odometry sample nearest its stamp if within this
# Summary metrics (all may be None when they cannot be computed: no reference, no ok frame, ...)
ERROR_METRICS = ("steer_mae", "throttle_mae", "brake_mae", "speed_mae", "ade", "fde")
LATENCY_METRICS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "latency_ms_max")
TOKEN_METRICS = ("kept_tokens_mean", "kept_tokens_min", "kept_tokens_max", "visual_tokens_mean", "budget_mean",
                 "flops_ratio_mean", "complexity_mean", "complexity_std")
COUNT_METRICS = ("frames", "ok", "failed", "missing", "reference_frames", "waypoint_frames", "speed_frames",
                 "turn_frames")
TURN_METRICS = ("lateral_gain",)
SUMMARY_METRICS = COUNT_METRICS + ERROR_METRICS + TURN_METRICS + LATENCY_METRICS + TOKEN_METRICS
# A frame counts as turning when the recorded path lies this far sideways at mid-horizon (2 s for 8 x 0.5 s).
TURN_LATERAL_M = 1.0
VERSION_PACKAGES = ("autoprune_ros", "torch", "transformers", "rosbags", "numpy")


def recording_references(frames: Iterable[ReplayFrame], sink: dict[int, ReferenceControl | None]
                         ) -> Iterator[ReplayFrame]:
    """Pass `frames` through, noting each frame's reference control in `sink` by stamp (one pass over the bag
    serves both the run and the report)."""
    for frame in frames:
        sink[frame.stamp_ns] = frame.reference
        yield frame


def _future_rows(track: Track | None, stamps_ns: Sequence[int], num_waypoints: int, waypoint_dt: float,
                 horizon: float) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """({stamp: recorded future waypoints (N, 2)}, {stamp: recorded speed `horizon` s later}) for the frames
    whose nearest odometry sample (within MATCH_TOLERANCE_NS) has that future recorded."""
    if track is None or len(track) < 2 or not stamps_ns:
        return {}, {}
    t = (track.stamps_ns - track.stamps_ns[0]).astype(np.float64) * 1e-9
    wp_index, waypoints, _ = future_targets(t, track.poses, track.speeds, num_waypoints, waypoint_dt, horizon)
    sp_index, _, speeds = future_targets(t, track.poses, track.speeds, 0, waypoint_dt, horizon)
    wp_rows = {int(i): row for row, i in enumerate(wp_index)}
    sp_rows = {int(i): row for row, i in enumerate(sp_index)}
    query = np.asarray(stamps_ns, dtype=np.int64)
    right = np.clip(np.searchsorted(track.stamps_ns, query), 1, len(track) - 1)
    nearest = np.where(np.abs(track.stamps_ns[right - 1] - query) <= np.abs(track.stamps_ns[right] - query),
                       right - 1, right)
    future_waypoints, future_speeds = {}, {}
    for stamp, j in zip(stamps_ns, nearest.tolist(), strict=True):
        if abs(int(track.stamps_ns[j]) - stamp) > MATCH_TOLERANCE_NS:
            continue
        if j in wp_rows:
            future_waypoints[stamp] = waypoints[wp_rows[j]]
        if j in sp_rows:
            future_speeds[stamp] = float(speeds[sp_rows[j]])
    return future_waypoints, future_speeds


def frame_references(controls: Mapping[int, ReferenceControl | None], track: Track | None, num_waypoints: int,
                     waypoint_dt: float, horizon: float = SPEED_HORIZON_S) -> list[dict[str, Any]]:
    """The reference of every frame (by stamp, in stamp order): the recorded command (steer positive left,
    throttle, brake; None where the bag has none), the recorded future waypoints (N, 2) and the recorded speed
    `horizon` s later (None without that future recorded)."""
    stamps = sorted(controls)
    waypoints, speeds = _future_rows(track, stamps, num_waypoints, waypoint_dt, horizon)
    rows = []
    for stamp in stamps:
        ref = controls[stamp]
        rows.append({"stamp_ns": stamp, "steer": None if ref is None else ref.steer,
                     "throttle": None if ref is None else ref.throttle, "brake": None if ref is None else ref.brake,
                     "waypoints": waypoints[stamp].tolist() if stamp in waypoints else None,
                     "speed_future": speeds.get(stamp)})
    return rows


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def waypoint_errors(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(ADE, FDE) between two (N, 2) waypoint lists: mean and final Euclidean distance, metres."""
    d = np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=-1)
    return float(d.mean()), float(d[-1])


def lateral_gain(predicted: Sequence[float], recorded: Sequence[float]) -> float | None:
    """Least-squares slope through the origin of the predicted against the recorded sideways offset (m): 1 for a
    policy that turns as much as the driver did, below 1 for one that cuts every turn short, which ADE hides among
    the straight frames. None without a recorded offset."""
    p, r = np.asarray(predicted, dtype=np.float64), np.asarray(recorded, dtype=np.float64)
    denominator = float(r @ r)
    return float(p @ r) / denominator if denominator > 0 else None


def summarize(records: Sequence[FrameRecord], references: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One configuration's summary metrics (SUMMARY_METRICS) from its records and `frame_references`."""
    by_stamp = {row["stamp_ns"]: row for row in references}
    ok = [r for r in records if r.status == "ok"]
    errors: dict[str, list[float]] = {name: [] for name in ERROR_METRICS}
    turns: tuple[list[float], list[float]] = ([], [])  # predicted, recorded sideways offset at mid-horizon
    for rec in ok:
        ref = by_stamp.get(rec.stamp_ns)
        if ref is None:
            continue
        for name in ("steer", "throttle", "brake"):
            if ref[name] is not None and getattr(rec, name) is not None:
                errors[f"{name}_mae"].append(abs(getattr(rec, name) - ref[name]))
        if ref["speed_future"] is not None and rec.target_speed is not None:
            errors["speed_mae"].append(abs(rec.target_speed - ref["speed_future"]))
        if ref["waypoints"] is not None and rec.waypoints and len(rec.waypoints) == len(ref["waypoints"]):
            ade, fde = waypoint_errors(rec.waypoints, ref["waypoints"])
            errors["ade"].append(ade)
            errors["fde"].append(fde)
            mid = len(ref["waypoints"]) // 2 - 1
            if abs(ref["waypoints"][mid][1]) > TURN_LATERAL_M:
                turns[0].append(rec.waypoints[mid][1])
                turns[1].append(ref["waypoints"][mid][1])
    latency = np.array([r.latency_ms for r in ok if r.latency_ms is not None], dtype=np.float64)
    kept = [float(np.mean(r.kept_tokens_per_layer)) for r in ok if r.kept_tokens_per_layer]
    complexity = [r.complexity for r in ok if r.complexity is not None]
    summary: dict[str, Any] = {
        "frames": len(records), "ok": len(ok), "failed": sum(r.status == "failed" for r in records),
        "missing": sum(r.status == "missing" for r in records), "reference_frames": len(errors["steer_mae"]),
        "waypoint_frames": len(errors["ade"]), "speed_frames": len(errors["speed_mae"]),
        "turn_frames": len(turns[1]),
    }
    summary.update({name: _mean(values) for name, values in errors.items()})
    summary["lateral_gain"] = lateral_gain(*turns)
    for name, q in zip(LATENCY_METRICS, (50, 95, 99, 100), strict=True):
        summary[name] = float(np.percentile(latency, q)) if latency.size else None
    summary.update({
        "kept_tokens_mean": _mean(kept), "kept_tokens_min": min(kept) if kept else None,
        "kept_tokens_max": max(kept) if kept else None,
        "visual_tokens_mean": _mean([r.visual_tokens for r in ok if r.visual_tokens is not None]),
        "budget_mean": _mean([r.budget for r in ok if r.budget is not None]),
        "flops_ratio_mean": _mean([r.flops_ratio for r in ok if r.flops_ratio is not None]),
        "complexity_mean": _mean(complexity),
        "complexity_std": float(np.std(complexity)) if complexity else None,
    })
    return summary


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a replay's outputs."""
    found = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def bag_section(info: BagInfo, frames: int) -> dict[str, Any]:
    topics = info.topics
    return {"path": str(info.path), "storage": info.storage,
            "topics": {"cameras": list(topics.cameras), "instruction": topics.instruction,
                       "odometry": topics.odometry, "reference_control": topics.reference_control,
                       "route": topics.route},
            "message_counts": dict(info.message_counts), "duration_s": info.duration_ns * 1e-9, "frames": frames,
            "problems": list(info.problems)}


def build_report(info: BagInfo, settings: Mapping[str, Any], runs: Mapping[str, Sequence[FrameRecord]],
                 references: Sequence[Mapping[str, Any]], gate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report.json document. `runs` maps configuration names to their records (in frame order);
    `references` are `frame_references`; `gate` is `GateResult.to_dict()` (None: not gated)."""
    frames = max((len(records) for records in runs.values()), default=0)
    return {
        "schema": SCHEMA,
        "bag": bag_section(info, frames),
        "settings": {**settings, "versions": versions()},
        "configs": {name: {"summary": summarize(records, references), "frames": [r.to_dict() for r in records]}
                    for name, records in runs.items()},
        "reference": list(references),
        "gate": None if gate is None else dict(gate),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


SUMMARY_HEADERS = ["config", "ok/failed/missing", "steer MAE", "throttle MAE", "brake MAE", "speed MAE m/s",
                   "ADE m", "FDE m", "lateral gain (turn frames)", "latency p50/p95/p99/max ms",
                   "kept tokens mean (min-max)", "visual tokens", "FLOPs ratio", "complexity mean±std"]


def summary_table(report: Mapping[str, Any]) -> str:
    """Markdown table: one row per configuration, the main metrics as columns."""
    from autoprune_ros.cli import markdown_table

    rows = []
    for name, run in report["configs"].items():
        s = run["summary"]
        rows.append([
            name, f"{s['ok']}/{s['failed']}/{s['missing']}", *(_fmt(s[k]) for k in ERROR_METRICS),
            f"{_fmt(s['lateral_gain'], 2)} ({s['turn_frames']})",
            "/".join(_fmt(s[k], 1) for k in LATENCY_METRICS),
            f"{_fmt(s['kept_tokens_mean'], 1)} ({_fmt(s['kept_tokens_min'], 1)}-{_fmt(s['kept_tokens_max'], 1)})",
            _fmt(s["visual_tokens_mean"], 0), _fmt(s["flops_ratio_mean"]),
            f"{_fmt(s['complexity_mean'])}±{_fmt(s['complexity_std'])}",
        ])
    return markdown_table(SUMMARY_HEADERS, rows)


def markdown_report(report: Mapping[str, Any], gate_markdown: str = "") -> str:
    """report.md: what was replayed, the summary table, the bag's problems and the gate's table."""
    bag, settings = report["bag"], report["settings"]
    topics = bag["topics"]
    lines = [
        f"# Replay of {bag['path']}", "",
        f"- storage: {bag['storage']}, {bag['frames']} frames, {bag['duration_s']:.1f} s",
        f"- cameras: {', '.join(topics['cameras'])}; instruction: {topics['instruction'] or '-'}; odometry: "
        f"{topics['odometry'] or '-'}; reference control: {topics['reference_control'] or '-'}; route: "
        f"{topics.get('route') or '-'}",
        f"- mode: {settings['mode']}, model: {settings['model']}"
        + (f", rate: {settings['rate']}" if settings["mode"] == "live" else ""),
        "", "## Results", "", summary_table(report), "",
        "Errors are against the bag's references: the recorded control (steer positive left), the recorded "
        f"future trajectory (ADE/FDE) and the recorded speed {SPEED_HORIZON_S:g} s later (speed MAE).", "",
        "## Problems", "",
    ]
    lines += [f"- {p}" for p in bag["problems"]] or ["none"]
    if gate_markdown:
        lines += ["", "## Regression gate", "", gate_markdown]
    return "\n".join(lines) + "\n"
