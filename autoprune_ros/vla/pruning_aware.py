"""Pruning-aware training: a share of the samples run their prefill pruned exactly as the node prunes it.

Random token dropout (`augment.drop_visual_tokens`) hides tokens from every layer at random; a pruning policy lets
layer 0 see all of them and keeps those its scores pick. A model trained only on the first still loses most of its
driving under the second (models/README.md), so these samples go through the inference path itself
(`VLAPolicy._encode` inside a `PruningSession`, batch 1) with a configuration drawn per sample. The selection is
discrete and carries no gradient; the kept (and recycled) tokens do.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoprune_ros.pruning.config import build_policy
from autoprune_ros.pruning.policies import PruningPolicy
from autoprune_ros.runtime.configs import PolicyConfig, parse_config

from .policy import VLAPolicy


def fixed_budget_configs(texts: Sequence[str]) -> tuple[PolicyConfig, ...]:
    """`<policy>:<tokens>` strings -> configurations; ValueError for `none`, governed or malformed ones."""
    configs = tuple(parse_config(text) for text in texts)
    for text, config in zip(texts, configs, strict=True):
        if config.tokens is None:
            raise ValueError(f"{text!r}: pruning-aware training needs <policy>:<tokens>, e.g. autoprune:22")
    if not configs:
        raise ValueError("no pruning configuration given")
    return configs


@dataclass
class PrunedSamples:
    """Which samples of a batch are pruned: each with `probability`, by a configuration drawn uniformly from
    `configs`; `generator` draws both, so a seeded run reproduces."""

    probability: float
    configs: tuple[PolicyConfig, ...]
    generator: random.Random

    def draw(self, count: int, num_layers: int, num_visual: int) -> list[PruningPolicy | None]:
        """A fresh pruning policy per sample, or None for the samples left unpruned."""
        plans: list[PruningPolicy | None] = []
        for _ in range(count):
            if self.generator.random() >= self.probability:
                plans.append(None)
                continue
            config = self.configs[self.generator.randrange(len(self.configs))]
            plans.append(build_policy({"policy": config.policy, "budget": config.tokens}, num_layers, num_visual))
        return plans


def encode_pruned(policy: VLAPolicy, image: np.ndarray, instruction: str, speed_mps: float, yaw_rate_rps: float,
                  pruning: PruningPolicy) -> torch.Tensor:
    """The final hidden state of one sample's last prompt token with its prefill pruned by `pruning`, with
    gradients: what the node computes for this frame."""
    hidden, _ = policy._encode([image], policy.clean_instruction(instruction), float(speed_mps), pruning=pruning,
                               yaw_rate_rps=float(yaw_rate_rps))
    return hidden
