"""Sample complexity: pseudo mutual information of text->visual attention, and the slope it sets (reference §4-§5).

The attention given here is the post-softmax causal attention of the text rows over the visual columns,
``(H, Tx, V)``, NOT renormalised over the visual columns (so each row sums to the visual attention mass < 1).
"""
from __future__ import annotations

import math

import torch

__all__ = ["MI_EPS", "layer0_mi", "layer1_mi", "pseudo_mutual_information", "slope_from_mi"]

MI_EPS = 1e-6  # both the clamp and the denominator, reference §4.3


def _check_attention(attn: torch.Tensor) -> None:
    if not isinstance(attn, torch.Tensor) or attn.dim() != 3:
        raise ValueError(f"attention must be a (heads, text, visual) tensor, got shape "
                         f"{tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__}")
    if attn.shape[1] == 0:
        raise ValueError("attention has no text rows (Tx = 0); the pseudo-MI needs at least one")


def pseudo_mutual_information(attn: torch.Tensor) -> torch.Tensor:
    """Per-head pseudo-MI (reference §4.3), in fp32 whatever the input dtype; returns shape (H,).

    p(t,v) = a[t,v]/Tx (uniform prior over text rows), p(v) = sum_t p(t,v),
    MI_h = sum_{t,v} p(t,v) * log2(max(p(t,v) / (p(v)/Tx + 1e-6), 1e-6)).
    """
    _check_attention(attn)
    tx = attn.shape[1]
    joint = attn.to(torch.float32) / tx
    marginal = joint.sum(dim=1, keepdim=True)
    ratio = joint / (marginal / tx + MI_EPS)
    return (joint * torch.log2(ratio.clamp_min(MI_EPS))).sum(dim=(1, 2))


def layer0_mi(attn: torch.Tensor) -> float:
    """MI0 = sum_h MI_h / Tx: at layer 0 the head sum is divided by the number of text tokens (reference §4.4)."""
    return float(pseudo_mutual_information(attn).sum()) / attn.shape[1]


def layer1_mi(attn: torch.Tensor) -> float:
    """MI1 = sum_h MI_h, not divided by Tx (reference §5.2); it sets the slope."""
    return float(pseudo_mutual_information(attn).sum())


def slope_from_mi(mi1: float, k0: float = 0.4, gamma: float = 0.2) -> float:
    """Slope k = max(k0 - gamma*MI1, 0) (mode ``linear``, reference §5.3): k = 0 once MI1 >= k0/gamma."""
    for name, value in (("mi1", mi1), ("k0", k0), ("gamma", gamma)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    return max(k0 - gamma * mi1, 0.0)
