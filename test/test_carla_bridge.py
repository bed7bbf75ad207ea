"""The CARLA bridge without a CARLA server: the CLI's failure and help, the shared ROS contract's conversions, and
the tick loop against a fake CARLA client (a world whose tick() drives a car along an L-shaped road)."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import carla
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from carla_msgs.msg import CarlaEgoVehicleControl
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from autoprune_sim import carla_bridge as cb
from autoprune_sim import ros_contract as rc
from autoprune_sim.metrics import RouteResult
from autoprune_sim.routes import Route, load_routes

REPO = Path(__file__).resolve().parents[1]
DT = 0.05


# ---------------------------------------------------------------------------------------------------- CLI
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_fails_fast_with_one_clear_line() -> None:
    port = _free_port()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autoprune_sim.carla_bridge", "--port", str(port), "--timeout", "0.5",
                           "--retries", "2", "--retry-wait", "0.1"], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == cb.EXIT_NO_SERVER != 0
    assert elapsed < 30
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"no CARLA server answered at 127.0.0.1:{port} after 2 tries (timeout 0.5 s each)" in lines[0]
    assert "--host/--port" in lines[0]


def test_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "autoprune_sim.carla_bridge", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--routes", "--mode", "--control-timeout", "--on-timeout", "--fixed-delta-seconds", "--retries"):
        assert option in proc.stdout


def test_bad_arguments_are_one_line(capsys) -> None:
    assert cb.main(["--fixed-delta-seconds", "0.5"]) == cb.EXIT_USAGE
    assert cb.main(["--routes", "/nonexistent/routes.xml"]) == cb.EXIT_SETUP
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "(0, 0.1]" in lines[0] and "cannot read routes" in lines[1]


def test_connect_retries_then_names_cause_and_fix() -> None:
    tries, sleeps = [], []

    class Refusing:
        def __init__(self, host: str, port: int) -> None:
            tries.append((host, port))

        def set_timeout(self, t: float) -> None:
            pass

        def get_world(self):
            raise RuntimeError("time-out of 500ms while waiting for the simulator")

    with pytest.raises(cb.BridgeError) as err:
        cb.connect("10.0.0.9", 2100, 0.5, 3, retry_wait=0.25, client_factory=Refusing, sleep=sleeps.append)
    assert tries == [("10.0.0.9", 2100)] * 3 and sleeps == [0.25, 0.25]
    assert err.value.exit_code == cb.EXIT_NO_SERVER
    assert "no CARLA server answered at 10.0.0.9:2100 after 3 tries" in str(err.value)

    class Answering(Refusing):
        def get_world(self):
            return "world"

    assert isinstance(cb.connect("h", 1, 0.5, 1, client_factory=Answering), Answering)


# ---------------------------------------------------------------------------------------------------- contract
def test_image_msg_keeps_bgra_bytes() -> None:
    frame = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    msg = rc.image_msg(frame, "bgra8", rc.stamp(1.5), rc.CAMERA_FRAME_ID)
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian) == (2, 3, 12, "bgra8", 0)
    assert bytes(msg.data) == frame.tobytes()
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1, 500_000_000, "hero/rgb_front")
    mono = rc.image_msg(np.zeros((4, 5), np.uint8), "mono8", 0.0, "f")
    assert (mono.step, len(mono.data)) == (5, 20)
    rgb = rc.image_msg(frame[:, ::-1, :3], "rgb8", Time(sec=2), "f")  # non-contiguous input is packed
    assert rgb.step == 9 and bytes(rgb.data) == np.ascontiguousarray(frame[:, ::-1, :3]).tobytes()
    with pytest.raises(ValueError, match="needs shape"):
        rc.image_msg(frame[..., :3], "bgra8", 0.0, "f")
    with pytest.raises(ValueError, match="uint8"):
        rc.image_msg(frame.astype(np.float32), "bgra8", 0.0, "f")
    with pytest.raises(ValueError, match="unsupported encoding"):
        rc.image_msg(frame, "yuv422", 0.0, "f")


def test_odometry_yaw_quaternion_round_trip() -> None:
    for yaw in np.linspace(-math.pi + 1e-6, math.pi, 73):
        msg = rc.odometry_msg(1.0, -2.0, yaw, 3.0, 0.5, -0.2, 4.25, z=0.3)
        q = msg.pose.pose.orientation
        assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, rel_tol=1e-12)
        assert math.isclose(math.cos(rc.quaternion_yaw(q) - yaw), 1.0, abs_tol=1e-12)
    assert (msg.header.frame_id, msg.child_frame_id) == ("map", "hero")
    assert (msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z) == (1.0, -2.0, 0.3)
    assert (msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.angular.z) == (3.0, 0.5, -0.2)
    assert rc.time_of(msg.header.stamp) == 4.25
    x, y, z, w = rc.rpy_quaternion(0.0, 0.0, 0.7)
    assert np.allclose((x, y, z, w), rc.yaw_quaternion(0.7))


def test_stamps_are_exact_over_10000_ticks() -> None:
    drifting = 0.0
    drifted = 0
    for k in range(10_000):
        exact_ns = k * 50_000_000
        s = rc.tick_stamp(k, DT)
        assert rc.stamp_ns(s) == exact_ns and (s.sec, s.nanosec) == divmod(exact_ns, rc.NS_PER_S)
        assert rc.stamp(k * DT) == s  # seconds from the tick count round to the same nanosecond
        assert rc.stamp(rc.time_of(s)) == s  # and back
        assert rc.clock_msg(s).clock == s
        drifted += int(drifting * 1e9) != exact_ns  # what summing dt and truncating would have produced
        drifting += DT
    assert drifted > 0  # float accumulation drifts; tick counting does not
    assert rc.stamps_match(rc.stamp(1.0), rc.stamp(1.0009)) and not rc.stamps_match(rc.stamp(1.0), rc.stamp(1.0011))
    assert rc.parse_stamp_text("12.050000000") == 12_050_000_000 and rc.parse_stamp_text("3") == 3 * rc.NS_PER_S
    with pytest.raises(ValueError):
        rc.parse_stamp_text("1.2.3")
    with pytest.raises(ValueError):
        rc.stamp(-0.1)


def test_control_tuple_clamps_and_makes_nan_a_stop() -> None:
    msg = CarlaEgoVehicleControl(steer=-0.3, throttle=0.7, brake=0.0, hand_brake=True, reverse=False)
    steer, throttle, brake, hand_brake, reverse = rc.control_tuple(msg)
    assert math.isclose(steer, -0.3, rel_tol=1e-6) and math.isclose(throttle, 0.7, rel_tol=1e-6)
    assert (brake, hand_brake, reverse) == (0.0, True, False)
    assert rc.control_tuple(CarlaEgoVehicleControl(steer=2.0, throttle=1.5, brake=-1.0, reverse=True)) == \
        (1.0, 1.0, 0.0, False, True)
    assert rc.control_tuple(CarlaEgoVehicleControl(steer=float("nan"), throttle=1.0)) == (0.0, 0.0, 1.0, False, False)


def test_frame_stats_latency_and_qos() -> None:
    status = DiagnosticStatus(values=[KeyValue(key="stamp", value="4.100000000"), KeyValue(key="pipeline_ms",
                                                                                           value="87.50")])
    assert rc.frame_stats_latency(status) == (4_100_000_000, 87.5)
    assert rc.frame_stats_latency({"stamp": "4.1"}) is None
    assert rc.frame_stats_latency({"stamp": "x", "pipeline_ms": "1"}) is None
    from rclpy.qos import DurabilityPolicy

    assert rc.LATCHED_QOS.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert rc.INSTRUCTIONS == (rc.FOLLOW_LANE, rc.TURN_LEFT, rc.TURN_RIGHT, rc.GO_STRAIGHT)


@pytest.mark.skipif(not (REPO / ".venv-sim/bin/python").exists(), reason="no simulator environment (.venv-sim)")
def test_contract_imports_in_the_simulator_environment() -> None:
    code = "import numpy, autoprune_sim.ros_contract as c; print(numpy.__version__, c.CAMERA_TOPIC)"
    proc = subprocess.run([str(REPO / ".venv-sim/bin/python"), "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == rc.CAMERA_TOPIC


# ---------------------------------------------------------------------------------------------------- geometry
def test_instructions_from_junctions_and_geometry() -> None:
    right = cb.densify([(0, 0, 0), (100, 0, 0), (100, 50, 0)], 1.0)  # CARLA axes: +y is to the right of +x
    s = cb.arc_lengths(right)
    junction = [95 <= v <= 105 for v in s]
    plan = cb.plan_instructions(right, junction, lookahead_m=40.0)
    assert plan[0] == rc.FOLLOW_LANE and plan[int(np.searchsorted(s, 60))] == rc.TURN_RIGHT
    assert plan[int(np.searchsorted(s, 104))] == rc.TURN_RIGHT and plan[-1] == rc.FOLLOW_LANE
    left = right * np.array([1, -1, 1])
    assert rc.TURN_LEFT in cb.plan_instructions(left, junction)
    straight = cb.densify([(0, 0, 0), (150, 0, 0)], 1.0)
    assert rc.GO_STRAIGHT in cb.plan_instructions(straight, [95 <= v <= 105 for v in cb.arc_lengths(straight)])
    assert set(cb.plan_instructions(right)) == {rc.FOLLOW_LANE, rc.TURN_RIGHT}  # geometry only: no map
    assert set(cb.plan_instructions(straight)) == {rc.FOLLOW_LANE}


def test_route_tracker_progress_and_deviation() -> None:
    tracker = cb.RouteTracker(cb.densify([(0, 0, 0), (100, 0, 0), (100, 50, 0)], 1.0))
    assert tracker.length == pytest.approx(150.0)
    assert tracker.update(30.0, 2.0) == pytest.approx(2.0)
    assert tracker.completion == pytest.approx(0.2)
    tracker.update(10.0, 0.0)  # driving back never lowers progress
    assert tracker.completion == pytest.approx(0.2)
    for x in range(30, 101, 5):
        tracker.update(float(x), 0.0)
    tracker.update(101.0, 30.0)
    assert tracker.completion == pytest.approx(130 / 150)
    assert tracker.update(60.0, 40.0) > 30  # far off the route


def test_carla_to_ros_conversions() -> None:
    transform = carla.Transform(carla.Location(x=10.0, y=5.0, z=1.0), carla.Rotation(yaw=90.0))
    odom = cb.ros_odometry(transform, carla.Vector3D(0.0, 4.0, 0.0), carla.Vector3D(0.0, 0.0, 30.0), rc.stamp(1.0))
    assert odom.pose.pose.position.y == -5.0
    assert rc.quaternion_yaw(odom.pose.pose.orientation) == pytest.approx(-math.pi / 2)
    assert odom.twist.twist.linear.x == pytest.approx(4.0) and abs(odom.twist.twist.linear.y) < 1e-9
    assert odom.twist.twist.angular.z == pytest.approx(-math.radians(30.0))
    assert [cb.lane_marking_code(t) for t in (carla.LaneMarkingType.Broken, carla.LaneMarkingType.SolidSolid,
                                              carla.LaneMarkingType.Grass)] == [1, 2, 0]


# ---------------------------------------------------------------------------------------------------- fakes
ROAD = np.array([(0.0, 0.0), (100.0, 0.0), (100.0, 60.0)])  # CARLA axes: the road turns right at x = 100
ROAD_S = cb.arc_lengths(ROAD)
JUNCTION = (95.0, 105.0)  # arc-length span of the junction


def _road_at(s: float) -> tuple[float, float, float]:
    s = min(max(s, 0.0), ROAD_S[-1])
    x, y = np.interp(s, ROAD_S, ROAD[:, 0]), np.interp(s, ROAD_S, ROAD[:, 1])
    return float(x), float(y), 0.0 if s < 100.0 else 90.0


class FakeWaypoint:
    def __init__(self, s: float) -> None:
        self.s = s
        x, y, yaw = _road_at(s)
        self.transform = carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=yaw))
        self.is_junction = JUNCTION[0] <= s <= JUNCTION[1]

    def next(self, d: float) -> list[FakeWaypoint]:
        return [FakeWaypoint(self.s + d)] if self.s + d <= ROAD_S[-1] else []


class FakeMap:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_waypoint(self, location) -> FakeWaypoint:
        p = np.array([location.x, location.y])
        best = min(((np.linalg.norm(p - (a + (b - a) * t)), s0 + t * np.linalg.norm(b - a))
                    for a, b, s0 in zip(ROAD[:-1], ROAD[1:], ROAD_S[:-1], strict=True)
                    for t in [float(np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1))]))
        return FakeWaypoint(best[1])

    def get_spawn_points(self) -> list:
        return [carla.Transform(carla.Location(x=0.0, y=0.0, z=0.5))]


@dataclass
class FakeSettings:
    synchronous_mode: bool = False
    fixed_delta_seconds: float | None = None
    no_rendering_mode: bool = False


class FakeBlueprint:
    def __init__(self, name: str) -> None:
        self.id, self.attributes = name, {}

    def has_attribute(self, key: str) -> bool:
        return True

    def set_attribute(self, key: str, value: str) -> None:
        self.attributes[key] = value


class FakeLibrary:
    def find(self, name: str) -> FakeBlueprint:
        if not name.startswith(("vehicle.", "sensor.")):
            raise IndexError(f"blueprint {name!r} not found")
        return FakeBlueprint(name)


class FakeActor:
    def __init__(self, world: FakeWorld, actor_id: int, bp: FakeBlueprint, parent=None) -> None:
        self.world, self.id, self.type_id, self.attributes, self.parent = world, actor_id, bp.id, bp.attributes, parent
        self.callback, self.is_listening, self.destroyed = None, False, False

    def listen(self, callback) -> None:
        self.callback, self.is_listening = callback, True

    def stop(self) -> None:
        self.is_listening = False

    def destroy(self) -> bool:
        self.destroyed = True
        self.world.actors.pop(self.id, None)
        return True


class FakeVehicle(FakeActor):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.s, self.v, self.control, self.applied = 0.0, 0.0, carla.VehicleControl(), []

    def apply_control(self, control) -> None:
        self.control = control
        self.applied.append(control)

    def step(self, dt: float) -> None:
        self.v = max(0.0, self.v + (4.0 * self.control.throttle - 8.0 * self.control.brake) * dt)
        self.s += self.v * dt

    def get_transform(self):
        x, y, yaw = _road_at(self.s)
        return carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=yaw))

    def get_velocity(self):
        yaw = math.radians(_road_at(self.s)[2])
        return carla.Vector3D(self.v * math.cos(yaw), self.v * math.sin(yaw), 0.0)

    def get_angular_velocity(self):
        return carla.Vector3D(0.0, 0.0, 0.0)

    def get_acceleration(self):
        return carla.Vector3D(0.0, 0.0, 0.0)


@dataclass
class FakeImage:
    frame: int
    width: int
    height: int
    raw_data: bytes


@dataclass
class FakeMarking:
    type: object


class FakeWorld:
    def __init__(self, map_name: str = "Carla/Maps/Town01") -> None:
        self.settings = FakeSettings()
        self.original = replace(self.settings)
        self.map = FakeMap(map_name)
        self.actors: dict[int, FakeActor] = {}
        self.spawned: list[FakeActor] = []
        self.frame, self.ticks, self.next_id = 5000, 0, 100
        self.fail_at: int | None = None
        self.hook = None  # called with the tick number inside tick()
        self.collide_at: set[int] = set()
        self.invade_at: set[int] = set()

    def get_settings(self) -> FakeSettings:
        return replace(self.settings)

    def apply_settings(self, settings: FakeSettings) -> int:
        self.settings = replace(settings)
        return self.frame

    def get_map(self) -> FakeMap:
        return self.map

    def get_blueprint_library(self) -> FakeLibrary:
        return FakeLibrary()

    def spawn_actor(self, bp: FakeBlueprint, transform, attach_to=None) -> FakeActor:
        self.next_id += 1
        kind = FakeVehicle if bp.id.startswith("vehicle.") else FakeActor
        actor = kind(self, self.next_id, bp, attach_to)
        self.actors[actor.id] = actor
        self.spawned.append(actor)
        return actor

    @property
    def ego(self) -> FakeVehicle:
        return next(a for a in self.spawned if isinstance(a, FakeVehicle))

    def tick(self, seconds: float = 0.0) -> int:
        assert self.settings.synchronous_mode and self.settings.fixed_delta_seconds == DT
        self.ticks += 1
        if self.hook is not None:
            self.hook(self.ticks)
        if self.fail_at == self.ticks:
            raise RuntimeError("time-out of 10000ms while waiting for the simulator")
        self.frame += 1
        for actor in list(self.actors.values()):
            if isinstance(actor, FakeVehicle):
                actor.step(DT)
        for actor in list(self.actors.values()):
            if not actor.is_listening:
                continue
            if actor.type_id == "sensor.camera.rgb":
                w, h = int(actor.attributes["image_size_x"]), int(actor.attributes["image_size_y"])
                actor.callback(FakeImage(self.frame, w, h, bytes([self.ticks % 256]) * (w * h * 4)))
            elif actor.type_id == "sensor.other.collision" and self.ticks in self.collide_at:
                other = type("Other", (), {"id": 77, "type_id": "vehicle.tesla.model3"})()
                actor.callback(type("Collision", (), {"frame": self.frame, "other_actor": other,
                                                      "normal_impulse": carla.Vector3D(100.0, 0.0, 0.0)})())
            elif actor.type_id == "sensor.other.lane_invasion" and self.ticks in self.invade_at:
                actor.callback(type("Invasion", (), {"frame": self.frame, "crossed_lane_markings": [
                    FakeMarking(carla.LaneMarkingType.Solid)]})())
        return self.frame


class FakeClient:
    def __init__(self, world: FakeWorld) -> None:
        self.world, self.batches, self.loaded = world, [], []

    def get_world(self) -> FakeWorld:
        return self.world

    def set_timeout(self, seconds: float) -> None:
        pass

    def load_world(self, town: str) -> FakeWorld:
        self.loaded.append(town)
        self.world.map = FakeMap(f"Carla/Maps/{town}")
        return self.world

    def get_server_version(self) -> str:
        return "0.9.16"

    def get_client_version(self) -> str:
        return "0.9.16"

    def apply_batch_sync(self, commands) -> list:
        ids = [c.actor_id for c in commands]
        self.batches.append(ids)
        for actor_id in ids:
            self.world.actors[actor_id].destroy()
        return [type("Response", (), {"error": ""})() for _ in ids]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeIO:
    """Stands in for RosIO: records what is published; `responder(image_msg)` returns (delay_s, kind, msg) answers
    that arrive `delay_s` (fake) seconds after the frame, kind "control" or "stats"."""

    def __init__(self, clock: FakeClock, responder) -> None:
        self.clock, self.responder = clock, responder
        self.published: list[tuple[str, object]] = []
        self.inbox: deque = deque()
        self.on_control = self.on_frame_stats = None

    def publish(self, topic: str, msg) -> None:
        self.published.append((topic, msg))
        if topic == rc.CAMERA_TOPIC:
            for delay, kind, answer in self.responder(msg):
                self.inbox.append((self.clock.t + delay, kind, answer))
            self.inbox = deque(sorted(self.inbox, key=lambda item: item[0]))

    def subscriber_count(self, topic: str) -> int:
        return 1

    def spin_once(self, timeout_s: float) -> None:
        if self.inbox and self.inbox[0][0] <= self.clock.t + timeout_s:
            at, kind, msg = self.inbox.popleft()
            self.clock.t = max(self.clock.t, at)
            (self.on_control if kind == "control" else self.on_frame_stats)(msg)
        else:
            self.clock.t += timeout_s

    def topic(self, name: str) -> list:
        return [m for t, m in self.published if t == name]


def control(stamp: Time, steer: float = 0.1, throttle: float = 0.5, brake: float = 0.0) -> CarlaEgoVehicleControl:
    msg = CarlaEgoVehicleControl(steer=steer, throttle=throttle, brake=brake)
    msg.header.stamp = stamp
    return msg


def stats(stamp: Time, pipeline_ms: float) -> DiagnosticStatus:
    return DiagnosticStatus(values=[KeyValue(key="stamp", value=f"{stamp.sec}.{stamp.nanosec:09d}"),
                                    KeyValue(key="pipeline_ms", value=f"{pipeline_ms:.2f}"),
                                    KeyValue(key="kept_tokens_per_layer", value="64 32")])


ROUTE = Route(id="L", town="Town01", waypoints=[(0.0, 0.0, 0.0), (100.0, 0.0, 0.0), (100.0, 50.0, 0.0)])


def make_bridge(tmp_path: Path, responder, world: FakeWorld | None = None, **overrides):
    clock = FakeClock()
    world = world or FakeWorld()
    client = FakeClient(world)
    io = FakeIO(clock, responder)
    settings = {"camera_width": 8, "camera_height": 6, "control_timeout": 0.5, "wait_for_node": 0.0,
                "output": tmp_path, **overrides}
    cfg = cb.BridgeConfig(**settings)
    logs: list[str] = []
    bridge = cb.CarlaBridge(client, io, cfg, carla_module=carla, clock=clock, log=logs.append)
    return bridge, world, client, io, logs


def assert_cleaned_up(world: FakeWorld, client: FakeClient) -> None:
    assert len(world.spawned) == 4 and world.actors == {}
    assert client.batches and sorted(client.batches[-1]) == sorted(a.id for a in world.spawned)
    assert all(not a.is_listening for a in world.spawned)
    assert world.settings == world.original  # asynchronous, variable step: as before the bridge


# ---------------------------------------------------------------------------------------------------- the loop
def test_matching_controls_are_applied_and_everything_is_stamped(tmp_path) -> None:
    bridge, world, client, io, _ = make_bridge(tmp_path, lambda img: [(0.01, "control", control(img.header.stamp))],
                                               max_ticks=5)
    [result] = bridge.run([ROUTE])
    applied = world.ego.applied
    assert len(applied) == 5
    assert all(math.isclose(c.throttle, 0.5, rel_tol=1e-6) and math.isclose(c.steer, 0.1, rel_tol=1e-6)
               for c in applied)
    assert result.control_timeouts == 0 and result.ticks == 5 and result.meta["termination"] == "max_ticks"
    assert result.meta["control"]["applied_from_node"] == 5 and result.meta["mode"] == "sync"
    assert result.meta["control_delay"]["mode"] == "sync"
    expected = [rc.tick_stamp(k, DT) for k in range(1, 6)]
    assert [m.clock for m in io.topic(rc.CLOCK_TOPIC)] == expected
    images = io.topic(rc.CAMERA_TOPIC)
    assert [m.header.stamp for m in images] == expected
    assert {(m.encoding, m.step, m.width, m.height, m.header.frame_id) for m in images} == \
        {("bgra8", 32, 8, 6, "hero/rgb_front")}
    for topic in (rc.ODOMETRY_TOPIC, rc.VEHICLE_STATUS_TOPIC):
        assert [m.header.stamp for m in io.topic(topic)] == expected
    assert [m.frame for m in io.topic(rc.STATUS_TOPIC)] == list(range(5001, 5006))
    assert io.topic(rc.INSTRUCTION_TOPIC)[0].data == rc.FOLLOW_LANE
    # the ego was spawned as the hero with the configured camera
    ego, camera = world.spawned[0], world.spawned[1]
    assert ego.attributes["role_name"] == "hero" and ego.type_id == "vehicle.lincoln.mkz_2020"
    assert camera.parent is ego and camera.attributes["fov"] == "90.0"
    assert_cleaned_up(world, client)
    saved = json.loads((tmp_path / "route_L_sync.json").read_text())
    assert RouteResult.from_dict(saved).meta["mode"] == "sync"


def test_mismatched_and_late_controls_are_ignored(tmp_path) -> None:
    def responder(img):
        ns = rc.stamp_ns(img.header.stamp)
        return [(0.01, "control", control(rc.stamp_from_ns(ns + 10_000_000), throttle=1.0)),  # 10 ms off
                (0.02, "control", control(rc.stamp_from_ns(ns - 50_000_000), throttle=1.0))]  # previous frame's

    bridge, world, client, _, _ = make_bridge(tmp_path, responder, max_ticks=3, control_timeout=0.1)
    [result] = bridge.run([ROUTE], write=False)
    assert all(c.throttle == 0.0 and c.brake == 1.0 for c in world.ego.applied)  # only the initial brake held
    counts = result.meta["control"]
    assert result.control_timeouts == 3 and counts["applied_from_node"] == 0
    assert counts["unknown"] == 3 and counts["stale"] == 3
    assert_cleaned_up(world, client)


def test_missing_controls_time_out_and_are_counted(tmp_path) -> None:
    def answer_first_only(img):
        first = rc.stamp_ns(img.header.stamp) == 50_000_000
        return [(0.01, "control", control(img.header.stamp, throttle=0.6))] if first else []

    for on_timeout, expected_throttle, expected_brake in (("hold", 0.6, 0.0), ("brake", 0.0, 1.0)):
        bridge, world, client, _, _ = make_bridge(tmp_path, answer_first_only, max_ticks=4, control_timeout=0.05,
                                                  on_timeout=on_timeout)
        [result] = bridge.run([ROUTE], write=False)
        assert result.control_timeouts == 3 and result.meta["control"]["max_consecutive_timeouts"] == 3
        later = world.ego.applied[1:]
        assert all(math.isclose(c.throttle, expected_throttle, rel_tol=1e-6) and c.brake == expected_brake
                   for c in later)
        assert_cleaned_up(world, client)
    # a node that never answers ends the route
    bridge, world, client, _, _ = make_bridge(tmp_path, lambda img: [], control_timeout=0.05,
                                              max_consecutive_timeouts=6)
    [result] = bridge.run([ROUTE], write=False)
    assert result.meta["termination"] == "node_unresponsive" and result.ticks == 6
    assert result.status == "Failed - node unresponsive"
    assert_cleaned_up(world, client)


def test_a_route_is_driven_to_completion(tmp_path) -> None:
    [route] = load_routes(REPO / "sim/routes/example_town01.xml", "0")  # (0,0) -> (100,0) -> (100,50), Town01
    world = FakeWorld(map_name="Carla/Maps/Town02")
    bridge, world, client, io, _ = make_bridge(
        tmp_path, lambda img: [(0.02, "control", control(img.header.stamp, throttle=1.0))], world=world)
    world.collide_at.update({40, 41, 42})  # one collision (contact over 3 ticks)
    world.invade_at.add(50)
    [result] = bridge.run([route])
    assert client.loaded == ["Town01"]
    assert result.meta["termination"] == "route_completed" and result.completion == 1.0
    assert result.status == "Completed"  # completed, with the collision as an infraction
    assert [i.kind for i in result.infractions] == ["collision_vehicle"]
    assert result.meta["collision_events"] == 3 and len(io.topic(rc.COLLISION_TOPIC)) == 3
    assert [m.crossed_lane_markings.tolist() for m in io.topic(rc.LANE_INVASION_TOPIC)] == [[2]]
    assert result.meta["lane_invasions"][0] == {"t": pytest.approx(50 * DT), "markings": ["Solid"]}
    texts = [m.data for m in io.topic(rc.INSTRUCTION_TOPIC)]
    assert texts == [rc.FOLLOW_LANE, rc.TURN_RIGHT, rc.FOLLOW_LANE]
    [path] = io.topic(rc.ROUTE_TOPIC)  # the route once, in the map frame with ROS's y (CARLA's mirrored)
    ends = [(p.pose.position.x, p.pose.position.y) for p in (path.poses[0], path.poses[-1])]
    assert path.header.frame_id == rc.MAP_FRAME
    assert ends == [pytest.approx((0, 0), abs=1), pytest.approx((100, -50), abs=1)]
    assert result.length_m == pytest.approx(150.0, abs=1.0)
    assert len(result.speeds_mps) == result.ticks == len(result.positions)
    assert result.meta["latency_sources"] == {"frame_stats": 0, "wall": result.ticks}
    assert result.latencies_ms and all(ms == pytest.approx(20.0) for ms in result.latencies_ms)
    assert_cleaned_up(world, client)
    RouteResult.from_dict(json.loads((tmp_path / "route_0_sync.json").read_text()))


def test_latency_mode_applies_controls_late(tmp_path) -> None:
    def responder(img):
        k = round(rc.time_of(img.header.stamp) / DT)
        return [(0.001, "control", control(img.header.stamp, throttle=k / 100)),
                (0.002, "stats", stats(img.header.stamp, 120.0))]  # 120 ms -> applied 3 ticks later

    bridge, world, client, _, _ = make_bridge(tmp_path, responder, max_ticks=8, mode="latency")
    [result] = bridge.run([ROUTE])
    throttles = [round(c.throttle, 3) for c in world.ego.applied]
    assert throttles == [0.0, 0.0, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05]
    assert world.ego.applied[0].brake == 1.0
    assert result.meta["mode"] == "latency" and result.meta["control_delay"]["max_delay_ticks"] == 3
    assert result.meta["latency_sources"]["frame_stats"] == 8 and result.latencies_ms == [120.0] * 8
    assert result.kept_tokens == [48.0] * 8
    assert (tmp_path / "route_L_latency.json").exists()
    assert_cleaned_up(world, client)


def test_cleanup_after_errors_in_the_loop(tmp_path) -> None:
    answer = lambda img: [(0.01, "control", control(img.header.stamp))]  # noqa: E731
    # the simulator dies: the route ends, the run stops, everything is cleaned up
    bridge, world, client, _, logs = make_bridge(tmp_path, answer)
    world.fail_at = 3
    [result] = bridge.run([ROUTE, ROUTE], write=False)
    assert result.meta["termination"] == "simulator_error" and "time-out" in result.meta["error"]
    assert_cleaned_up(world, client)
    assert any("simulator_error" in line for line in logs)

    # an unexpected exception inside the loop propagates, after cleanup
    bridge, world, client, _, _ = make_bridge(tmp_path, answer)

    def explode(tick: int) -> None:
        if tick == 2:
            raise ValueError("bug")

    world.hook = explode
    with pytest.raises(ValueError, match="bug"):
        bridge.run([ROUTE], write=False)
    assert_cleaned_up(world, client)


def test_sigterm_and_sigint_clean_up(tmp_path) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        bridge, world, client, _, _ = make_bridge(tmp_path, lambda img: [(0.01, "control", control(
            img.header.stamp))])
        world.hook = lambda tick, s=signum: os.kill(os.getpid(), s) if tick == 3 else None
        with bridge.guard.installed(), pytest.raises(cb.Interrupted) as stopped:
            bridge.run([ROUTE])
        assert stopped.value.signum == signum
        assert_cleaned_up(world, client)
        saved = json.loads((tmp_path / "route_L_sync.json").read_text())
        assert saved["status"] == "Failed - interrupted" and saved["ticks"] == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_signal_during_cleanup_is_deferred() -> None:
    guard = cb.SignalGuard()
    done = []
    with guard.installed(), pytest.raises(cb.Interrupted):
        with guard.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("cleanup finished")
    assert done == ["cleanup finished"]


def test_setup_failure_still_cleans_up(tmp_path) -> None:
    bridge, world, client, _, _ = make_bridge(tmp_path, lambda img: [], blueprint="walker.pedestrian.0001")
    with pytest.raises(cb.BridgeError, match="no blueprint"):
        bridge.run([ROUTE], write=False)
    assert world.actors == {} and world.settings == world.original


@pytest.mark.ros
def test_main_runs_a_route_end_to_end_with_a_fake_server(tmp_path, monkeypatch, capsys) -> None:
    world = FakeWorld()
    client = FakeClient(world)
    names = ("Location", "Transform", "Rotation", "VehicleControl", "Vector3D", "command")
    fake_carla = SimpleNamespace(Client=lambda host, port: client, **{n: getattr(carla, n) for n in names})
    monkeypatch.setattr(cb, "_carla", lambda: fake_carla)
    code = cb.main(["--routes", str(REPO / "sim/routes/example_town01.xml"), "--routes-subset", "0",
                    "--max-ticks", "3", "--control-timeout", "0.05", "--wait-for-node", "0", "--camera-width", "8",
                    "--camera-height", "6", "--output", str(tmp_path), "--ros-args", "-r", "__node:=bridge_e2e"])
    assert code == 0, capsys.readouterr().err
    saved = RouteResult.from_dict(json.loads((tmp_path / "route_0_sync.json").read_text()))
    assert saved.ticks == 3 and saved.control_timeouts == 3 and saved.meta["termination"] == "max_ticks"
    assert_cleaned_up(world, client)


@pytest.mark.ros
def test_ros_io_talks_over_dds(ros_context) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    io = cb.RosIO(node_name="carla_bridge_test")
    try:
        got_controls, got_images = [], []
        io.on_control = got_controls.append
        peer = rclpy.create_node("peer", context=ros_context)
        pub = peer.create_publisher(CarlaEgoVehicleControl, rc.CONTROL_TOPIC, 10)
        peer.create_subscription(Image, rc.CAMERA_TOPIC, got_images.append, 10)
        executor = SingleThreadedExecutor(context=ros_context)
        executor.add_node(peer)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (got_controls and got_images):
            if io.subscriber_count(rc.CAMERA_TOPIC):
                io.publish(rc.CAMERA_TOPIC, rc.image_msg(np.zeros((2, 2, 4), np.uint8), "bgra8", 0.05, "f"))
            pub.publish(control(rc.stamp(0.05)))
            io.spin_once(0.05)
            executor.spin_once(timeout_sec=0.05)
        assert got_controls and rc.stamp_ns(got_controls[0].header.stamp) == 50_000_000
        assert got_images and got_images[0].encoding == "bgra8"
        executor.shutdown()
        peer.destroy_node()
    finally:
        io.close()
