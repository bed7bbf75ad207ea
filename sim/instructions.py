"""Instruction overrides on top of the route's own commands: "slow down" and "stop" segments over tick ranges.

Shared by the expert recorder (which drives them) and the MetaDrive bridge (which tells the model under test), so
a schedule string means the same in data and in closed loop: "stop:20-45,slow:50-80" (ticks, end exclusive).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

SLOW_DOWN = "slow down"
STOP = "stop"
OVERRIDES = (SLOW_DOWN, STOP)


def command_name(name: str) -> str:
    """The canonical override instruction for a user's name of it ("slow", "slow_down", "stop")."""
    name = name.strip().lower().replace("_", " ")
    aliases = {"slow": SLOW_DOWN, "slow down": SLOW_DOWN, "stop": STOP}
    if name not in aliases:
        raise ValueError(f"unknown instruction {name!r}: use stop or slow down")
    return aliases[name]


@dataclass(frozen=True)
class Segment:
    """An override instruction for ticks [start, end)."""

    instruction: str
    start: int
    end: int


def parse_schedule(text: str) -> list[Segment]:
    """"stop:20-45,slow:50-80": fixed override segments (tick ranges, end exclusive) for every episode."""
    segments = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, span = part.partition(":")
        low, _, high = span.partition("-")
        if not (low.strip().isdigit() and high.strip().isdigit()) or int(high) <= int(low):
            raise ValueError(f"bad schedule entry {part!r}: use instruction:start-end with end > start")
        segments.append(Segment(command_name(name), int(low), int(high)))
    segments.sort(key=lambda s: s.start)
    for a, b in zip(segments, segments[1:], strict=False):
        if b.start < a.end:
            raise ValueError(f"schedule segments overlap: {a} and {b}")
    return segments


class Span(Protocol):
    start: int
    end: int


SpanT = TypeVar("SpanT", bound=Span)


def span_at(spans: Sequence[SpanT], tick: int) -> SpanT | None:
    """The first of `spans` (anything with `start` and `end` ticks, end exclusive) that covers `tick`, else None."""
    return next((span for span in spans if span.start <= tick < span.end), None)


def override_at(segments: list[Segment], tick: int) -> str | None:
    segment = span_at(segments, tick)
    return None if segment is None else segment.instruction
