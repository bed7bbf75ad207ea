"""MetaDrive 0.3.0.1 as the project's CPU simulator: an environment with the runtime fixes our machines need, and
the ego state in ROS terms (REP 103: x forward, y left, yaw counter-clockwise).

MetaDrive's 2-D frame is mirrored relative to ROS: its lane-local lateral offset and heading error are positive
to the right (checked by driving: a lane keeper steering left for positive offsets stays on the road, the other
sign leaves it within 7 s). Positions and yaw are mirrored here (y -> -y, yaw -> -yaw) so everything the bridge
publishes follows ROS conventions. One step = 5 x 0.02 s = 0.1 s; `vehicle.speed` is in m/s.
Runs only in the simulator environment (.venv-sim): MetaDrive pins numpy 1.24 and needs Python < 3.12.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

STEP_S = 0.1
TURN_RAD = 0.6  # heading change ahead that counts as a turn (a 90-degree intersection turn is 1.57)
TURN_LOOKAHEAD_M = 40.0  # announce a turn when its segment starts within this distance
#: When a run ends because the car strays (docs/closed_loop.md, "Termination rules"):
#: - "leaderboard": only when its centre has left every lane, as CARLA's Leaderboard 2.0 lets a car drive on while
#:   it is outside the route's lanes and charges the distance (the bridge records it);
#: - "metadrive": MetaDrive's own default, also as soon as the body touches a solid line or the sidewalk.
TERMINATION_RULES = ("leaderboard", "metadrive")
ROUTE_DEVIATION_M = 30.0  # Leaderboard 2.0: a car farther than this from its route ends the route (both rules)


def _install_runtime_fixes() -> None:
    """Headless EGL display and no MSAA (llvmpipe offers at most 4x, MetaDrive asks for 16x)."""
    from panda3d.core import loadPrcFileData

    loadPrcFileData("", "load-display p3headlessgl")
    import metadrive.engine.core.our_pbr as our_pbr

    if getattr(our_pbr.OurPipeline.__init__, "_autoprune_patched", False):
        return
    original = our_pbr.OurPipeline.__init__

    def patched(self, *args, **kwargs):
        kwargs["msaa_samples"] = 0
        original(self, *args, **kwargs)

    patched._autoprune_patched = True
    our_pbr.OurPipeline.__init__ = patched


def make_env(seed: int, map_spec: int | str = 3, width: int = 160, height: int = 120,
             traffic_density: float = 0.1, horizon: int = 1000, expert: bool = False, termination: str = "metadrive"):
    """A single-scenario MetaDriveEnv with a forward RGB camera; `expert` lets MetaDrive's IDM policy drive;
    `termination` is one of TERMINATION_RULES."""
    if termination not in TERMINATION_RULES:
        raise ValueError(f"unknown termination rule {termination!r}; known: {', '.join(TERMINATION_RULES)}")
    _install_runtime_fixes()
    from metadrive.envs import MetaDriveEnv

    config = dict(
        use_render=False, image_observation=True, environment_num=1, start_seed=seed,
        vehicle_config=dict(image_source="rgb_camera", rgb_camera=(width, height), stack_size=1,
                            show_navi_mark=False),
        show_interface=False, show_logo=False, show_fps=False, rgb_clip=False, multi_thread_render=False,
        show_terrain=False, show_skybox=False, traffic_density=traffic_density, map=map_spec, horizon=horizon,
        on_continuous_line_done=termination == "metadrive")
    if expert:
        from metadrive.policy.idm_policy import IDMPolicy

        config["agent_policy"] = IDMPolicy
    return MetaDriveEnv(config)


def off_road_cause(vehicle) -> str:
    """Why MetaDrive called the car out of road at the last step, in words (line and sidewalk contact end a run
    only under the "metadrive" rule)."""
    if not vehicle.on_lane:
        return "centre left every lane"
    if vehicle.on_yellow_continuous_line or vehicle.on_white_continuous_line:
        return "touched a solid line"
    return "touched the sidewalk" if vehicle.crash_sidewalk else "out of road"


def frame_rgb(obs: dict) -> np.ndarray:
    """The camera observation (H, W, 3, 1) float BGR 0..255 as contiguous uint8 RGB."""
    return np.ascontiguousarray(obs["image"][..., -1][..., ::-1].clip(0, 255).astype(np.uint8))


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


@dataclass
class EgoState:
    x: float
    y: float
    yaw: float
    speed: float  # m/s
    lateral_offset: float  # m from the lane centre, left positive
    heading_error: float  # rad relative to the lane, left (counter-clockwise) positive


class YawRate:
    """The ego yaw rate (rad/s, left positive) as the change of yaw since the previous tick over the tick length,
    0 at the first tick: what the odometry of the bridge and of recorded episodes carries, so that a model reads
    the same signal in closed loop as in its training data."""

    def __init__(self, dt_s: float) -> None:
        self.dt_s = dt_s
        self.value = 0.0
        self._previous_yaw: float | None = None

    def update(self, yaw: float) -> float:
        """The yaw rate at a tick whose yaw is `yaw` (call once per tick, in order)."""
        turn = 0.0 if self._previous_yaw is None else math.remainder(yaw - self._previous_yaw, 2 * math.pi)
        self._previous_yaw, self.value = yaw, turn / self.dt_s
        return self.value


def ego_state(env) -> EgoState:
    vehicle = env.vehicle
    lane = vehicle.lane
    lon, lat = lane.local_coordinates(vehicle.position)
    error = _wrap(vehicle.heading_theta - lane.heading_theta_at(lon))
    x, y = vehicle.position
    return EgoState(float(x), -float(y), -float(vehicle.heading_theta), float(vehicle.speed), -float(lat), -error)


class Route:
    """The ego's route as MetaDrive's checkpoints: segment lengths for route completion, and turns ahead."""

    def __init__(self, env) -> None:
        navigation = env.vehicle.navigation
        self.checkpoints = list(navigation.checkpoints)
        graph = env.current_map.road_network.graph
        self.segments = [list(graph[a][b]) for a, b in pairwise(self.checkpoints)]  # every lane of each segment
        self.lanes = [lanes[0] for lanes in self.segments]
        self.segment_lengths = [float(lane.length) for lane in self.lanes]
        self.length_m = float(sum(self.segment_lengths))

    def deviation(self, env) -> tuple[float, bool]:
        """(metres from the car's centre to the nearest centre line of the route's lanes, whether the centre is
        inside one of those lanes): the Leaderboard's route deviation and "outside route lanes", measured on the
        route itself (MetaDrive's own `out_of_route` keeps judging against the last route lanes the car was on,
        so it stays set on any road the car strays onto)."""
        position = env.vehicle.position
        gaps = [(float(lane.distance(position)), lane.width / 2) for lanes in self.segments for lane in lanes]
        return min(gap for gap, _ in gaps), any(gap <= half for gap, half in gaps)

    def locate(self, env) -> tuple[int | None, float]:
        """(segment index, longitudinal position on it), or (None, 0) inside a junction off the route's lanes."""
        vehicle = env.vehicle
        key = tuple(vehicle.lane_index[:2])
        for index, segment in enumerate(pairwise(self.checkpoints)):
            if segment == key:
                return index, float(vehicle.lane.local_coordinates(vehicle.position)[0])
        return None, 0.0

    def instruction(self, env) -> str:
        """The route's navigation command: the turn the car is in (as CARLA's route planner, which keeps LEFT /
        RIGHT on the junction's own waypoints), else the next turn whose segment starts within TURN_LOOKAHEAD_M,
        else lane following. A segment is a turn when its heading changes by more than TURN_RAD end to end (ROS
        sign: left positive)."""
        index, lon = self.locate(env)
        if index is None:
            return "follow the lane"
        ahead = -lon
        for lane in self.lanes[index:]:
            if ahead > TURN_LOOKAHEAD_M:
                break
            change = -_wrap(lane.heading_theta_at(lane.length) - lane.heading_theta_at(0.0))
            if abs(change) > TURN_RAD:
                return f"turn {'left' if change > 0 else 'right'} at the next intersection"
            ahead += float(lane.length)
        return "follow the lane"
