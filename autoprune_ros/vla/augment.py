"""Training-time augmentation of driving samples: horizontal mirroring, and a per-epoch frame stride.

A mirrored camera frame shows the same road with left and right exchanged, so its targets are the expert's
waypoints with the lateral coordinate negated, and its instruction has "left" and "right" exchanged ("turn left at
the next intersection" becomes "turn right ..."). It doubles the road layouts and cancels any left/right bias of
the recorded routes, but it is off by default: with half the samples mirrored, the bundled recipe's budget was not
enough for the vision tower to learn the road at all (docs/training.md).
"""
from __future__ import annotations

import re

import numpy as np
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
    """The sample seen in a mirror: image flipped left-right, lateral (y) waypoint coordinates negated, "left" and
    "right" exchanged in the instruction; speed and target speed unchanged."""
    image, instruction, speed, waypoints, target_speed = sample
    mirrored = waypoints.clone()
    mirrored[..., 1] = -mirrored[..., 1]
    return np.ascontiguousarray(image[:, ::-1]), mirror_instruction(instruction), speed, mirrored, target_speed


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
