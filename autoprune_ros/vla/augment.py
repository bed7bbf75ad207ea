"""Training-time augmentation of driving samples: horizontal mirroring, a per-epoch frame stride, instruction-
balanced sampling weights and visual-token dropout.

A mirrored camera frame shows the same road with left and right exchanged, so its targets are the expert's waypoints
with the lateral coordinate negated, its yaw rate is negated, and its instruction has "left" and "right" exchanged
("turn left at the next intersection" becomes "turn right ..."). It doubles the road layouts and cancels any
left/right bias of the recorded routes, but it is off by default: with half the samples mirrored, the bundled
recipe's budget was not enough for the vision tower to learn the road at all (docs/training.md).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .dataset import Sample

_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left"}


def _swap_side(match: re.Match[str]) -> str:
    word = match.group(0)
    other = _OTHER_SIDE[word.lower()]
    return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other


def mirror_instruction(text: str) -> str:
    """`text` with the words "left" and "right" exchanged (case kept)."""
    return _SIDES.sub(_swap_side, text)


def mirror_sample(sample: Sample) -> Sample:
    """The sample seen in a mirror: image flipped left-right, yaw rate and the lateral (y) coordinates of the
    waypoints, the route points and the route line negated, "left" and "right" exchanged in the instruction;
    speed and target speed unchanged."""
    mirrored = sample.waypoints.clone()
    mirrored[..., 1] = -mirrored[..., 1]
    return sample._replace(image=np.ascontiguousarray(sample.image[:, ::-1]),
                           instruction=mirror_instruction(sample.instruction), yaw_rate=-sample.yaw_rate,
                           waypoints=mirrored, route=_mirrored_points(sample.route),
                           route_line=_mirrored_points(sample.route_line))


def _mirrored_points(points: np.ndarray | None) -> np.ndarray | None:
    return None if points is None else points * np.array([1.0, -1.0], dtype=points.dtype)


class Mirrored(Dataset):
    """`dataset` with each sample mirrored with probability `probability`. Whether sample i is mirrored in an epoch
    is drawn from a generator seeded with (seed, epoch, i), so a run is reproducible whatever order the loader
    visits the samples in; call `set_epoch` before each epoch for a fresh draw."""

    def __init__(self, dataset: Dataset, probability: float, seed: int) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"mirror probability must be in [0, 1], got {probability}")
        self.dataset = dataset
        self.probability = probability
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def mirrored(self, i: int) -> bool:
        """Whether sample `i` is mirrored in the current epoch."""
        if self.probability <= 0.0:
            return False
        return bool(np.random.default_rng((self.seed, self.epoch, i)).random() < self.probability)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Sample:
        sample = self.dataset[i]
        return mirror_sample(sample) if self.mirrored(i) else sample


def _stride_indices(length: int, stride: int, epoch: int) -> range:
    return range((epoch - 1) % stride, length, stride)


def stride_subset(dataset: Dataset, stride: int, epoch: int) -> Dataset:
    """The samples of `dataset` that epoch `epoch` (1-based) trains on: every `stride`-th one, starting at offset
    (epoch - 1) mod stride, so consecutive epochs see different, near-duplicate-free frames of the 10 Hz episodes
    and `stride` epochs cover the whole set once. Stride 1 is the whole dataset."""
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    if stride == 1:
        return dataset
    return Subset(dataset, list(_stride_indices(len(dataset), stride, epoch)))  # type: ignore[arg-type]


def stride_lengths(length: int, stride: int, epochs: int) -> list[int]:
    """Number of samples each of `epochs` epochs trains on with `stride_subset` over `length` samples."""
    return [len(_stride_indices(length, stride, e)) for e in range(1, epochs + 1)]


def instruction_weights(instructions: Sequence[str], alpha: float) -> np.ndarray:
    """Sampling weight per sample, proportional to count(its instruction) ** -alpha and summing to 1: alpha 0 is
    uniform, 1 draws every instruction equally often, in between (0.5: square root) lifts the rare ones (turns,
    "stop") without repeating their few frames as often as full balance would."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"instruction balance must be in [0, 1], got {alpha}")
    if not instructions:
        return np.zeros(0)
    counts = Counter(instructions)
    weights = np.array([counts[text] ** -alpha for text in instructions], dtype=np.float64)
    return weights / weights.sum()


def drop_visual_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                       probability: float, keep_min: float, generator: torch.Generator) -> torch.Tensor:
    """`attention_mask` (B, L) with, in a random `probability` share of the samples, all but a random subset of
    the visual tokens masked out: each such sample keeps a fraction drawn uniformly from [keep_min, 1] of its
    visual tokens (at least one), chosen uniformly. Text tokens are never touched and positions are unchanged, as
    in a pruned prefill that keeps the original positions (which, unlike this, keeps every token in its first
    layers)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"visual dropout probability must be in [0, 1], got {probability}")
    if not 0.0 < keep_min <= 1.0:
        raise ValueError(f"visual keep minimum must be in (0, 1], got {keep_min}")
    mask = attention_mask.clone()
    if probability == 0.0:
        return mask
    for row in range(input_ids.shape[0]):
        draw = torch.rand(2, generator=generator)
        if draw[0] >= probability:
            continue
        visual = (input_ids[row] == image_token_id).nonzero().flatten()
        if visual.numel() == 0:
            continue
        keep = max(1, round(float(keep_min + (1.0 - keep_min) * draw[1]) * visual.numel()))
        order = torch.randperm(visual.numel(), generator=generator)
        mask[row, visual[order[keep:]].to(mask.device)] = 0
    return mask
