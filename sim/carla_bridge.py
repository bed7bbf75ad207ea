"""CARLA bridge: drives a CARLA 0.9.16 server in synchronous mode and puts the autoprune node in closed loop,
speaking the same ROS topics as the MetaDrive bridge (`autoprune_sim.ros_contract`).

Each tick: `world.tick()`, wait for that tick's camera frame, publish /clock, odometry, vehicle status, collision
and lane-invasion events, /carla/status, the navigation instruction (when it changes) and the image, all stamped
with the tick's simulation time; then wait up to `--control-timeout` for the control whose header.stamp equals
that time (within 1 ms) and apply it. `--mode latency` applies each control ceil(latency / dt) ticks late, the
latency being the node's measured pipeline time (/autoprune/frame_stats) or, failing that, the wall time from
publishing the frame to receiving its control.

    python -m autoprune_sim.carla_bridge --routes routes.xml --routes-subset 0 --output results/carla

Every actor spawned is destroyed and the world's settings are restored on exit, on an error, on Ctrl-C and on
SIGTERM. One JSON result per route lands in `--output`. See docs/carla.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoprune_sim import ros_contract as rc
from autoprune_sim.control_delay import ControlDelay
from autoprune_sim.metrics import (
    COLLISION_LAYOUT,
    COLLISION_PEDESTRIAN,
    COLLISION_VEHICLE,
    ROUTE_DEVIATION,
    ROUTE_TIMEOUT,
    VEHICLE_BLOCKED,
    Infraction,
    RouteResult,
    route_status,
)
from autoprune_sim.routes import load_routes

EXIT_OK = 0
EXIT_ROUTE_FAILED = 1  # a route could not be set up or the simulator failed during it
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_NO_SERVER = 3
EXIT_SETUP = 4
MODES = ("sync", "latency")
ON_TIMEOUT = ("hold", "brake", "zero")
BRAKE = (0.0, 0.0, 1.0, False, False)  # (steer, throttle, brake, hand_brake, reverse)
ZERO = (0.0, 0.0, 0.0, False, False)
BLOCKED_SPEED_MPS = 0.1
COLLISION_DEBOUNCE_S = 1.0  # contact events with the same actor closer than this are one collision
COMPLETION_DONE = 0.99
STATS_PROBE_FRAMES = 5  # wait for /autoprune/frame_stats on this many frames before assuming the node sends none
FAILURES = {  # termination -> the "Failed - ..." status text
    "route_timeout": "route timeout", "agent_blocked": "agent blocked", "route_deviation": "route deviation",
    "collision": "collision", "node_unresponsive": "node unresponsive", "simulator_error": "simulator error",
    "sensor_timeout": "sensor timeout", "setup_failed": "setup failed", "interrupted": "interrupted",
    "max_ticks": "tick limit", "max_seconds": "time limit",
}


class BridgeError(Exception):
    """A failure the user can fix; its message is the one line printed."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; unwinds through every `finally` so that cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SensorTimeout(Exception):
    pass


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class BridgeConfig:
    """Everything the bridge can be told; the CLI fills it from arguments."""
    host: str = "127.0.0.1"
    port: int = 2000
    timeout: float = 2.0            # client RPC timeout, also per connection try
    retries: int = 3
    retry_wait: float = 1.0
    load_timeout: float = 120.0     # client timeout while a town loads
    town: str | None = None         # free drive only: town to load (routes carry their own)
    spawn_index: int = 0            # free drive only: map spawn point
    max_seconds: float = 60.0       # free drive only: sim seconds to drive
    blueprint: str = "vehicle.lincoln.mkz_2020"
    camera_width: int = 800
    camera_height: int = 600
    camera_fov: float = 90.0
    camera_x: float = 1.5
    camera_z: float = 2.0
    fixed_delta_seconds: float = 0.05
    tick_timeout: float = 10.0
    sensor_timeout: float = 5.0
    control_timeout: float = 1.0
    on_timeout: str = "hold"
    max_consecutive_timeouts: int = 100  # 0: never end a route for an unresponsive node
    mode: str = "sync"
    stats_wait: float = 0.1         # latency mode: how long to wait for the frame's /autoprune/frame_stats
    wait_for_node: float = 60.0     # wait this long for a subscriber on the camera topic before the first tick
    route_timeout: float | None = None  # sim seconds; None: 60 + 0.8 s per metre of route
    blocked_seconds: float = 180.0
    deviation_m: float = 30.0
    stop_on_collision: bool = False
    max_ticks: int = 0              # 0: no limit
    route_step_m: float = 1.0
    lookahead_m: float = 40.0       # instruction: announce a junction this far ahead
    turn_deg: float = 30.0          # instruction: heading change that makes a turn
    output: Path = Path("results/carla")

    def validate(self) -> None:
        """Raise BridgeError naming the first bad value."""
        checks = [
            (0.0 < self.fixed_delta_seconds <= 0.1, "--fixed-delta-seconds must be in (0, 0.1] (CARLA's physics "
             f"limit), got {self.fixed_delta_seconds}"),
            (self.timeout > 0 and self.retries >= 1, "--timeout must be > 0 and --retries >= 1"),
            (self.control_timeout > 0, "--control-timeout must be > 0"),
            (self.on_timeout in ON_TIMEOUT, f"--on-timeout must be one of {', '.join(ON_TIMEOUT)}"),
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}"),
            (self.camera_width > 0 and self.camera_height > 0 and 0 < self.camera_fov < 180,
             "camera width/height must be > 0 and fov in (0, 180)"),
            (0 < self.port < 65535, f"--port must be in 1..65534, got {self.port}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BridgeError(message, EXIT_USAGE)


# ---------------------------------------------------------------------------------------------------- geometry
def densify(points: Sequence[Sequence[float]], step: float = 1.0) -> np.ndarray:
    """Straight-line resampling of a polyline so no two consecutive points are more than `step` apart."""
    pts = np.asarray(points, dtype=float)
    out = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        d = float(np.linalg.norm(b[:2] - a[:2]))
        if d < 1e-6:
            continue
        n = max(1, math.ceil(d / step))
        out.extend(a + (b - a) * (i / n) for i in range(1, n + 1))
    return np.array(out)


def arc_lengths(xy: np.ndarray) -> np.ndarray:
    """Cumulative distance along a polyline, starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy[:, :2], axis=0), axis=1))])


class RouteTracker:
    """Progress along a dense route: the furthest projection of the ego inside a window ahead of the last one."""

    def __init__(self, points: np.ndarray, window_m: float = 50.0) -> None:
        self.xy = np.asarray(points, dtype=float)[:, :2]
        self.s = arc_lengths(self.xy)
        self.length = float(self.s[-1])
        self.window_m = window_m
        self.index = 0
        self.progress_m = 0.0

    @property
    def completion(self) -> float:
        """Fraction of the route driven, 0..1."""
        return 1.0 if self.length <= 0 else min(1.0, self.progress_m / self.length)

    def update(self, x: float, y: float) -> float:
        """Advance with the ego at (x, y); returns the distance to the route (metres)."""
        if len(self.xy) < 2:
            return float(np.hypot(x - self.xy[0, 0], y - self.xy[0, 1]))
        j0 = min(self.index, len(self.xy) - 2)
        j1 = int(np.searchsorted(self.s, self.s[j0] + self.window_m, side="right"))
        j1 = min(max(j1, j0 + 1), len(self.xy) - 1)
        a, b = self.xy[j0:j1], self.xy[j0 + 1:j1 + 1]
        ab = b - a
        sq = np.einsum("ij,ij->i", ab, ab)
        p = np.array([x, y])
        t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.where(sq > 0, sq, 1.0), 0.0, 1.0)
        d = np.linalg.norm(a + ab * t[:, None] - p, axis=1)
        k = int(np.argmin(d))
        along = float(self.s[j0 + k] + t[k] * math.sqrt(sq[k]))
        if along > self.progress_m:
            self.progress_m = along
            self.index = j0 + k
        return float(d[k])

    def point_index(self) -> int:
        """Index of the dense route point at (or just behind) the current progress."""
        return max(0, int(np.searchsorted(self.s, self.progress_m, side="right")) - 1)


def _point_at(xy: np.ndarray, s: np.ndarray, target: float) -> np.ndarray:
    target = min(max(target, 0.0), float(s[-1]))
    return np.array([np.interp(target, s, xy[:, 0]), np.interp(target, s, xy[:, 1])])


def _heading(xy: np.ndarray, s: np.ndarray, s0: float, s1: float) -> float | None:
    d = _point_at(xy, s, s1) - _point_at(xy, s, s0)
    return math.atan2(d[1], d[0]) if np.hypot(*d) > 1e-3 else None


def turn_command(heading_in: float, heading_out: float, turn_deg: float = 30.0) -> str:
    """The command for a junction entered at `heading_in` and left at `heading_out` (radians, CARLA axes:
    y points right, so a positive change is a right turn)."""
    delta = math.degrees(math.atan2(math.sin(heading_out - heading_in), math.cos(heading_out - heading_in)))
    if abs(delta) < turn_deg:
        return rc.GO_STRAIGHT
    return rc.TURN_RIGHT if delta > 0 else rc.TURN_LEFT


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((start, i - 1))
            start = None
    if start is not None:
        spans.append((start, len(flags) - 1))
    return spans


def plan_instructions(points: np.ndarray, junction: Sequence[bool] | None = None, *, lookahead_m: float = 40.0,
                      turn_deg: float = 30.0, heading_m: float = 8.0) -> list[str]:
    """The navigation command at every dense route point (CARLA axes).

    With `junction` flags (from the map), each junction span is classified by the route's heading `heading_m`
    before its entry and after its exit, and announced from `lookahead_m` before it until its exit. Without
    them, stretches whose heading turns by more than `turn_deg` over 2 x `heading_m` become the turns (geometry
    only: a sharp bend of the road reads as a turn, and "go straight" is never said)."""
    xy = np.asarray(points, dtype=float)[:, :2]
    s = arc_lengths(xy)
    n = len(xy)
    if junction is not None:
        spans = _runs(list(junction))
    else:
        turning = []
        for i in range(n):
            h0, h1 = _heading(xy, s, s[i] - heading_m, s[i]), _heading(xy, s, s[i], s[i] + heading_m)
            turning.append(h0 is not None and h1 is not None and turn_command(h0, h1, turn_deg) != rc.GO_STRAIGHT)
        spans = _runs(turning)
    commands = [rc.FOLLOW_LANE] * n
    assigned = [False] * n
    for i0, i1 in spans:
        h_in = _heading(xy, s, s[i0] - heading_m, s[i0])
        h_out = _heading(xy, s, s[i1], s[i1] + heading_m)
        if h_in is None or h_out is None:  # a junction at the very start or end of the route
            continue
        command = turn_command(h_in, h_out, turn_deg)
        first = int(np.searchsorted(s, s[i0] - lookahead_m, side="left"))
        for i in range(first, i1 + 1):
            if not assigned[i]:
                commands[i], assigned[i] = command, True
    return commands


def road_polyline(carla_map, points: np.ndarray, location: Callable[..., Any], step: float = 1.0) -> np.ndarray:
    """Dense route that follows the roads between sparse route points: from each point, walk the map's
    waypoints `step` apart, taking at forks the branch that heads closest to the next point; a leg that does
    not reach its target within 3x its straight distance falls back to a straight line."""
    out = [np.asarray(points[0], dtype=float)]
    for a, b in zip(points[:-1], points[1:], strict=True):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        straight = float(np.linalg.norm(b[:2] - a[:2]))
        leg = _walk_roads(carla_map, a, b, straight, location, step)
        out.extend(leg if leg is not None else densify([a, b], step)[1:])
    return np.array(out)


def _walk_roads(carla_map, a: np.ndarray, b: np.ndarray, straight: float, location, step: float):
    def dist(wp) -> float:
        loc = wp.transform.location
        return math.hypot(loc.x - b[0], loc.y - b[1])

    def score(wp) -> float:
        ahead = wp.next(max(10.0, 10 * step)) or []
        return min([dist(wp), *(dist(w) for w in ahead)])

    wp = carla_map.get_waypoint(location(x=float(a[0]), y=float(a[1]), z=float(a[2])))
    if wp is None:
        return None
    leg = []
    for _ in range(int(3 * straight / step) + 20):
        if dist(wp) <= step:
            leg.append(b)
            return leg
        candidates = wp.next(step)
        if not candidates:
            return None
        wp = min(candidates, key=score) if len(candidates) > 1 else candidates[0]
        loc = wp.transform.location
        leg.append(np.array([loc.x, loc.y, loc.z]))
    return None


# ---------------------------------------------------------------------------------------------------- CARLA <-> ROS
def ros_pose(transform) -> tuple[float, float, float, float, float, float]:
    """(x, y, z, roll, pitch, yaw) in ROS axes and radians from a carla.Transform (left-handed, degrees)."""
    loc, rot = transform.location, transform.rotation
    return (loc.x, -loc.y, loc.z, math.radians(rot.roll), -math.radians(rot.pitch), -math.radians(rot.yaw))


def ros_odometry(transform, velocity, angular_velocity, stamp):
    """nav_msgs/Odometry of the ego: pose in `map`, twist in the ego frame (ROS axes)."""
    x, y, z, _, _, yaw = ros_pose(transform)
    vx, vy = velocity.x, -velocity.y  # world, ROS axes
    c, s = math.cos(yaw), math.sin(yaw)
    return rc.odometry_msg(x, y, yaw, c * vx + s * vy, -s * vx + c * vy, -math.radians(angular_velocity.z),
                           stamp, z=z)


def _control_msg(control: tuple, stamp):
    from carla_msgs.msg import CarlaEgoVehicleControl

    steer, throttle, brake, hand_brake, reverse = control
    msg = CarlaEgoVehicleControl(throttle=float(throttle), steer=float(steer), brake=float(brake),
                                 hand_brake=bool(hand_brake), reverse=bool(reverse))
    msg.header.stamp = stamp
    msg.header.frame_id = rc.EGO_FRAME
    return msg


def vehicle_status_msg(transform, velocity, acceleration, control: tuple, stamp):
    """CarlaEgoVehicleStatus: speed, acceleration and orientation (ROS axes) and the control in effect."""
    from carla_msgs.msg import CarlaEgoVehicleStatus

    msg = CarlaEgoVehicleStatus(velocity=float(math.sqrt(velocity.x ** 2 + velocity.y ** 2 + velocity.z ** 2)))
    msg.header.stamp = stamp
    msg.header.frame_id = rc.MAP_FRAME
    msg.acceleration.linear.x, msg.acceleration.linear.y = acceleration.x, -acceleration.y
    msg.acceleration.linear.z = acceleration.z
    _, _, _, roll, pitch, yaw = ros_pose(transform)
    q = msg.orientation
    q.x, q.y, q.z, q.w = rc.rpy_quaternion(roll, pitch, yaw)
    msg.control = _control_msg(control, stamp)
    return msg


def lane_marking_code(marking_type) -> int:
    """carla.LaneMarkingType -> CarlaLaneInvasionEvent code: any solid line = SOLID, broken only = BROKEN."""
    name = getattr(marking_type, "name", str(marking_type))
    if "Solid" in name or name == "Curb":
        return 2
    return 1 if "Broken" in name else 0


# ---------------------------------------------------------------------------------------------------- ROS side
class RosIO:
    """The bridge's rclpy node: one publisher per contract topic, the control and frame-stats subscriptions.

    Single-threaded: messages are handled inside `spin_once`, on the caller's thread."""

    def __init__(self, node_name: str = "carla_bridge", ros_args: Sequence[str] = ()) -> None:
        import rclpy
        from carla_msgs.msg import (
            CarlaCollisionEvent,
            CarlaEgoVehicleControl,
            CarlaEgoVehicleStatus,
            CarlaLaneInvasionEvent,
            CarlaStatus,
        )
        from diagnostic_msgs.msg import DiagnosticStatus
        from nav_msgs.msg import Odometry, Path
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=[node_name, *ros_args], context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        topics = {
            rc.CLOCK_TOPIC: (Clock, rc.CLOCK_QOS), rc.CAMERA_TOPIC: (Image, rc.SENSOR_QOS),
            rc.ODOMETRY_TOPIC: (Odometry, rc.SENSOR_QOS),
            rc.VEHICLE_STATUS_TOPIC: (CarlaEgoVehicleStatus, rc.SENSOR_QOS),
            rc.COLLISION_TOPIC: (CarlaCollisionEvent, rc.EVENT_QOS),
            rc.LANE_INVASION_TOPIC: (CarlaLaneInvasionEvent, rc.EVENT_QOS),
            rc.STATUS_TOPIC: (CarlaStatus, rc.SENSOR_QOS), rc.INSTRUCTION_TOPIC: (String, rc.LATCHED_QOS),
            rc.ROUTE_TOPIC: (Path, rc.LATCHED_QOS),
        }
        self._pubs = {topic: self.node.create_publisher(t, topic, qos) for topic, (t, qos) in topics.items()}
        self.on_control: Callable[[Any], None] = lambda msg: None
        self.on_frame_stats: Callable[[Any], None] = lambda msg: None
        self.node.create_subscription(CarlaEgoVehicleControl, rc.CONTROL_TOPIC, lambda m: self.on_control(m),
                                      rc.CONTROL_QOS)
        self.node.create_subscription(DiagnosticStatus, rc.FRAME_STATS_TOPIC, lambda m: self.on_frame_stats(m),
                                      rc.FRAME_STATS_QOS)

    def publish(self, topic: str, msg: Any) -> None:
        self._pubs[topic].publish(msg)

    def subscriber_count(self, topic: str) -> int:
        return self._pubs[topic].get_subscription_count()

    def spin_once(self, timeout_s: float) -> None:
        self.executor.spin_once(timeout_sec=max(0.0, timeout_s))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


# ---------------------------------------------------------------------------------------------------- signals
class SignalGuard:
    """SIGINT/SIGTERM raise `Interrupted` (so `finally` blocks clean up), except inside `deferred()`, where
    they are remembered and raised when the block ends: cleanup itself is never cut short."""

    def __init__(self) -> None:
        self._deferring = 0
        self.pending: int | None = None

    def _handler(self, signum: int, _frame) -> None:
        if self._deferring:
            self.pending = self.pending or signum
            return
        raise Interrupted(signum)

    @contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


# ---------------------------------------------------------------------------------------------------- connection
def connect(host: str, port: int, timeout: float, retries: int, *, retry_wait: float = 1.0,
            client_factory: Callable[[str, int], Any] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> Any:
    """A carla.Client whose `get_world()` answered; BridgeError (one line, cause and fix) after `retries` tries."""
    factory = client_factory or _carla().Client
    last = ""
    for attempt in range(1, retries + 1):
        try:
            client = factory(host, port)
            client.set_timeout(timeout)
            client.get_world()
            return client
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if attempt < retries:
            sleep(retry_wait)
    cause = "" if "time-out" in last else f" (last error: {last})"
    raise BridgeError(f"no CARLA server answered at {host}:{port} after {retries} tries (timeout {timeout:g} s "
                      f"each){cause}: start the CARLA 0.9.16 server (./CarlaUE4.sh -RenderOffScreen "
                      f"-carla-rpc-port={port}) or pass --host/--port", EXIT_NO_SERVER)


def _carla():
    try:
        import carla
    except ImportError as exc:
        raise BridgeError(f"the CARLA client is not installed ({exc}): pip install carla==0.9.16") from None
    return carla


# ---------------------------------------------------------------------------------------------------- the bridge
@dataclass
class _RouteState:
    route_id: str
    town: str
    tick: int = 0
    frame_base: int | None = None
    tracker: RouteTracker | None = None
    instructions: list[str] | None = None
    instruction: str = ""
    applied: tuple = BRAKE
    consecutive_timeouts: int = 0
    slow_since_ns: int | None = None
    distance_to_route: float = 0.0
    route_timeout_s: float | None = None
    phase: str = "setup"
    termination: str = ""
    error: str = ""
    wall_start: float = 0.0


class CarlaBridge:
    """The closed loop against one CARLA client. `client` and `io` are injected (a fake in tests); `clock` times
    the waits for controls and frame stats."""

    def __init__(self, client: Any, io: Any, config: BridgeConfig, *, carla_module: Any = None,
                 clock: Callable[[], float] = time.monotonic, guard: SignalGuard | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.io = io
        self.cfg = config
        self.carla = carla_module or _carla()
        self.clock = clock
        self.guard = guard or SignalGuard()
        self.log = log or (lambda text: print(f"carla_bridge: {text}", file=sys.stderr, flush=True))
        self.dt_ns = rc.dt_ns(config.fixed_delta_seconds)
        self.world: Any = None
        self.map: Any = None
        self.actors: list[Any] = []
        self.ego: Any = None
        self._saved_settings: Any = None
        self._images: queue.Queue = queue.Queue()
        self._events_lock = threading.Lock()
        self._collisions: list[tuple] = []
        self._invasions: list[tuple] = []
        self._awaiting_ns: int | None = None
        self._answer: Any = None
        self._answer_wall: float = 0.0
        self._stats: dict[int, float] = {}
        self._kept: dict[int, float] = {}
        self._stats_seen = False
        self._delay = ControlDelay(config.fixed_delta_seconds, config.mode, initial=BRAKE)
        self._counts: dict[str, int] = {}
        self.interrupted: Interrupted | None = None
        io.on_control = self._on_control
        io.on_frame_stats = self._on_frame_stats

    # ---- session
    def run(self, routes: Sequence[Any] | None, write: bool = True) -> list[RouteResult]:
        """Drive every route (None: one free drive), writing each result; restores the world's settings at the
        end, whatever happens."""
        results = []
        try:
            self.world = self.client.get_world()
            self._saved_settings = self.world.get_settings()
            for route in (routes if routes else [None]):
                result = self.run_route(route)
                results.append(result)
                if write:
                    path = write_result(result, self.cfg.output)
                    self.log(f"route {result.route_id}: {result.status}, completion {100 * result.completion:.1f} %, "
                             f"{result.control_timeouts} control timeouts, mode {self.cfg.mode} -> {path}")
                if self.interrupted is not None:
                    raise self.interrupted
                if result.meta["termination"] == "simulator_error":
                    break
        finally:
            with self.guard.deferred():
                self.restore_settings()
        return results

    def restore_settings(self) -> None:
        """Give the world back its settings from before the bridge (asynchronous mode, usually)."""
        if self._saved_settings is None or self.world is None:
            return
        try:
            self.world.apply_settings(self._saved_settings)
        except RuntimeError as exc:
            self.log(f"could not restore the world settings: {exc}")
        self._saved_settings = None

    # ---- one route
    def run_route(self, route: Any) -> RouteResult:
        """Set up, drive and clean up one route (or a free drive when `route` is None); returns its result."""
        cfg = self.cfg
        rid = str(getattr(route, "id", "free")) if route is not None else "free"
        st = _RouteState(route_id=rid, town=str(getattr(route, "town", "") or cfg.town or ""))
        st.wall_start = self.clock()
        self._reset_route_counters()
        try:
            self._setup(route, st)
            st.phase = "drive"
            self._drive(st)
        except _SensorTimeout as exc:
            st.termination, st.error = "sensor_timeout", str(exc)
        except RuntimeError as exc:  # the CARLA client raises RuntimeError for every server-side failure
            st.termination = "setup_failed" if st.phase == "setup" else "simulator_error"
            st.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        except Interrupted as exc:
            st.termination, st.error = "interrupted", exc.args[0]
            self.interrupted = exc
        finally:
            with self.guard.deferred():
                self.destroy_actors()
        if st.error:
            self.log(f"route {rid}: {st.termination}: {st.error}")
        return self._result(st)

    def _reset_route_counters(self) -> None:
        self._counts = {k: 0 for k in ("received", "applied_from_node", "timeouts", "max_consecutive_timeouts",
                                       "stale", "unknown", "duplicate")}
        self._latencies: list[float] = []
        self._kept_tokens: list[float] = []
        self._latency_sources: dict[str, int] = {"frame_stats": 0, "wall": 0}
        self._collision_log: list[dict] = []
        self._collision_events = 0
        self._invasion_log: list[dict] = []
        self._instruction_log: list[dict] = []
        self._stats.clear()
        self._kept.clear()
        self._delay = ControlDelay(self.cfg.fixed_delta_seconds, self.cfg.mode, initial=BRAKE)
        self._speeds: list[float] = []
        self._positions: list[tuple[float, float]] = []
        with self._events_lock:
            self._collisions.clear()
            self._invasions.clear()
        while not self._images.empty():
            self._images.get_nowait()

    def _setup(self, route: Any, st: _RouteState) -> None:
        cfg, carla = self.cfg, self.carla
        self._load_town(st.town)
        settings = self.world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = cfg.fixed_delta_seconds
        self.world.apply_settings(settings)
        self.map = self.world.get_map()
        if not st.town:
            st.town = str(getattr(self.map, "name", "")).rsplit("/", 1)[-1]
        if route is not None:
            sparse = np.array([[float(c) for c in p[:3]] for p in route.waypoints])
            if len(sparse) < 2:
                raise BridgeError(f"route {st.route_id} has {len(sparse)} waypoint(s); it needs at least 2")
            dense = road_polyline(self.map, sparse, carla.Location, cfg.route_step_m)
            junction = [self._is_junction(p) for p in dense]
            st.tracker = RouteTracker(dense)
            st.instructions = plan_instructions(dense, junction, lookahead_m=cfg.lookahead_m, turn_deg=cfg.turn_deg)
            # the whole route once, latched, as the CARLA ROS bridge's waypoint publisher does (ROS axes: y mirrored)
            self.io.publish(rc.ROUTE_TOPIC, rc.path_msg(np.column_stack((dense[:, 0], -dense[:, 1])), 0.0))
            spawn = self._spawn_transform(dense)
        else:
            points = self.map.get_spawn_points()
            if not points:
                raise BridgeError(f"the map {st.town} has no spawn points")
            spawn = points[cfg.spawn_index % len(points)]
        self._spawn_actors(spawn)
        self._set_instruction(st, st.instructions[0] if st.instructions else rc.FOLLOW_LANE)
        self._await_subscriber()

    def _load_town(self, town: str) -> None:
        if not town:
            return
        current = str(self.world.get_map().name)
        if current == town or current.endswith("/" + town):
            return
        if self.world.get_settings().synchronous_mode:  # a load under synchronous mode waits for ticks forever
            settings = self.world.get_settings()
            settings.synchronous_mode = False
            settings.fixed_delta_seconds = None
            self.world.apply_settings(settings)
        self.client.set_timeout(self.cfg.load_timeout)
        try:
            self.world = self.client.load_world(town)
        finally:
            self.client.set_timeout(self.cfg.timeout)

    def _is_junction(self, p: np.ndarray) -> bool:
        wp = self.map.get_waypoint(self.carla.Location(x=float(p[0]), y=float(p[1]), z=float(p[2])))
        return bool(wp is not None and wp.is_junction)

    def _spawn_transform(self, dense: np.ndarray) -> Any:
        carla = self.carla
        start = dense[0]
        wp = self.map.get_waypoint(carla.Location(x=float(start[0]), y=float(start[1]), z=float(start[2])))
        if wp is not None:
            loc, yaw = wp.transform.location, wp.transform.rotation.yaw
            return carla.Transform(carla.Location(x=loc.x, y=loc.y, z=loc.z + 0.5), carla.Rotation(yaw=yaw))
        ahead = dense[min(len(dense) - 1, 3)]
        yaw = math.degrees(math.atan2(ahead[1] - start[1], ahead[0] - start[0]))
        return carla.Transform(carla.Location(x=float(start[0]), y=float(start[1]), z=float(start[2]) + 0.5),
                               carla.Rotation(yaw=yaw))

    def _spawn_actors(self, transform: Any) -> None:
        cfg, carla = self.cfg, self.carla
        library = self.world.get_blueprint_library()

        def blueprint(name: str, **attributes: Any) -> Any:
            bp = library.find(name)
            for key, value in attributes.items():
                if bp.has_attribute(key):
                    bp.set_attribute(key, str(value))
            return bp

        try:
            ego_bp = blueprint(cfg.blueprint, role_name=rc.ROLE_NAME)
        except IndexError:
            raise BridgeError(f"no blueprint {cfg.blueprint!r} on this server: pass --blueprint "
                              "(e.g. vehicle.lincoln.mkz_2020)") from None
        self.ego = self.world.spawn_actor(ego_bp, transform)
        self.actors.append(self.ego)
        camera = self.world.spawn_actor(
            blueprint("sensor.camera.rgb", image_size_x=cfg.camera_width, image_size_y=cfg.camera_height,
                      fov=cfg.camera_fov, sensor_tick=0.0, role_name=rc.CAMERA_ID),
            carla.Transform(carla.Location(x=cfg.camera_x, z=cfg.camera_z)), attach_to=self.ego)
        self.actors.append(camera)
        collision = self.world.spawn_actor(blueprint("sensor.other.collision"), carla.Transform(),
                                           attach_to=self.ego)
        self.actors.append(collision)
        invasion = self.world.spawn_actor(blueprint("sensor.other.lane_invasion"), carla.Transform(),
                                          attach_to=self.ego)
        self.actors.append(invasion)
        camera.listen(self._on_image)
        collision.listen(self._on_collision)
        invasion.listen(self._on_invasion)

    def destroy_actors(self) -> None:
        """Stop the sensors and destroy every actor this bridge spawned (one batch; one by one if it fails)."""
        actors, self.actors, self.ego = list(self.actors), [], None
        if not actors:
            return
        for actor in actors:
            try:
                if getattr(actor, "is_listening", False):
                    actor.stop()
            except RuntimeError:
                pass
        failed = []
        try:
            responses = self.client.apply_batch_sync([self.carla.command.DestroyActor(a.id) for a in actors])
            failed = [a for a, r in zip(actors, responses or [], strict=False) if getattr(r, "error", "")]
        except RuntimeError as exc:
            self.log(f"batch destroy failed ({exc}); destroying one by one")
            failed = actors
        for actor in failed:
            try:
                actor.destroy()
            except RuntimeError as exc:
                self.log(f"could not destroy actor {getattr(actor, 'id', '?')}: {exc}")

    def _await_subscriber(self) -> None:
        deadline = self.clock() + self.cfg.wait_for_node
        while self.io.subscriber_count(rc.CAMERA_TOPIC) == 0:
            if self.clock() >= deadline:
                self.log(f"nobody subscribes {rc.CAMERA_TOPIC} after {self.cfg.wait_for_node:g} s; driving anyway "
                         "(is the node running, with the same ROS_DOMAIN_ID?)")
                return
            self.io.spin_once(0.1)

    # ---- sensor callbacks (CARLA's threads)
    def _on_image(self, image: Any) -> None:
        self._images.put(image)

    def _on_collision(self, event: Any) -> None:
        other = getattr(event, "other_actor", None)
        impulse = event.normal_impulse
        with self._events_lock:
            self._collisions.append((getattr(event, "frame", None), getattr(other, "id", 0),
                                     str(getattr(other, "type_id", "")), (impulse.x, impulse.y, impulse.z)))

    def _on_invasion(self, event: Any) -> None:
        types = [m.type for m in event.crossed_lane_markings]
        with self._events_lock:
            self._invasions.append((getattr(event, "frame", None), types))

    # ---- ROS callbacks (inside io.spin_once)
    def _on_control(self, msg: Any) -> None:
        self._counts["received"] += 1
        ns = rc.stamp_ns(msg.header.stamp)
        awaiting = self._awaiting_ns
        if awaiting is not None and rc.stamps_match(ns, awaiting):
            if self._answer is None:
                self._answer, self._answer_wall = msg, self.clock()
            else:
                self._counts["duplicate"] += 1
        elif awaiting is not None and ns < awaiting:
            self._counts["stale"] += 1  # the answer to an earlier frame, too late
        else:
            self._counts["unknown"] += 1  # a stamp that matches no published frame

    def _on_frame_stats(self, msg: Any) -> None:
        values = {kv.key: kv.value for kv in getattr(msg, "values", [])}
        parsed = rc.frame_stats_latency(values)
        if parsed is None:
            return
        self._stats_seen = True
        self._stats[parsed[0]] = parsed[1]
        try:
            layers = [float(v) for v in values.get("kept_tokens_per_layer", "").split()]
        except ValueError:
            layers = []
        if layers:
            self._kept[parsed[0]] = sum(layers) / len(layers)
        for table in (self._stats, self._kept):
            if len(table) > 256:
                for key in sorted(table)[:128]:
                    del table[key]

    # ---- the loop
    def _drive(self, st: _RouteState) -> None:
        cfg = self.cfg
        length = st.tracker.length if st.tracker else 0.0
        st.route_timeout_s = cfg.route_timeout if cfg.route_timeout is not None else 60.0 + 0.8 * length
        limit_ns = round((st.route_timeout_s if st.tracker else cfg.max_seconds) * rc.NS_PER_S)
        while not st.termination:
            self._tick(st)
            t_ns = st.tick * self.dt_ns
            if st.tracker is not None and st.tracker.completion >= COMPLETION_DONE:
                st.termination = "route_completed"
            elif cfg.stop_on_collision and self._collision_log:
                st.termination = "collision"
            elif st.tracker is not None and st.distance_to_route > cfg.deviation_m:
                st.termination = "route_deviation"
            elif st.slow_since_ns is not None and t_ns - st.slow_since_ns >= cfg.blocked_seconds * rc.NS_PER_S:
                st.termination = "agent_blocked"
            elif cfg.max_consecutive_timeouts and st.consecutive_timeouts >= cfg.max_consecutive_timeouts:
                st.termination = "node_unresponsive"
            elif t_ns >= limit_ns:
                st.termination = "route_timeout" if st.tracker else "max_seconds"
            elif cfg.max_ticks and st.tick >= cfg.max_ticks:
                st.termination = "max_ticks"

    def _tick(self, st: _RouteState) -> None:
        """One closed-loop step: tick, publish this tick's state, wait for its control, apply it."""
        frame = self.world.tick(self.cfg.tick_timeout)
        st.tick += 1
        if st.frame_base is None:
            st.frame_base = frame - st.tick
        t_ns = st.tick * self.dt_ns
        stamp = rc.stamp_from_ns(t_ns)
        image = self._wait_image(frame)
        transform = self.ego.get_transform()
        velocity = self.ego.get_velocity()
        self._track(st, transform, velocity, t_ns)
        self._publish_state(st, frame, stamp, transform, velocity)
        self._publish_image(image, stamp)
        published = self.clock()
        control = self._await_control(t_ns)
        self._apply(st, control, t_ns, published)

    def _wait_image(self, frame: int) -> Any:
        deadline = time.monotonic() + self.cfg.sensor_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                image = self._images.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise _SensorTimeout(f"no camera frame for simulator frame {frame} within "
                                     f"{self.cfg.sensor_timeout:g} s") from None
            if image.frame >= frame:
                return image

    def _event_stamp(self, st: _RouteState, frame: int | None) -> tuple[Any, float]:
        tick = st.tick if frame is None or st.frame_base is None else max(0, min(st.tick, frame - st.frame_base))
        ns = tick * self.dt_ns
        return rc.stamp_from_ns(ns), ns / rc.NS_PER_S

    def _publish_state(self, st: _RouteState, frame: int, stamp: Any, transform: Any, velocity: Any) -> None:
        from carla_msgs.msg import CarlaCollisionEvent, CarlaLaneInvasionEvent, CarlaStatus

        io = self.io
        io.publish(rc.CLOCK_TOPIC, rc.clock_msg(stamp))
        io.publish(rc.ODOMETRY_TOPIC, ros_odometry(transform, velocity, self.ego.get_angular_velocity(), stamp))
        io.publish(rc.VEHICLE_STATUS_TOPIC,
                   vehicle_status_msg(transform, velocity, self.ego.get_acceleration(), st.applied, stamp))
        with self._events_lock:
            collisions, self._collisions = self._collisions, []
            invasions, self._invasions = self._invasions, []
        for ev_frame, other_id, other_type, (ix, iy, iz) in collisions:
            ev_stamp, t = self._event_stamp(st, ev_frame)
            msg = CarlaCollisionEvent(other_actor_id=int(other_id))
            msg.header.stamp, msg.header.frame_id = ev_stamp, rc.EGO_FRAME
            msg.normal_impulse.x, msg.normal_impulse.y, msg.normal_impulse.z = ix, -iy, iz
            io.publish(rc.COLLISION_TOPIC, msg)
            self._collision_events += 1
            last = next((c for c in reversed(self._collision_log) if c["other_actor_id"] == other_id), None)
            if last is None or t - last["last_t"] > COLLISION_DEBOUNCE_S:
                self._collision_log.append({"t": t, "last_t": t, "other_actor_id": other_id, "other_type": other_type,
                                            "impulse": math.sqrt(ix * ix + iy * iy + iz * iz)})
            else:
                last["last_t"] = t
        for ev_frame, types in invasions:
            ev_stamp, t = self._event_stamp(st, ev_frame)
            msg = CarlaLaneInvasionEvent(crossed_lane_markings=[lane_marking_code(m) for m in types])
            msg.header.stamp, msg.header.frame_id = ev_stamp, rc.EGO_FRAME
            io.publish(rc.LANE_INVASION_TOPIC, msg)
            self._invasion_log.append({"t": t, "markings": [getattr(m, "name", str(m)) for m in types]})
        io.publish(rc.STATUS_TOPIC, CarlaStatus(frame=int(frame), fixed_delta_seconds=self.cfg.fixed_delta_seconds,
                                                synchronous_mode=True, synchronous_mode_running=True))
        if st.tracker is not None and st.instructions:
            index = min(st.tracker.point_index(), len(st.instructions) - 1)
            self._set_instruction(st, st.instructions[index], stamp)

    def _publish_image(self, image: Any, stamp: Any) -> None:
        pixels = np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)
        self.io.publish(rc.CAMERA_TOPIC, rc.image_msg(pixels, "bgra8", stamp, rc.CAMERA_FRAME))

    def _set_instruction(self, st: _RouteState, text: str, stamp: Any = None) -> None:
        if text == st.instruction:
            return
        from std_msgs.msg import String

        st.instruction = text
        self.io.publish(rc.INSTRUCTION_TOPIC, String(data=text))
        t = 0.0 if stamp is None else rc.time_of(stamp)
        self._instruction_log.append({"t": t, "text": text})

    def _spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = self.clock() + timeout_s
        while not done():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return done()
            self.io.spin_once(min(remaining, 0.05))
        return True

    def _await_control(self, t_ns: int) -> Any:
        self._awaiting_ns, self._answer = t_ns, None
        self._spin_until(lambda: self._answer is not None, self.cfg.control_timeout)
        return self._answer

    def _apply(self, st: _RouteState, msg: Any, t_ns: int, published: float) -> None:
        """Apply this tick's control: the node's answer through the ControlDelay (sync: at once; latency:
        ceil(latency / dt) ticks later), or on a timeout the `--on-timeout` choice."""
        if msg is None:
            self._counts["timeouts"] += 1
            st.consecutive_timeouts += 1
            self._counts["max_consecutive_timeouts"] = max(self._counts["max_consecutive_timeouts"],
                                                           st.consecutive_timeouts)
            in_effect = self._delay.control_for(st.tick)
            control = {"hold": in_effect, "brake": BRAKE, "zero": ZERO}[self.cfg.on_timeout]
        else:
            st.consecutive_timeouts = 0
            self._counts["applied_from_node"] += 1
            self._delay.submit(st.tick, rc.control_tuple(msg), self._latency(t_ns, published))
            control = self._delay.control_for(st.tick)
        st.applied = tuple(control if control is not None else BRAKE)
        steer, throttle, brake, hand_brake, reverse = st.applied
        self.ego.apply_control(self.carla.VehicleControl(throttle=float(throttle), steer=float(steer),
                                                         brake=float(brake), hand_brake=bool(hand_brake),
                                                         reverse=bool(reverse)))

    def _latency(self, t_ns: int, published: float) -> float:
        """The node's compute time for frame `t_ns` (seconds): its frame_stats pipeline_ms, else wall time."""
        def stats() -> float | None:
            for ns, ms in self._stats.items():
                if rc.stamps_match(ns, t_ns):
                    return ms
            return None

        # The node sends a frame's stats just after its control; probe the first frames of a route for them.
        if stats() is None and (self._stats_seen or len(self._latencies) < STATS_PROBE_FRAMES):
            self._spin_until(lambda: stats() is not None, self.cfg.stats_wait)
        ms = stats()
        if ms is not None:
            self._latency_sources["frame_stats"] += 1
            latency = ms / 1e3
        else:
            self._latency_sources["wall"] += 1
            latency = max(0.0, self._answer_wall - published)
        self._latencies.append(latency * 1e3)
        kept = next((v for ns, v in self._kept.items() if rc.stamps_match(ns, t_ns)), None)
        if kept is not None:
            self._kept_tokens.append(kept)
        return latency

    def _track(self, st: _RouteState, transform: Any, velocity: Any, t_ns: int) -> None:
        speed = math.hypot(velocity.x, velocity.y)
        self._speeds.append(speed)
        self._positions.append((transform.location.x, -transform.location.y))  # ROS axes, as the odometry
        if speed < BLOCKED_SPEED_MPS:
            st.slow_since_ns = t_ns if st.slow_since_ns is None else st.slow_since_ns
        else:
            st.slow_since_ns = None
        if st.tracker is not None:
            st.distance_to_route = st.tracker.update(transform.location.x, transform.location.y)

    # ---- results
    def _result(self, st: _RouteState) -> RouteResult:
        cfg = self.cfg
        infractions = []
        for c in self._collision_log:
            kind = (COLLISION_PEDESTRIAN if c["other_type"].startswith("walker.") else
                    COLLISION_VEHICLE if c["other_type"].startswith("vehicle.") else COLLISION_LAYOUT)
            infractions.append(Infraction(kind, c["t"], f"{c['other_type'] or 'unknown'} #{c['other_actor_id']}"))
        sim_time = st.tick * self.dt_ns / rc.NS_PER_S
        terminating = {"route_deviation": ROUTE_DEVIATION, "agent_blocked": VEHICLE_BLOCKED,
                       "route_timeout": ROUTE_TIMEOUT}
        if st.termination in terminating:
            infractions.append(Infraction(terminating[st.termination], sim_time, st.termination))
        completed = st.termination == "route_completed"
        completion = 1.0 if completed else (st.tracker.completion if st.tracker is not None else 0.0)
        failure = None if completed else FAILURES.get(st.termination, st.termination or "not started")
        if st.tracker is None and not completed:
            failure = f"free drive, no route ({failure})"
        return RouteResult(
            route_id=st.route_id, seed=None, length_m=st.tracker.length if st.tracker is not None else 0.0,
            completion=completion, infractions=infractions, status=route_status(completion, infractions, failure),
            duration_s=sim_time, ticks=st.tick, speeds_mps=list(self._speeds), positions=list(self._positions),
            dt=cfg.fixed_delta_seconds, control_timeouts=self._counts["timeouts"],
            latencies_ms=list(self._latencies), kept_tokens=list(self._kept_tokens),
            meta={
                "simulator": "carla", "town": st.town, "mode": cfg.mode, "control_delay": self._delay.describe(),
                "termination": st.termination or "not_started", "error": st.error,
                "progress_completion": None if st.tracker is None else st.tracker.completion,
                "wall_time_s": round(self.clock() - st.wall_start, 3),
                "collisions": [{k: v for k, v in c.items() if k != "last_t"} for c in self._collision_log],
                "collision_events": self._collision_events,
                "lane_invasions": list(self._invasion_log),
                "control": {**self._counts, "timeout_s": cfg.control_timeout, "on_timeout": cfg.on_timeout},
                "latency_sources": dict(self._latency_sources),
                "instructions": list(self._instruction_log),
                "config": {"blueprint": cfg.blueprint,
                           "camera": {"width": cfg.camera_width, "height": cfg.camera_height, "fov": cfg.camera_fov,
                                      "x": cfg.camera_x, "z": cfg.camera_z},
                           "route_timeout_s": st.route_timeout_s, "blocked_seconds": cfg.blocked_seconds,
                           "deviation_m": cfg.deviation_m, "stop_on_collision": cfg.stop_on_collision},
            })


def write_result(result: RouteResult, folder: str | Path) -> Path:
    """Write `result.to_dict()` as route_<id>_<mode>.json in `folder` (atomically); returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(result.route_id))
    path = folder / f"route_{safe}_{result.meta.get('mode', 'sync')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = BridgeConfig()
    p = argparse.ArgumentParser(
        prog="python -m autoprune_sim.carla_bridge",
        description="Closed loop between a CARLA 0.9.16 server (synchronous mode) and the autoprune node over the "
        "CARLA ROS topic contract. Arguments after --ros-args go to rclpy (e.g. topic remaps). See docs/carla.md.")
    g = p.add_argument_group("server")
    g.add_argument("--host", default=d.host)
    g.add_argument("--port", type=int, default=d.port)
    g.add_argument("--timeout", type=float, default=d.timeout, help="client RPC timeout and per-try connect timeout, s")
    g.add_argument("--retries", type=int, default=d.retries, help="connection tries")
    g.add_argument("--retry-wait", type=float, default=d.retry_wait, help="pause between tries, s")
    g.add_argument("--load-timeout", type=float, default=d.load_timeout, help="client timeout while a town loads, s")
    g = p.add_argument_group("route")
    g.add_argument("--routes", type=Path, help="Leaderboard route XML; without it: free drive from a spawn point")
    g.add_argument("--routes-subset", default=None, help="route ids / ranges to run (as load_routes takes them)")
    g.add_argument("--town", default=None, help="free drive: town to load (default: the server's current one)")
    g.add_argument("--spawn-index", type=int, default=d.spawn_index, help="free drive: map spawn point index")
    g.add_argument("--max-seconds", type=float, default=d.max_seconds, help="free drive: sim seconds")
    g.add_argument("--route-timeout", type=float, default=None, help="sim seconds (default 60 + 0.8 s per metre)")
    g.add_argument("--blocked-seconds", type=float, default=d.blocked_seconds,
                   help=f"end when slower than {BLOCKED_SPEED_MPS} m/s this long (sim s)")
    g.add_argument("--deviation-m", type=float, default=d.deviation_m, help="end when this far from the route")
    g.add_argument("--stop-on-collision", action="store_true", help="end a route at its first collision")
    g.add_argument("--max-ticks", type=int, default=d.max_ticks, help="end after this many ticks (0: no limit)")
    g.add_argument("--lookahead-m", type=float, default=d.lookahead_m, help="announce a junction this far ahead")
    g = p.add_argument_group("ego and sensors")
    g.add_argument("--blueprint", default=d.blueprint)
    g.add_argument("--camera-width", type=int, default=d.camera_width)
    g.add_argument("--camera-height", type=int, default=d.camera_height)
    g.add_argument("--camera-fov", type=float, default=d.camera_fov)
    g.add_argument("--camera-x", type=float, default=d.camera_x)
    g.add_argument("--camera-z", type=float, default=d.camera_z)
    g = p.add_argument_group("loop")
    g.add_argument("--fixed-delta-seconds", type=float, default=d.fixed_delta_seconds)
    g.add_argument("--mode", choices=MODES, default=d.mode,
                   help="sync: each control applies at its own frame; latency: ceil(latency/dt) ticks later")
    g.add_argument("--control-timeout", type=float, default=d.control_timeout,
                   help="wall seconds to wait for the control of each frame")
    g.add_argument("--on-timeout", choices=ON_TIMEOUT, default=d.on_timeout,
                   help="when no control came: hold the control in effect, full brake, or zero (the Leaderboard's)")
    g.add_argument("--max-consecutive-timeouts", type=int, default=d.max_consecutive_timeouts,
                   help="end the route after this many in a row (0: never)")
    g.add_argument("--stats-wait", type=float, default=d.stats_wait,
                   help="latency mode: wall seconds to wait for a frame's /autoprune/frame_stats")
    g.add_argument("--wait-for-node", type=float, default=d.wait_for_node,
                   help="wall seconds to wait for a camera subscriber before the first tick")
    g.add_argument("--tick-timeout", type=float, default=d.tick_timeout, help="world.tick() timeout, s")
    g.add_argument("--sensor-timeout", type=float, default=d.sensor_timeout, help="camera frame timeout, s")
    p.add_argument("--output", type=Path, default=d.output, help="folder for route_<id>_<mode>.json")
    p.add_argument("--debug", action="store_true", help="print tracebacks of unexpected errors")
    return p


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    """A validated BridgeConfig from parsed arguments."""
    names = BridgeConfig.__dataclass_fields__
    cfg = BridgeConfig(**{k: v for k, v in vars(args).items() if k in names})
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    args = build_parser().parse_args(argv[:len(argv) - len(ros_args)])
    guard = SignalGuard()
    try:
        with guard.installed():
            return _main(args, ros_args, guard)
    except BridgeError as exc:
        print(f"carla_bridge: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(f"carla_bridge: stopped by {exc.args[0]}; spawned actors destroyed, world settings restored",
              file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:  # one line, not a traceback, unless asked for
        if args.debug:
            raise
        print(f"carla_bridge: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_ROUTE_FAILED


def _main(args: argparse.Namespace, ros_args: list[str], guard: SignalGuard) -> int:
    cfg = config_from_args(args)
    carla = _carla()
    routes = None
    if args.routes is not None:
        try:
            routes = list(load_routes(args.routes, args.routes_subset))
        except (OSError, ValueError) as exc:
            raise BridgeError(f"cannot read routes: {exc}") from None
        if not routes:
            raise BridgeError(f"no routes in {args.routes} match --routes-subset {args.routes_subset!r}")
    client = connect(cfg.host, cfg.port, cfg.timeout, cfg.retries, retry_wait=cfg.retry_wait,
                     client_factory=carla.Client)
    server, mine = client.get_server_version(), client.get_client_version()
    if server != mine:
        print(f"carla_bridge: warning: server {server} vs client {mine}; use matching versions", file=sys.stderr)
    io = RosIO(ros_args=ros_args[1:])
    try:
        bridge = CarlaBridge(client, io, cfg, carla_module=carla, guard=guard)
        results = bridge.run(routes)
    finally:
        io.close()
    failed = [r for r in results if r.meta["termination"] in ("simulator_error", "sensor_timeout", "setup_failed")]
    return EXIT_ROUTE_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
