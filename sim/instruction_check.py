"""Does the instruction change what the car does? Compare closed-loop runs with and without a "stop" override.

    autoprune-closed-loop --seeds 1000 1001 --configs none --model tiny_drive --output-dir results/instr/base
    autoprune-closed-loop --seeds 1000 1001 --configs none --model tiny_drive --instruction-schedule stop:100-160 \
        --output-dir results/instr/stop
    python -m autoprune_sim.instruction_check results/instr/base results/instr/stop --window 130-160

For every configuration and seed present in both results.json files, the mean speed over the window (ticks, end
exclusive; by default the last 30 ticks of the override, once the car has had 3 s to react) with and without the
override. Writes instruction_check.json beside the override results and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from autoprune_sim.instructions import parse_schedule


def _runs(folder: Path) -> dict:
    path = folder / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read closed-loop results ({exc}); run autoprune-closed-loop first") from None


def _window_speed(speeds: list[float], start: int, end: int) -> float | None:
    """Mean speed over ticks [start, end); None when the route ended before the window."""
    part = speeds[start:end]
    return float(np.mean(part)) if len(part) == end - start else None


def compare(base: dict, override: dict, start: int, end: int) -> list[dict]:
    rows = []
    for key, run in sorted(override["runs"].items()):
        if key not in base["runs"]:
            continue
        with_override = _window_speed(run["result"]["speeds_mps"], start, end)
        without = _window_speed(base["runs"][key]["result"]["speeds_mps"], start, end)
        rows.append({"run": key, "speed_without_mps": without, "speed_with_mps": with_override,
                     "slowed": None if None in (without, with_override) else with_override < 0.5 * without})
    return rows


def main(argv: list[str] | None = None) -> int:
    from autoprune_ros.cli import markdown_table, write_json

    parser = argparse.ArgumentParser(prog="python -m autoprune_sim.instruction_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="results folder of the runs without an override")
    parser.add_argument("override", type=Path, help="results folder of the runs with --instruction-schedule")
    parser.add_argument("--window", default=None,
                        help="ticks start-end (end exclusive) to average speed over (default: the last 30 ticks of "
                        "the first override segment)")
    args = parser.parse_args(argv)
    try:
        base, override = _runs(args.base), _runs(args.override)
        if args.window:
            low, _, high = args.window.partition("-")
            if not (low.isdigit() and high.isdigit()) or int(high) <= int(low):
                raise ValueError(f"bad --window {args.window!r}: use start-end in ticks with end > start")
            start, end = int(low), int(high)
        else:
            segments = parse_schedule(override.get("instruction_schedule", ""))
            if not segments:
                raise ValueError(f"{args.override}/results.json has no instruction_schedule: pass --window")
            start, end = max(segments[0].start, segments[0].end - 30), segments[0].end
    except ValueError as exc:
        print(f"instruction_check: {exc}", file=sys.stderr)
        return 2
    rows = compare(base, override, start, end)
    write_json(args.override / "instruction_check.json", {"window": [start, end], "schedule":
                                                          override.get("instruction_schedule"), "runs": rows})

    def fmt(value):
        return "-" if value is None else f"{value:.2f}"

    print(markdown_table(["run", f"mean speed ticks {start}-{end} m/s, route commands", "with the override",
                          "slowed below half"], [[r["run"], fmt(r["speed_without_mps"]), fmt(r["speed_with_mps"]),
                                                  {True: "yes", False: "no", None: "-"}[r["slowed"]]] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
