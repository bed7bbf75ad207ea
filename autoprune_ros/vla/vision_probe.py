"""Training-only deep supervision of the visual tokens: a small head that predicts the action targets straight from
the projector's output, so that the vision tower and projector get a direct gradient towards road geometry.

Without it the tiny model trained from scratch learned to ignore the image: its waypoints were the same for every
frame (and for a black one), set by the instruction and the speed in the prompt alone (models/README.md). The probe
is not part of the saved model; the action still comes from the decoder's last hidden state.
"""
from __future__ import annotations

import torch
from torch import nn


class VisionProbe(nn.Module):
    """(B, tokens, hidden) projected visual tokens -> (B, outputs): a per-token linear reduction to `width`
    channels (which keeps where in the image each feature is), then one linear layer over all tokens."""

    def __init__(self, tokens: int, hidden: int, outputs: int, width: int = 8) -> None:
        super().__init__()
        self.tokens = tokens
        self.reduce = nn.Linear(hidden, width)
        self.out = nn.Linear(tokens * width, outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.tokens:
            raise ValueError(f"expected {self.tokens} visual tokens per image, got {features.shape[1]}")
        return self.out(nn.functional.gelu(self.reduce(features)).flatten(1))


class ProjectorTap:
    """Keeps the latest output of a LLaVA model's multi-modal projector (a forward hook), i.e. the visual tokens
    of the last forward pass, shape (images, tokens, hidden). `close()` removes the hook."""

    def __init__(self, llava_model: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = llava_model.multi_modal_projector.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features = output

    def close(self) -> None:
        self._handle.remove()
