"""The centreline the expert is steering for, ahead of the ego: a privileged label that the recorder writes beside
the camera so that training can tell the model where the lane is even when the car is off it.

From the ego's projection on the lane the expert steers for (`expert_lane`), the path runs along that lane and its
continuations on the route, sampled every `step_m` metres, in the ROS map frame (metadrive_env mirrors MetaDrive's
y). vla/dataset.py turns it into waypoints that converge from wherever the car is back onto the lane
(docs/training.md).
"""
from __future__ import annotations

import numpy as np

AHEAD_M = 60.0  # 8 waypoints x 0.5 s at up to 15 m/s, with margin
STEP_M = 2.0


def _next_lane(graph, checkpoints: list[str], lane):
    """The route's continuation of `lane` (same lane number, clamped to the next road's lane count), or None at
    the route's end or off the route."""
    _, end, number = lane.index
    try:
        position = checkpoints.index(end)
    except ValueError:
        return None
    if position + 1 >= len(checkpoints):
        return None
    lanes = graph[end][checkpoints[position + 1]]
    return lanes[min(number, len(lanes) - 1)]


def lane_ahead(env, lane, ahead_m: float = AHEAD_M, step_m: float = STEP_M) -> np.ndarray:
    """(K, 2) points of `lane`'s centreline and its continuations on the route, from the ego's projection onto it
    to `ahead_m` further (or the route's end), every `step_m` m, in the ROS map frame (x, y with y mirrored)."""
    vehicle = env.vehicle
    checkpoints = list(vehicle.navigation.checkpoints)
    graph = env.current_map.road_network.graph
    lon = float(np.clip(lane.local_coordinates(vehicle.position)[0], 0.0, lane.length))
    points, travelled = [], 0.0
    while lane is not None and travelled <= ahead_m:
        stations = np.arange(lon, float(lane.length), step_m)
        for s in stations:
            if travelled + (s - lon) > ahead_m:
                break
            x, y = lane.position(float(s), 0.0)
            points.append((float(x), -float(y)))
        travelled += float(lane.length) - lon
        # the next lane starts where this one's last sample would have continued, keeping the spacing even
        lon = (stations[-1] + step_m - float(lane.length)) if stations.size else 0.0
        lane = _next_lane(graph, checkpoints, lane)
    if len(points) < 2:  # at the very end of the route: the lane's last stretch
        end = env.vehicle.lane
        for s in (max(0.0, float(end.length) - step_m), float(end.length)):
            x, y = end.position(s, 0.0)
            points.append((float(x), -float(y)))
    return np.asarray(points, dtype=np.float64)


def expert_lane(env, policy):
    """The lane the expert steers for. IDM adopts whatever route lane the car is in (so a car pushed across a
    lane line is steered into the new lane), but its own target lags a tick at road changes, so the car's lane
    is used while it lies on the route's current or next road, IDM's target otherwise (inside junctions)."""
    lane = env.vehicle.lane
    navigation = env.vehicle.navigation
    on_route = [*(navigation.current_ref_lanes or ()), *(navigation.next_ref_lanes or ())]
    if any(lane is candidate for candidate in on_route):
        return lane
    return getattr(policy, "routing_target_lane", None) or lane


class RouteLane:
    """The route lane a car without the IDM expert is on, tracked tick by tick as IDM tracks its own target: the
    car's lane while it lies on the route's current or next road; otherwise (inside junctions, or pushed off the
    route) the last such lane, carried on to the lane of the route's current road that connects to it. Its
    `lane_ahead` is the route the MetaDrive bridge publishes."""

    def __init__(self) -> None:
        self.target = None

    def update(self, env):
        """This tick's route lane."""
        lane = env.vehicle.lane
        navigation = env.vehicle.navigation
        current = list(navigation.current_ref_lanes or ())
        if any(lane is candidate for candidate in (*current, *(navigation.next_ref_lanes or ()))):
            self.target = lane
        elif self.target is None:
            self.target = current[0] if current else lane
        elif not any(self.target is candidate for candidate in current):
            network = navigation.map.road_network
            for candidate in current:
                if self.target.is_previous_lane_of(candidate) or network.has_connection(self.target.index,
                                                                                        candidate.index):
                    self.target = candidate
                    break
        return self.target
