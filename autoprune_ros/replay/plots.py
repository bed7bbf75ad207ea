"""Plots of a replay report (matplotlib, Agg: no display needed), drawn from the report.json document alone so
that they can be redrawn from a saved report."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoprune_ros.replay.report import SPEED_HORIZON_S

FILES = {"tokens": "tokens.png", "latency": "latency.png", "actions": "actions.png"}


def _time_axis(report: Mapping[str, Any]) -> tuple[int, str]:
    stamps = [f["stamp_ns"] for run in report["configs"].values() for f in run["frames"]]
    stamps += [row["stamp_ns"] for row in report["reference"]]
    return (min(stamps) if stamps else 0), "time from the first frame (s)"


def _series(frames: list[dict[str, Any]], key, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """(t s, values) of the ok frames where `key(frame)` is not None."""
    points = [((f["stamp_ns"] - origin) * 1e-9, key(f)) for f in frames if f["status"] == "ok"]
    points = [(t, v) for t, v in points if v is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    t, v = zip(*points, strict=True)
    return np.asarray(t), np.asarray(v, dtype=np.float64)


def _mean_kept(frame: dict[str, Any]) -> float | None:
    kept = frame.get("kept_tokens_per_layer")
    return float(np.mean(kept)) if kept else None


def _traces(ax, report, key, origin: int, ylabel: str, reference_key: str | None, reference_label: str) -> None:
    for name, run in report["configs"].items():
        t, v = _series(run["frames"], key, origin)
        if t.size:
            ax.plot(t, v, label=name, linewidth=1)
    if reference_key is not None:
        rows = [((r["stamp_ns"] - origin) * 1e-9, r[reference_key]) for r in report["reference"]
                if r[reference_key] is not None]
        if rows:
            t, v = zip(*rows, strict=True)
            ax.plot(t, v, "k--", label=reference_label, linewidth=1)
    ax.set_ylabel(ylabel)
    if ax.get_lines():
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def write_plots(report: Mapping[str, Any], output_dir: str | Path) -> list[Path]:
    """tokens.png (complexity and mean kept tokens per frame), latency.png (latency histogram) and actions.png
    (steer and target speed against the bag's reference) in `output_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    origin, xlabel = _time_axis(report)
    paths = []

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    _traces(top, report, lambda f: f.get("complexity"), origin, "complexity (text-vision MI)", None, "")
    _traces(bottom, report, _mean_kept, origin, "mean kept visual tokens / layer", None, "")
    bottom.set_xlabel(xlabel)
    fig.suptitle("complexity and kept tokens per frame")
    paths.append(_save(fig, output_dir / FILES["tokens"]))

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, run in report["configs"].items():
        _, latency = _series(run["frames"], lambda f: f.get("latency_ms"), origin)
        if latency.size:
            ax.hist(latency, bins=min(40, max(5, latency.size // 2)), alpha=0.5, label=name)
    ax.set_xlabel("frame latency (ms)")
    ax.set_ylabel("frames")
    if ax.patches:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("latency")
    paths.append(_save(fig, output_dir / FILES["latency"]))

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    _traces(top, report, lambda f: f.get("steer"), origin, "steer (positive left)", "steer", "recorded control")
    _traces(bottom, report, lambda f: f.get("target_speed"), origin, "target speed (m/s)", "speed_future",
            f"recorded speed {SPEED_HORIZON_S:g} s later")
    bottom.set_xlabel(xlabel)
    fig.suptitle("actions against the bag's reference")
    paths.append(_save(fig, output_dir / FILES["actions"]))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
