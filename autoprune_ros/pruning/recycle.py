"""SparseVLM token recycling as AutoPrune uses it (reference §6.4): DPC-KNN clustering + mean merge.

Of the d pruned tokens, the top m = int(0.3*d)+1 by relevance are clustered into c = min(int(m/10)+1, m) groups
and each group is replaced by the plain mean of its hidden states; the c merged tokens re-enter the sequence.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from autoprune_ros.pruning.schedule import RECYCLE_FRACTION, recycle_sizes
from autoprune_ros.pruning.selection import rank_descending

__all__ = ["DENSITY_NOISE", "dpc_knn_centres", "recycle_tokens"]

DENSITY_NOISE = 1e-6  # U(0, 1e-6) added to the density so that no two tokens tie


def dpc_knn_centres(
    points: torch.Tensor, num_clusters: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN on fp32 ``points`` (m, C): (centre rows ranked by rho*delta, pairwise distance matrix).

    dist_ij = ||x_i - x_j|| / sqrt(C); rho_i = exp(-mean of the squared distances to the c nearest points) +
    U(0, 1e-6), where the c nearest are taken over the whole distance row, so they include the point itself
    (its distance is 0); delta_i = distance to the nearest denser point, or for the densest point the largest
    distance in the matrix; centres = top-c by rho*delta (ties: lower row first).
    """
    m, channels = points.shape
    dist = torch.cdist(points, points) / math.sqrt(channels)
    dist.fill_diagonal_(0.0)
    nearest = torch.topk(dist, k=num_clusters, dim=1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=1))
    noise_device = generator.device if generator is not None else points.device
    noise = torch.rand(m, generator=generator, device=noise_device, dtype=torch.float32).to(points.device)
    density = density + noise * DENSITY_NOISE
    denser = density[None, :] > density[:, None]  # denser[i, j]: j is denser than i
    delta = torch.where(denser, dist, dist.max()).min(dim=1).values
    return rank_descending(density * delta)[:num_clusters], dist


def recycle_tokens(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    *,
    fraction: float = RECYCLE_FRACTION,
    generator: torch.Generator | None = None,
    order: Literal["index", "rank"] = "index",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the pruned tokens' best ``fraction`` into c tokens (reference §6.4).

    ``hidden`` (d, C) are the pruned tokens' hidden states (the layer's outputs), ``scores`` (d,) their relevance.
    Returns (merged (c, C) in ``hidden``'s dtype, centre row indices (c,) into ``hidden``). Work is fp32.
    ``order="index"`` (default) lists clusters by ascending centre row in ``hidden``; ``"rank"`` lists them by
    the DPC-KNN centre score rho*delta, best first. Each token joins its nearest centre (ties: the cluster listed
    first); a centre always joins itself. ``generator`` drives the density noise (pass a seeded one for
    reproducible merges). d = 0 returns empty tensors.
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (pruned tokens, channels), got shape {tuple(hidden.shape)}")
    if scores.shape != hidden.shape[:1]:
        raise ValueError(f"scores has shape {tuple(scores.shape)}, expected ({hidden.shape[0]},)")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if order not in ("index", "rank"):
        raise ValueError(f"order must be 'index' or 'rank', got {order!r}")
    m, c = recycle_sizes(hidden.shape[0], fraction)
    if c == 0:
        return hidden.new_empty((0, hidden.shape[1])), torch.empty(0, dtype=torch.long, device=hidden.device)

    chosen = rank_descending(scores)[:m]  # rows of `hidden`, best score first
    points = hidden[chosen].to(torch.float32)
    centres, dist = dpc_knn_centres(points, c, generator=generator)
    if order == "index":
        centres = centres[torch.argsort(chosen[centres])]

    assignment = dist[:, centres].argmin(dim=1)
    assignment[centres] = torch.arange(c, device=points.device)
    sums = torch.zeros((c, points.shape[1]), dtype=torch.float32, device=points.device).index_add_(
        0, assignment, points)
    sizes = torch.bincount(assignment, minlength=c).to(torch.float32)
    merged = sums / sizes[:, None]
    return merged.to(hidden.dtype), chosen[centres]
