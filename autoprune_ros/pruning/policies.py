"""Pruning policies: what to keep after each decoder layer of a prefill, independent of any model library.

A model adapter (autoprune_ros.vla.prefill) runs the prefill and, after each decoder layer l, asks the policy
`wants(l)` which attention rows it needs, computes only those rows, and calls `decide(view)`. The policy answers
with the visual tokens to keep (indices into the current visual tokens, ascending) and, for token recycling,
merged tokens to append after them. Counts are "visual tokens after pruning at layer l", the convention of
`plan_token_counts`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import torch

from autoprune_ros.pruning.complexity import layer0_mi, layer1_mi, slope_from_mi
from autoprune_ros.pruning.recycle import recycle_tokens
from autoprune_ros.pruning.schedule import SchedulePlan, keep_count, layer0_keep, plan_schedule, recycled_count
from autoprune_ros.pruning.selection import layer0_scores, split_kept_pruned, text_relevance, top_k_in_order


class Rows(Enum):
    """Which attention rows a policy needs at a layer (probabilities over all keys, per head)."""

    TEXT = "text"  # every instruction token after the visual block (AutoPrune)
    LAST = "last"  # the last prompt token (FastV, PDrop)


@dataclass(frozen=True)
class Need:
    """A request for attention rows. `lookahead`: from the next layer's norm and q/k on this layer's output
    (PDrop), instead of this layer's own attention (AutoPrune, FastV)."""

    rows: Rows
    lookahead: bool = False


@dataclass
class LayerView:
    """What the adapter knows after decoder layer `layer` (batch 1)."""

    layer: int
    num_layers: int
    visual_attention: torch.Tensor | None  # (H, rows, V) requested rows, visual columns only; None if not requested
    visual_hidden: torch.Tensor  # (V, C) this layer's output for the current visual tokens
    cls_attention: torch.Tensor | None = None  # (V,) vision-tower [CLS] attention, layer 0 only, when available


@dataclass
class Decision:
    """Keep `keep` (ascending indices into the current visual tokens); append `merged` (c, C) after them, each
    merged token taking the position of the current visual token `merged_sources[i]`."""

    keep: torch.Tensor
    merged: torch.Tensor | None = None
    merged_sources: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.keep.numel()) + (0 if self.merged is None else int(self.merged.shape[0]))


class PruningPolicy:
    """Base class: keeps everything. Subclasses override `wants`, `decide` and `planned_count`."""

    name = "none"

    def begin(self, num_layers: int, num_visual: int) -> None:
        """Called at the start of every prefill."""
        self.num_layers, self.num_visual = num_layers, num_visual
        self.stats: dict = {}

    def wants(self, layer: int) -> Need | None:
        """Rows needed after `layer`; None when nothing is pruned there."""
        return None

    def decide(self, view: LayerView) -> Decision | None:
        """None keeps every current visual token."""
        return None

    def planned_count(self, layer: int, current: int) -> int:
        """Count after pruning at `layer` where no decision runs (last layer, count-only bookkeeping)."""
        return current

    def describe(self) -> dict:
        return {"policy": self.name}


class NoPrune(PruningPolicy):
    """The stock model: no hook changes anything, logits equal unpruned transformers."""


def _check_budget(budget: float, name: str) -> None:
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"{name}: budget must be a positive number of visual tokens, got {budget!r}")


