"""Regression head: the decoder's last-token hidden state -> future waypoints and a target speed."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus


class ActionHead(nn.Module):
    """MLP from the final-norm hidden state of the last prompt token to N (x, y) waypoints and a target speed.

    Waypoints are cumulative sums of per-step displacements whose forward part goes through softplus, so x is
    positive and increasing, and the speed goes through softplus: even random weights give a physically
    plausible forward trajectory at a non-negative speed.
    """

    def __init__(self, input_size: int, num_waypoints: int, hidden_size: int = 256) -> None:
        super().__init__()
        if min(input_size, num_waypoints, hidden_size) < 1:
            raise ValueError(
                f"ActionHead sizes must be >= 1, got input_size={input_size}, num_waypoints={num_waypoints}, "
                f"hidden_size={hidden_size}"
            )
        self.num_waypoints = num_waypoints
        self.mlp = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, 2 * num_waypoints + 1),
        )

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden` (..., input_size) -> (waypoints (..., N, 2) in metres, target speed (...) in m/s)."""
        out = self.mlp(hidden)
        steps = out[..., :-1].unflatten(-1, (self.num_waypoints, 2))
        forward_steps = softplus(steps[..., 0])
        waypoints = torch.stack((forward_steps.cumsum(-1), steps[..., 1].cumsum(-1)), dim=-1)
        return waypoints, softplus(out[..., -1])
