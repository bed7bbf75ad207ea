"""The text encoding of /autoprune/frame_stats values that readers rely on: the frame's stamp as "sec.nanosec"
and the kept visual tokens per decoder layer as space-separated integers. Pure Python, so the simulator
environment's bridge can read the stats with the same code as the node writes them."""
from __future__ import annotations

NS_PER_S = 1_000_000_000


def format_stamp(stamp_ns: int) -> str:
    """A stamp in nanoseconds as the "stamp" value: "sec.nanosec" with nine nanosecond digits."""
    return f"{stamp_ns // NS_PER_S}.{stamp_ns % NS_PER_S:09d}"


def stamp_ns(values: dict[str, str]) -> int | None:
    """The frame's stamp in nanoseconds from a stats message's values; None if absent or malformed."""
    sec, _, nsec = values.get("stamp", "").partition(".")
    return int(sec) * NS_PER_S + int(nsec) if sec.isdigit() and nsec.isdigit() else None


def kept_tokens(values: dict[str, str]) -> list[int]:
    """Visual tokens kept per decoder layer (empty when the frame reported none)."""
    return [int(n) for n in values.get("kept_tokens_per_layer", "").split()]


def mean_kept(values: dict[str, str]) -> float:
    """Mean visual tokens kept per decoder layer in one frame; all visual tokens when none were reported."""
    kept = kept_tokens(values)
    return sum(kept) / len(kept) if kept else float(values["visual_tokens"])