@dataclass
class AutoPrune(PruningPolicy):
    """AutoPrune (arXiv 2509.23931) as its authors implement it (reference §4-6).

    Layer 0: hybrid score (vision [CLS] attention + 0.3·MI0·text attention), keep K0 = min(int(2.5·T), Nv).
    Layer 1: MI1 -> slope k = max(k0 - γ·MI1, 0) -> logistic retention curve scaled so that the mean count over
    layers equals the budget T. Layers 1..L-1: keep the top tokens by text attention; recycle the top 30% of the
    pruned ones by DPC-KNN merging (on in faithful mode).
    """

    budget: float
    x0: float = 14.9
    k0: float = 0.4
    gamma: float = 0.2
    amplitude: float = 0.75
    recycle: bool = True
    seed: int = 0
    name: str = field(default="autoprune", init=False)

    def __post_init__(self) -> None:
        _check_budget(self.budget, "AutoPrune")
        for key in ("k0", "gamma", "amplitude"):
            if getattr(self, key) < 0:
                raise ValueError(f"AutoPrune: {key} must be >= 0, got {getattr(self, key)}")

    def begin(self, num_layers: int, num_visual: int) -> None:
        super().begin(num_layers, num_visual)
        if self.budget > num_visual:
            raise ValueError(f"AutoPrune: budget T={self.budget} is above the visual-token count Nv={num_visual}")
        self.k0_keep = layer0_keep(num_visual, self.budget)
        self.plan: SchedulePlan | None = None
        self.generator = torch.Generator().manual_seed(self.seed)

    def wants(self, layer: int) -> Need | None:
        return Need(Rows.TEXT) if layer < self.num_layers - 1 else None

    def decide(self, view: LayerView) -> Decision | None:
        attn = view.visual_attention
        if view.layer == 0:
            mi0 = layer0_mi(attn)
            scores = layer0_scores(view.cls_attention, attn, mi0)
            self.stats["mutual_information_layer0"] = mi0
            return Decision(top_k_in_order(scores, self.k0_keep))
        if view.layer == 1:
            mi1 = layer1_mi(attn)
            slope = slope_from_mi(mi1, self.k0, self.gamma)
            self.plan = plan_schedule(self.num_layers, self.num_visual, self.budget, slope, x0=self.x0,
                                      amplitude=self.amplitude, recycle=self.recycle)
            self.stats.update(mutual_information=mi1, slope=slope, planned_counts=list(self.plan.counts))
        current = attn.shape[-1]
        n_keep = self._keep_count(view.layer, current)
        if n_keep >= current:
            return None
        scores = text_relevance(attn)
        kept, pruned = split_kept_pruned(scores, n_keep)
        if not self.recycle:
            return Decision(kept)
        # Clusters in the order DPC-KNN ranks their centres (rho*delta), as cluster ids are usually numbered
        # (inferred: the reference leaves the order open; under compact positions it sets their RoPE positions).
        merged, centres = recycle_tokens(view.visual_hidden[pruned], scores[pruned], generator=self.generator,
                                         order="rank")
        return Decision(kept, merged, pruned[centres])

    def _keep_count(self, layer: int, current: int) -> int:
        r = self.plan.keep_fractions[layer]
        # The authors apply the unclipped fraction; without recycling the plan clips it at 1 (reference §5.5).
        return keep_count(self.k0_keep, r if self.recycle else min(1.0, r), current)

    def planned_count(self, layer: int, current: int) -> int:
        if layer == 0 or self.plan is None:
            return current
        n_keep = self._keep_count(layer, current)
        return n_keep + (recycled_count(current - n_keep) if self.recycle else 0)

    def describe(self) -> dict:
        return {"policy": self.name, "budget": self.budget, "x0": self.x0, "k0": self.k0, "gamma": self.gamma,
                "recycle": self.recycle}


@dataclass
class FastV(PruningPolicy):
    """FastV (ECCV'24): after layer K-1, keep the `keep` visual tokens the last token attends to most, for all
    later layers (reference §13). `FastV.for_budget` sets `keep` so the mean count per layer equals a budget."""

    layer: int = 2
    keep: int = 288
    name: str = field(default="fastv", init=False)

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"FastV: layer K must be >= 1 (it prunes after layer K-1), got {self.layer}")
        if self.keep < 0:
            raise ValueError(f"FastV: keep must be >= 0, got {self.keep}")

    @classmethod
    def for_budget(cls, budget: float, num_layers: int, num_visual: int, layer: int = 2) -> FastV:
        """Counts are Nv for layers 0..K-2 and `keep` from layer K-1 on: solve their mean = budget. When the
        first K-1 full layers alone exceed the budget (shallow decoders, small budgets), K moves earlier."""
        _check_budget(budget, "FastV")
        if budget > num_visual:
            raise ValueError(f"FastV: budget T={budget} is above the visual-token count Nv={num_visual}")
        for k in range(min(layer, num_layers), 0, -1):
            keep = (num_layers * budget - (k - 1) * num_visual) / (num_layers - k + 1)
            if keep >= 0:
                return cls(layer=k, keep=min(num_visual, round(keep)))
        raise AssertionError("unreachable: K = 1 meets every budget in (0, Nv]")

    def wants(self, layer: int) -> Need | None:
        return Need(Rows.LAST) if layer == self.layer - 1 else None

    def decide(self, view: LayerView) -> Decision | None:
        current = view.visual_attention.shape[-1]
        if self.keep >= current:
            return None
        return Decision(top_k_in_order(text_relevance(view.visual_attention), self.keep))

    def describe(self) -> dict:
        return {"policy": self.name, "layer": self.layer, "keep": self.keep}


