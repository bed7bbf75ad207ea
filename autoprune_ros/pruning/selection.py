"""Token scoring and top-k selection for AutoPrune (reference §4.5-4.7, §6.2-6.3).

Ranking is deterministic: scores are compared in fp32, ties go to the lower index (a stable descending sort),
and NaN scores rank below every number (-inf) so a faulty attention row cannot pick tokens.
"""
from __future__ import annotations

import torch

__all__ = ["TEXT_WEIGHT", "layer0_scores", "rank_descending", "split_kept_pruned", "text_relevance",
           "top_k_in_order"]

TEXT_WEIGHT = 0.3  # weight of the text term in the layer-0 score, reference §4.6


def text_relevance(attn: torch.Tensor) -> torch.Tensor:
    """s_text[v] = mean over heads and text rows of attn (H, Tx, V) -> (V,) fp32 (reference §4.5, §6.2)."""
    if not isinstance(attn, torch.Tensor) or attn.dim() != 3:
        raise ValueError(f"attention must be a (heads, text, visual) tensor, got "
                         f"{tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__}")
    if attn.shape[0] == 0 or attn.shape[1] == 0:
        raise ValueError(f"attention needs at least one head and one text row, got shape {tuple(attn.shape)}")
    return attn.to(torch.float32).mean(dim=(0, 1))


def layer0_scores(cls_attention: torch.Tensor | None, text_attn: torch.Tensor, mi0: float,
                  text_weight: float = TEXT_WEIGHT) -> torch.Tensor:
    """Hybrid layer-0 score c[v] + 0.3*MI0*s_text[v] (reference §4.6); no [CLS] attention -> c = 0. fp32, (V,)."""
    relevance = text_relevance(text_attn)
    score = (text_weight * mi0) * relevance
    if cls_attention is None:
        return score
    if cls_attention.shape != relevance.shape:
        raise ValueError(f"[CLS] attention has shape {tuple(cls_attention.shape)}, expected "
                         f"{tuple(relevance.shape)} (one value per visual token)")
    return cls_attention.to(device=score.device, dtype=torch.float32) + score


def rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices of a 1-D score vector from best to worst; ties keep the lower index first, NaN ranks last."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    key = torch.nan_to_num(scores.to(torch.float32), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    return torch.sort(key, descending=True, stable=True).indices


def top_k_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the top-k scores in ascending (original) order; k is clipped to [0, len(scores)]."""
    return split_kept_pruned(scores, k)[0]


def split_kept_pruned(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices in ascending order, pruned indices from best to worst score) for a keep count k."""
    ranked = rank_descending(scores)
    k = max(0, min(int(k), ranked.numel()))
    return torch.sort(ranked[:k]).values, ranked[k:]
