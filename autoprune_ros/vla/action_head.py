"""Regression head: the decoder's last-token hidden state -> future waypoints and a target speed."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus


class ActionHead(nn.Module):
    """MLP from the final-norm hidden state of the last prompt token to N (x, y) waypoints and a target speed; with
    `route_size` > 0, a linear route branch (`route`) adds the route features of vla/route.py to its hidden layer.

    Waypoints are cumulative sums of per-step displacements whose forward part goes through softplus, so x is
    positive and increasing, and the speed goes through softplus: even random weights give a physically
    plausible forward trajectory at a non-negative speed.
    """

    def __init__(self, input_size: int, num_waypoints: int, hidden_size: int = 256, route_size: int = 0) -> None:
        super().__init__()
        if min(input_size, num_waypoints, hidden_size) < 1 or route_size < 0:
            raise ValueError(
                f"ActionHead sizes must be >= 1 (route_size >= 0), got input_size={input_size}, num_waypoints="
                f"{num_waypoints}, hidden_size={hidden_size}, route_size={route_size}"
            )
        self.num_waypoints = num_waypoints
        self.route_size = route_size
        self.mlp = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, 2 * num_waypoints + 1),
        )
        # A branch of its own (not extra columns of mlp[0]) so that training can give it its own learning rate.
        self.route = nn.Linear(route_size, hidden_size, bias=False) if route_size else None

    def with_route_input(self, route_size: int) -> ActionHead:
        """A copy that also reads `route_size` route features through a route branch with zero weights: it predicts
        what this head predicts until training teaches it to use the route (fine-tuning a model without one)."""
        if self.route_size:
            raise ValueError(f"this head already reads {self.route_size} route features")
        first = self.mlp[0]
        wider = ActionHead(first.in_features, self.num_waypoints, first.out_features, route_size)
        wider.mlp.load_state_dict(self.mlp.state_dict())
        with torch.no_grad():
            wider.route.weight.zero_()
        return wider.to(first.weight.device)

    def forward(self, hidden: torch.Tensor, route: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden` (..., input_size) and, for a head with route inputs, `route` (..., route_size) (None: zeros, no
        route) -> (waypoints (..., N, 2) in metres, target speed (...) in m/s)."""
        layer = self.mlp[0](hidden)
        if self.route is not None and route is not None:  # no route: zero features, nothing to add
            layer = layer + self.route(route.to(layer.dtype))
        out = self.mlp[2](self.mlp[1](layer))
        steps = out[..., :-1].unflatten(-1, (self.num_waypoints, 2))
        forward_steps = softplus(steps[..., 0])
        waypoints = torch.stack((forward_steps.cumsum(-1), steps[..., 1].cumsum(-1)), dim=-1)
        return waypoints, softplus(out[..., -1])
