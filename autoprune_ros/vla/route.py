"""Route geometry for the driving VLA: polylines, the ego frame and the route points the action head reads.

A route is a polyline of points ahead of the car (a CARLA Leaderboard global plan, MetaDrive's lane ahead on the
route, or the recorded reference centreline). The model does not read the whole route: like the target point of
CARLA Leaderboard agents, it gets a few points evenly spaced up to `lookahead_m` further along the route than the
car's projection on it, in the ego frame (x forward, y left). They say where the road goes beyond what one camera
frame shows, where a turn begins, and, through their lateral part, how far the car is off the route. Pure numpy:
training and the ROS node share it.
"""
from __future__ import annotations

import math

import numpy as np

_EPS = 1e-6


def polyline_segments(path: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The polyline `path` (K, 2) without zero-length segments: (segment starts (S, 2), unit directions (S, 2),
    lengths (S,), arc length at each start and at the end (S + 1,)); ValueError if nothing is left."""
    seg = np.diff(path, axis=0)
    length = np.hypot(seg[:, 0], seg[:, 1])
    ok = length > _EPS
    if not ok.any():
        raise ValueError("path has no extent")
    seg, length = seg[ok], length[ok]
    return path[:-1][ok], seg / length[:, None], length, np.concatenate(([0.0], np.cumsum(length)))


def project_onto(path: np.ndarray, point: np.ndarray) -> tuple[float, float]:
    """(arc length of `point`'s projection on the polyline `path` (K >= 2, 2), signed perpendicular offset from it,
    left positive)."""
    starts, unit, length, cum = polyline_segments(path)
    rel = point[None, :] - starts
    along = np.clip(np.einsum("ij,ij->i", rel, unit), 0.0, length)
    i = int(np.argmin(np.hypot(*(rel - along[:, None] * unit).T)))
    return float(cum[i] + along[i]), float(unit[i, 0] * rel[i, 1] - unit[i, 1] * rel[i, 0])


def points_along(path: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points (M, 2), unit left normals (M, 2)) at arc lengths `s` on the polyline, extended straight past its
    ends."""
    starts, unit, length, cum = polyline_segments(path)
    i = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, length.size - 1)
    points = starts[i] + unit[i] * (s - cum[i])[:, None]
    return points, np.stack((-unit[i, 1], unit[i, 0]), axis=-1)


def path_points(msg) -> np.ndarray:
    """The (K, 2) x, y of a nav_msgs/Path message's poses (rclpy or rosbags message alike)."""
    return np.array([(p.pose.position.x, p.pose.position.y) for p in msg.poses], dtype=np.float64).reshape(-1, 2)


def quaternion_yaw(q) -> float:
    """Yaw (rad, about z) of a quaternion message (x, y, z, w attributes)."""
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def to_ego_frame(points: np.ndarray, x: float, y: float, yaw: float) -> np.ndarray:
    """Map-frame points (..., 2) in the frame of an ego at (x, y) heading `yaw` (rad): x forward, y left."""
    dx, dy = points[..., 0] - x, points[..., 1] - y
    cos, sin = math.cos(yaw), math.sin(yaw)
    return np.stack((cos * dx + sin * dy, -sin * dx + cos * dy), axis=-1)


def _ahead(route_ego: np.ndarray | None, distances: np.ndarray) -> np.ndarray | None:
    """The points `distances` (M,) metres along the route (ego frame, (K, 2)) past the ego's projection on it
    ((M, 2), ego frame), extended straight past its end; None for no route or one without extent."""
    if route_ego is None:
        return None
    route = np.asarray(route_ego, dtype=np.float64).reshape(-1, 2)
    if len(route) < 2 or not np.isfinite(route).all():
        return None
    try:
        s0, _ = project_onto(route, np.zeros(2))
    except ValueError:
        return None
    return points_along(route, s0 + distances)[0]


def route_targets(route_ego: np.ndarray | None, lookahead_m: float, count: int = 1) -> np.ndarray | None:
    """`count` points evenly spaced up to `lookahead_m` along the route (ego frame, (K, 2)) past the ego's
    projection on it ((count, 2), ego frame; count 1: the target point `lookahead_m` ahead); a route shorter than
    that is extended straight from its end. None for no route or one without extent (fewer than 2 distinct points)."""
    return _ahead(route_ego, lookahead_m * np.arange(1, count + 1) / count)


# What an action head's waypoints are coordinates in: the ego frame (x, y), or the route's (vla/route_frame.py).
WAYPOINT_FRAMES = ("ego", "route")

# The route line that waypoints in the route frame are laid along: every metre from the ego's projection on the
# route, as far as 8 waypoints at 0.5 s reach at 20 m/s (past it, vla/route_frame.py goes on straight).
ROUTE_LINE_STEP_M = 1.0
ROUTE_LINE_POINTS = 81


def route_line(route_ego: np.ndarray | None) -> np.ndarray | None:
    """The route resampled from the ego's projection on it every ROUTE_LINE_STEP_M metres ((ROUTE_LINE_POINTS, 2),
    ego frame), extended straight past its end; None for no route or one without extent."""
    return _ahead(route_ego, ROUTE_LINE_STEP_M * np.arange(ROUTE_LINE_POINTS))


def route_feature_size(count: int) -> int:
    """How many route features the action head reads for `count` route points."""
    return 2 * count + 1


def route_features(targets: np.ndarray | None, lookahead_m: float, count: int = 1) -> np.ndarray:
    """The action head's route input, float32 (..., route_feature_size(count)): the route points (..., count, 2)
    scaled by the lookahead and flattened, then a 1; zeros for a missing route (None, or NaN samples in a batch): the
    head was trained with routes withheld, so it then drives from the camera alone."""
    if targets is None:
        return np.zeros(route_feature_size(count), dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    present = np.isfinite(targets).all(axis=(-1, -2))[..., None]
    scaled = np.where(present, targets.reshape(*targets.shape[:-2], 2 * count) / np.float32(lookahead_m),
                      np.float32(0.0))
    return np.concatenate((scaled, present.astype(np.float32)), axis=-1)