@dataclass
class PDrop(PruningPolicy):
    """PyramidDrop (CVPR'25): at each stage boundary b in `stage_layers`, score the visual tokens with the
    last token's attention computed from layer b's norm and q/k on layer b-1's output, and keep
    int(Nv·ratio^stage) of them (reference §13). `PDrop.for_budget` solves the ratio for a mean budget."""

    stage_layers: tuple[int, ...] = (8, 16, 24)
    ratio: float = 0.5
    name: str = field(default="pdrop", init=False)

    def __post_init__(self) -> None:
        self.stage_layers = tuple(self.stage_layers)
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"PDrop: ratio must be in (0, 1], got {self.ratio}")
        if list(self.stage_layers) != sorted(set(self.stage_layers)) or min(self.stage_layers, default=1) < 1:
            raise ValueError(f"PDrop: stage_layers must be increasing layer indices >= 1, got {self.stage_layers}")

    @staticmethod
    def default_stages(num_layers: int) -> tuple[int, ...]:
        """[8, 16, 24] for 32 layers, the same quarters for other depths."""
        return tuple(sorted({max(1, round(num_layers * q / 4)) for q in (1, 2, 3)} - {num_layers}))

    @staticmethod
    def counts(num_layers: int, num_visual: int, stage_layers: tuple[int, ...], ratio: float) -> list[int]:
        """Visual tokens after pruning at each layer: stage s keeps int(Nv·ratio^s) from layer b_s - 1 on."""
        counts, stage = [], 0
        for layer in range(num_layers):
            while stage < len(stage_layers) and layer >= stage_layers[stage] - 1:
                stage += 1
            counts.append(int(num_visual * ratio**stage))
        return counts

    @classmethod
    def candidate_stages(cls, num_layers: int) -> list[tuple[int, ...]]:
        """Stage layouts tried by `for_budget`, in order: PDrop's quarters, then a first drop after layer 1 or 0
        (the quarters keep every token for L/4 layers, so they cannot reach budgets below about Nv/4)."""
        quarters = cls.default_stages(num_layers)
        early = [tuple(sorted({first, *quarters[1:]})) for first in (2, 1)]
        return [quarters, *[stages for stages in early if stages != quarters]]

    @classmethod
    def for_budget(cls, budget: float, num_layers: int, num_visual: int,
                   stage_layers: tuple[int, ...] | None = None) -> PDrop:
        """Bisect the per-stage ratio so the mean count over layers is as close as possible to `budget`; without
        `stage_layers`, the first layout of `candidate_stages` that can reach the budget."""
        _check_budget(budget, "PDrop")
        if budget > num_visual:
            raise ValueError(f"PDrop: budget T={budget} is above the visual-token count Nv={num_visual}")
        layouts = [tuple(stage_layers)] if stage_layers is not None else cls.candidate_stages(num_layers)

        def mean(stages: tuple[int, ...], ratio: float) -> float:
            return sum(cls.counts(num_layers, num_visual, stages, ratio)) / num_layers

        stages = next((layout for layout in layouts if mean(layout, 0.0) <= budget), None)
        if stages is None:
            raise ValueError(f"PDrop: budget {budget} is below what stages {layouts[-1]} can reach; move the first "
                             "stage earlier")
        lo, hi, best = 0.0, 1.0, (float("inf"), 1.0)
        for _ in range(60):
            mid = (lo + hi) / 2
            err = mean(stages, mid) - budget
            best = min(best, (abs(err), mid))
            lo, hi = (mid, hi) if err < 0 else (lo, mid)
        return cls(stage_layers=stages, ratio=max(best[1], 1e-6))

    def begin(self, num_layers: int, num_visual: int) -> None:
        super().begin(num_layers, num_visual)
        if max(self.stage_layers, default=0) >= num_layers:
            raise ValueError(f"PDrop: stage layer {max(self.stage_layers)} is outside a {num_layers}-layer decoder")
        self.target = self.counts(num_layers, num_visual, self.stage_layers, self.ratio)

    def wants(self, layer: int) -> Need | None:
        return Need(Rows.LAST, lookahead=True) if layer + 1 in self.stage_layers else None

    def decide(self, view: LayerView) -> Decision | None:
        current = view.visual_attention.shape[-1]
        keep = self.target[view.layer]
        if keep >= current:
            return None
        return Decision(top_k_in_order(text_relevance(view.visual_attention), keep))

    def describe(self) -> dict:
        return {"policy": self.name, "stage_layers": list(self.stage_layers), "ratio": self.ratio}
