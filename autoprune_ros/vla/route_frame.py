"""Waypoints in the route's frame: the action head of a model with `action_head.waypoint_frame: route` predicts, per
waypoint, how far along the route the car will be (s) and how far left of it (d), instead of ego-frame (x, y).

Where the road goes is then the route's business and what the car does on it (speed, stopping, keeping off the
line, getting back onto the lane) the model's: a turn starts where the route turns, not where the camera first
shows a junction. Laid along the route line of vla/route.py (sampled every ROUTE_LINE_STEP_M from the ego's
projection, ego frame), (s, d) becomes the ego-frame point line(s) + d * left normal(s). Without a route the line
is the ego's x axis, so (s, d) is (x, y): the model drives from the camera alone exactly as an ego-frame head does.
Torch and differentiable in (s, d): training computes its loss on the ego-frame points, as for an ego-frame head.
"""
from __future__ import annotations

import numpy as np
import torch

from .route import ROUTE_LINE_POINTS, ROUTE_LINE_STEP_M


def straight_line(count: int = ROUTE_LINE_POINTS, step: float = ROUTE_LINE_STEP_M) -> np.ndarray:
    """The route line of no route: the ego's x axis ((count, 2), every `step` metres from the origin)."""
    return np.stack((step * np.arange(count), np.zeros(count)), axis=-1)


def along_route(frame_points: torch.Tensor, lines: torch.Tensor | None,
                step: float = ROUTE_LINE_STEP_M) -> torch.Tensor:
    """Route-frame waypoints (..., N, 2) as (s along the line, d left of it) -> ego-frame points (..., N, 2).

    `lines` (..., M >= 2, 2) are route lines (`vla.route.route_line`, points every `step` m from s = 0); a line with
    any NaN (a sample without a route) and `lines` None stand for the ego's x axis. Between the line's points the
    position is interpolated linearly, with the direction of the segment s falls on; past either end the line
    goes on straight along its end segment."""
    if lines is None:
        return frame_points
    lines = lines.to(frame_points)  # its dtype and device
    if lines.shape[-2] < 2:
        raise ValueError(f"a route line needs at least 2 points, got shape {tuple(lines.shape)}")
    missing = torch.isnan(lines).any(dim=-1).any(dim=-1)
    straight = torch.from_numpy(straight_line(lines.shape[-2], step)).to(lines)
    lines = torch.where(missing[..., None, None], straight, lines)
    s, d = frame_points[..., 0], frame_points[..., 1]
    u = s / step
    i = u.floor().clamp(0, lines.shape[-2] - 2).long()
    start = torch.take_along_dim(lines, i[..., None].expand(*i.shape, 2), dim=-2)
    end = torch.take_along_dim(lines, (i + 1)[..., None].expand(*i.shape, 2), dim=-2)
    segment = end - start
    unit = segment / segment.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    normal = torch.stack((-unit[..., 1], unit[..., 0]), dim=-1)
    along = (u - i.to(u.dtype))[..., None] * segment
    return start + along + d[..., None] * normal
