"""The route the node hands to models with a route input: the latest nav_msgs/Path on the route topic, seen from
the latest odometry pose.

A CARLA Leaderboard stack publishes the whole route once (latched, map frame); the MetaDrive bridge republishes
the stretch ahead every tick. Either way the node keeps the newest path and, per frame, expresses it in the ego
frame with the newest odometry pose. A path in another frame than the odometry's (and not already in the ego
frame) cannot be placed: the frame is then driven without a route and the reason shows in the diagnostics.
"""
from __future__ import annotations

import math

import numpy as np
from nav_msgs.msg import Odometry, Path

from autoprune_ros.vla.route import path_points, quaternion_yaw, to_ego_frame


class RouteInput:
    """Newest route path and ego pose; `ego_route()` is the route in the ego frame or None, `status` says why."""

    def __init__(self, ego_frame_id: str) -> None:
        self.ego_frame_id = ego_frame_id
        self.points: np.ndarray | None = None  # (K, 2) in `frame_id`
        self.frame_id = ""
        self.pose: tuple[float, float, float] | None = None  # x, y, yaw in `pose_frame_id`
        self.pose_frame_id = ""

    def on_path(self, msg: Path) -> None:
        self.points = path_points(msg)
        self.frame_id = msg.header.frame_id

    def on_odometry(self, msg: Odometry) -> None:
        pose = msg.pose.pose
        x, y, yaw = pose.position.x, pose.position.y, quaternion_yaw(pose.orientation)
        if all(map(math.isfinite, (x, y, yaw))):
            self.pose, self.pose_frame_id = (x, y, yaw), msg.header.frame_id

    @property
    def status(self) -> str:
        """'ok', or what keeps the route from the model."""
        if self.points is None:
            return "no route received"
        if len(self.points) < 2 or not np.isfinite(self.points).all():
            return f"route unusable: {len(self.points)} point(s), or non-finite ones"
        if self.frame_id == self.ego_frame_id:
            return "ok"
        if self.pose is None:
            return "no odometry pose to place the route"
        if self.frame_id and self.pose_frame_id and self.frame_id != self.pose_frame_id:
            return (f"route in frame '{self.frame_id}', odometry in '{self.pose_frame_id}': publish the route in "
                    f"the odometry's frame or in '{self.ego_frame_id}'")
        return "ok"

    def ego_route(self) -> np.ndarray | None:
        """The route in the ego frame ((K, 2), x forward, y left), or None (see `status`)."""
        if self.status != "ok":
            return None
        if self.frame_id == self.ego_frame_id:
            return self.points
        return to_ego_frame(self.points, *self.pose)
