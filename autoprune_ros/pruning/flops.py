"""Prefill FLOPs as the authors count them (reference §10): decoder layers only, prefill only.

Per layer, with n the sequence length entering it: 4*n*d^2 (q, k, v, o projections) + 2*n^2*d (scores and
weighted sum) + 3*n*d*m (gated FFN). Vision tower, projector, LM head and decode are not counted. Python ints,
so there is no overflow.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

__all__ = ["layer_flops", "prefill_flops", "sequence_lengths", "visual_counts_entering"]


def _non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def layer_flops(seq_len: int, hidden_size: int, intermediate_size: int) -> int:
    """FLOPs of one decoder layer on ``seq_len`` tokens: 4*n*d^2 + 2*n^2*d + 3*n*d*m (reference §10)."""
    n = _non_negative_int("sequence length", seq_len)
    d = _non_negative_int("hidden_size", hidden_size)
    m = _non_negative_int("intermediate_size", intermediate_size)
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def prefill_flops(seq_lens: Sequence[int], hidden_size: int, intermediate_size: int) -> int:
    """Prefill FLOPs summed over layers; ``seq_lens[l]`` is the sequence length entering layer l."""
    return sum(layer_flops(n, hidden_size, intermediate_size) for n in seq_lens)


def visual_counts_entering(num_visual: int, counts_after: Sequence[int]) -> list[int]:
    """Visual tokens entering each layer: Nv at layer 0, then the count after layer l-1's pruning.

    ``counts_after`` is the per-layer count after pruning (e.g. ``plan_token_counts``); the last entry only
    affects the average, not any layer's input (reference §6.5).
    """
    return [_non_negative_int("num_visual", num_visual), *counts_after[:-1]] if counts_after else []


def sequence_lengths(pre: int, text: int, visual_counts_in: Sequence[int]) -> list[int]:
    """n_l = pre-prompt + visual tokens entering layer l + text (pre-prompt and text are never pruned)."""
    pre = _non_negative_int("pre", pre)
    text = _non_negative_int("text", text)
    return [pre + _non_negative_int("visual count", v) + text for v in visual_counts_in]
