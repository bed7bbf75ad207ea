"""MetaDrive <-> ROS 2 bridge on the CARLA ROS topic contract, stepping synchronously (runs in .venv-sim).

    .venv-sim/bin/python -m autoprune_sim.metadrive_bridge --seed 7 --ticks 300 --output result.json

Each tick (0.1 s of sim time) publishes /clock, the front camera (rgb8), odometry, the route's next navigation
command as the instruction, the route ahead (its lane's centreline for 60 m, on /carla/hero/waypoints) and a
lane-state pseudo-sensor, all stamped with the tick's sim time; then waits for the CarlaEgoVehicleControl stamped
with that time (or a timeout, counted) and steps the simulator with it.

Modes (every result says which):
- sync: the control answering tick t drives tick t; the simulator waits for the model, so latency never hurts;
- latency: the control computed from tick t takes effect at tick t + ceil(latency / 0.1 s), the previous control
  holding until then, latency being the node's measured pipeline time for that frame (its /autoprune/frame_stats,
  else the wall time between publishing the frame and receiving the control), so a slow model drives worse.

Termination (--termination, recorded in every result): under the default "leaderboard" rule a straying run ends
only when the car's centre has left every lane, and the distance driven outside the route's lanes (across the
centre line, or on a road the route does not take) is charged as the Leaderboard charges it; "metadrive" also ends
it at the first touch of a solid line or the sidewalk, MetaDrive's own rule. Under both, a car more than 30 m from
the route ends it (route deviation).

With --record DIR the run is expert-supervised and recorded as a training episode (supervised_recording.py): the
node steers, MetaDrive's IDM expert keeps the speed and takes the wheel while the car strays from its lane.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import rclpy
from carla_msgs.msg import CarlaEgoVehicleControl, CarlaStatus
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as NavPath
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, String

from autoprune_ros.ros.frame_stats import kept_tokens, mean_kept, stamp_ns
from autoprune_sim import ros_contract as contract
from autoprune_sim.control_delay import ControlDelay
from autoprune_sim.expert_policy import instructed_idm_policy
from autoprune_sim.instructions import override_at, parse_schedule
from autoprune_sim.metadrive_env import (
    ROUTE_DEVIATION_M,
    STEP_S,
    TERMINATION_RULES,
    Route,
    YawRate,
    ego_state,
    frame_rgb,
    make_env,
    off_road_cause,
)
from autoprune_sim.metrics import (
    COLLISION_LAYOUT,
    COLLISION_VEHICLE,
    OFF_ROAD,
    OUTSIDE_ROUTE_LANES,
    ROUTE_DEVIATION,
    ROUTE_TIMEOUT,
    VEHICLE_BLOCKED,
    Infraction,
    ProgressTracker,
    RouteResult,
)
from autoprune_sim.reference_path import RouteLane, lane_ahead
from autoprune_sim.takeover import Takeover

LANE_STATE_TOPIC = "/metadrive/hero/lane_state"  # [lateral offset m (left +), heading error rad (left +), speed m/s]
STUCK_TICKS = 300  # 30 s below 0.1 m/s after having moved: the route is abandoned as blocked
NEUTRAL = (0.0, 0.0, 1.0)  # (steer, throttle, brake) before the first control arrives
PROGRESS_PREFIX = "progress "  # --progress lines on stdout: this prefix, then one JSON object
PROGRESS_EVERY = 10  # ticks
RESEND_AFTER_S = 1.0  # re-publish a frame once if no control came by then (lost sample, not a slow node)


class MetaDriveBridge(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("metadrive_bridge")
        self.args = args
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.clock_pub = self.create_publisher(Clock, contract.CLOCK_TOPIC, 10)
        self.image_pub = self.create_publisher(Image, contract.CAMERA_TOPIC, reliable)
        self.odom_pub = self.create_publisher(Odometry, contract.ODOMETRY_TOPIC, 10)
        self.instruction_pub = self.create_publisher(String, contract.INSTRUCTION_TOPIC, latched)
        self.lane_pub = self.create_publisher(Float32MultiArray, LANE_STATE_TOPIC, 10)
        self.status_pub = self.create_publisher(CarlaStatus, contract.STATUS_TOPIC, latched)
        self.route_pub = self.create_publisher(NavPath, contract.ROUTE_TOPIC, contract.LATCHED_QOS)
        self.controls: dict[int, tuple[CarlaEgoVehicleControl, float]] = {}  # stamp ns -> (msg, arrival)
        self.latencies_ms: dict[int, float] = {}
        self.kept_tokens: dict[int, float] = {}  # mean visual tokens kept per decoder layer, per frame
        self.create_subscription(CarlaEgoVehicleControl, contract.CONTROL_TOPIC, self._on_control, 10)
        self.create_subscription(DiagnosticStatus, "/autoprune/frame_stats", self._on_stats, 10)

    def _on_control(self, msg: CarlaEgoVehicleControl) -> None:
        self.controls[contract.stamp_ns(msg.header.stamp)] = (msg, time.monotonic())

    def _on_stats(self, msg: DiagnosticStatus) -> None:
        values = {kv.key: kv.value for kv in msg.values}
        key = stamp_ns(values)
        if key is not None and "pipeline_ms" in values:
            self.latencies_ms[key] = float(values["pipeline_ms"])
            if kept_tokens(values):
                self.kept_tokens[key] = mean_kept(values)


def _md_action(control: tuple[float, float, float]) -> list[float]:
    """CARLA (steer right +, throttle, brake) -> MetaDrive [steer left +, throttle - brake]."""
    steer, throttle, brake = control
    return [-max(-1.0, min(1.0, steer)), max(-1.0, min(1.0, throttle - brake))]


def run(args: argparse.Namespace, stop_requested) -> RouteResult:
    supervised = args.record is not None
    env = make_env(args.seed, args.map, args.width, args.height, args.traffic_density, horizon=args.ticks + 10,
                   expert=args.expert or supervised, termination=args.termination)
    if supervised:
        env.config["agent_policy"] = instructed_idm_policy()
    node = MetaDriveBridge(args)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    delay = ControlDelay(STEP_S, args.mode, initial=NEUTRAL)
    infractions: list[Infraction] = []
    speeds, positions, latencies, kept, timeouts, resends = [], [], [], [], 0, 0
    status = "Failed - not started"
    schedule = parse_schedule(args.instruction_schedule) if args.instruction_schedule else []
    recording = None
    try:
        obs = env.reset()
        route = Route(env)
        route_lane = RouteLane()
        if supervised:
            from autoprune_sim.supervised_recording import SupervisedRecording

            recording = SupervisedRecording(env, args.record, Takeover(args.takeover_m), {
                "seed": args.seed, "map": args.map, "traffic_density": args.traffic_density, "width": args.width,
                "height": args.height, "max_ticks": args.ticks})
        progress = ProgressTracker(route.segment_lengths)
        node.status_pub.publish(CarlaStatus(frame=0, fixed_delta_seconds=STEP_S, synchronous_mode=True,
                                            synchronous_mode_running=True))
        instruction, still, tick, in_contact = None, 0, 0, set()
        outside_m, outside_since = 0.0, None  # distance driven with the centre outside the route's lanes
        yaw_rate = YawRate(STEP_S)
        deadline = time.monotonic() + (0.0 if args.expert else args.wait_for_node)
        while node.count_subscribers(contract.CAMERA_TOPIC) == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)  # the node subscribes its cameras once it is active
        for tick in range(args.ticks):
            if stop_requested():
                status = "Failed - interrupted"
                break
            sim_time = tick * STEP_S
            stamp = contract.stamp(sim_time)
            key = contract.stamp_ns(stamp)
            state = ego_state(env)
            command = override_at(schedule, tick) or route.instruction(env)
            if command != instruction:
                node.instruction_pub.publish(String(data=command))
                instruction = command
            node.clock_pub.publish(contract.clock_msg(sim_time))
            node.odom_pub.publish(contract.odometry_msg(state.x, state.y, state.yaw, state.speed, 0.0,
                                                        yaw_rate.update(state.yaw), stamp))
            node.lane_pub.publish(Float32MultiArray(data=[state.lateral_offset, state.heading_error, state.speed]))
            node.route_pub.publish(contract.path_msg(lane_ahead(env, route_lane.update(env)), stamp))
            pixels = frame_rgb(obs)
            if recording is not None:
                recording.observe(tick, pixels, state, command)
            published = time.monotonic()
            image = contract.image_msg(pixels, "rgb8", stamp, contract.CAMERA_FRAME_ID)
            node.image_pub.publish(image)
            wait_until = published + (0.0 if args.expert else args.control_timeout)
            resend_at = published + min(RESEND_AFTER_S, args.control_timeout / 2)
            while key not in node.controls and time.monotonic() < wait_until:
                executor.spin_once(timeout_sec=0.005)
                if resend_at and time.monotonic() > resend_at:
                    node.image_pub.publish(image)  # a best-effort subscriber may have lost the sample
                    resends, resend_at = resends + 1, 0.0
            if key in node.controls:
                msg, arrived = node.controls.pop(key)
                if arrived < published:
                    raise RuntimeError(
                        f"a control stamped for tick {tick} arrived before that tick's camera frame was published: "
                        f"another ROS graph on domain {os.environ.get('ROS_DOMAIN_ID', '0')} is answering; give "
                        "each run a domain of its own (python -m autoprune_ros.rosenv claims a free one)")
                executor.spin_once(timeout_sec=0.0)
                latency_ms = node.latencies_ms.pop(key, (arrived - published) * 1e3)
                latencies.append(latency_ms)
                if key in node.kept_tokens:
                    kept.append(node.kept_tokens.pop(key))
                steer, throttle, brake, *_ = contract.control_tuple(msg)
                delay.submit(tick, (steer, throttle, brake), latency_ms / 1e3)
            elif not args.expert:
                timeouts += 1
            action = _md_action(delay.control_for(tick))
            if recording is not None:
                recording.drive(action[0])  # the expert policy drives the step, with this steering unless it took over
            obs, _, done, info = env.step(action)
            if recording is not None:
                recording.stepped(info)
            speeds.append(state.speed)
            positions.append((state.x, state.y))
            index, lon = route.locate(env)
            progress.update(index, lon)
            for kind, flag in ((COLLISION_VEHICLE, "crash_vehicle"), (COLLISION_LAYOUT, "crash_object"),
                               (COLLISION_LAYOUT, "crash_building")):
                if info.get(flag) and flag not in in_contact:  # one infraction per collision, not per tick
                    infractions.append(Infraction(kind, sim_time, flag))
            in_contact = {flag for flag in ("crash_vehicle", "crash_object", "crash_building") if info.get(flag)}
            step_m = state.speed * STEP_S
            deviation_m, in_route_lane = route.deviation(env)
            if info.get("out_of_road"):
                # The episode ends here, so route completion already stops; the penalty weighs only the
                # stretch driven off the road (this tick), as the Leaderboard's share of the route outside lanes.
                infractions.append(Infraction(OFF_ROAD, sim_time, off_road_cause(env.vehicle),
                                              value=100.0 * step_m / max(route.length_m, 1.0)))
            elif not in_route_lane:  # e.g. across the centre line
                outside_m += step_m
                outside_since = sim_time if outside_since is None else outside_since
            still = still + 1 if state.speed < 0.1 and tick > 20 else 0
            if args.progress and tick % PROGRESS_EVERY == 0:
                print(PROGRESS_PREFIX + json.dumps({"tick": tick, "ticks": args.ticks, "completion": progress.value,
                                                    "speed_mps": state.speed, "instruction": command}), flush=True)
            if info.get("arrive_dest"):
                status = "Completed"
                break
            if done:
                status = "Failed - " + ("collision" if info.get("crash") else "off road" if info.get("out_of_road")
                                        else "episode ended")
                break
            if deviation_m > ROUTE_DEVIATION_M:
                infractions.append(Infraction(ROUTE_DEVIATION, sim_time, f"{deviation_m:.0f} m from the route"))
                status = "Failed - route deviation"
                break
            if still >= STUCK_TICKS:
                infractions.append(Infraction(VEHICLE_BLOCKED, sim_time, "stuck"))
                status = "Failed - agent blocked"
                break
        else:
            status = "Failed - route timeout"
            infractions.append(Infraction(ROUTE_TIMEOUT, args.ticks * STEP_S, "tick limit"))
        if outside_m > 0.0:
            infractions.append(Infraction(OUTSIDE_ROUTE_LANES, outside_since, "centre outside the route's lanes",
                                          value=100.0 * outside_m / max(route.length_m, 1.0)))
        if status == "Completed" and not infractions:
            status = "Perfect"
        completion = 1.0 if status in ("Completed", "Perfect") else progress.value
        recorded = {}
        if recording is not None:
            episode = recording.finish(completion, route.length_m)
            recording = None
            recorded = {key: episode[key] for key in ("folder", "kept", "takeovers", "expert_steer_share")}
        return RouteResult(route_id=f"metadrive-map{args.map}-seed{args.seed}", seed=args.seed, length_m=route.length_m,
                           completion=completion, infractions=infractions, status=status,
                           duration_s=len(speeds) * STEP_S, ticks=len(speeds), speeds_mps=speeds, positions=positions,
                           dt=STEP_S, control_timeouts=timeouts, latencies_ms=latencies, kept_tokens=kept,
                           meta={"mode": "expert (MetaDrive IDM)" if args.expert else args.mode,
                                 "frame_resends": resends, "control_delay": delay.describe(),
                                 "simulator": "metadrive 0.3.0.1", "map": args.map,
                                 "termination": args.termination,
                                 "traffic_density": args.traffic_density,
                                 "instruction_schedule": args.instruction_schedule, **recorded})
    finally:
        if recording is not None:  # interrupted by an error: the bag is closed, the episode stays staged
            recording.abandon()
        node.destroy_node()
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoprune_sim.metadrive_bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7, help="MetaDrive scenario seed")
    parser.add_argument("--map", default="3", help="block count or block string (S, C, X, T, O, r, R), default 3")
    parser.add_argument("--ticks", type=int, default=600, help="tick limit (0.1 s each) before a route timeout")
    parser.add_argument("--mode", choices=["sync", "latency"], default="sync")
    parser.add_argument("--control-timeout", type=float, default=2.0, help="seconds to wait for each control")
    parser.add_argument("--wait-for-node", type=float, default=120.0, help="seconds to wait for a camera subscriber")
    parser.add_argument("--termination", choices=TERMINATION_RULES, default="leaderboard",
                        help="when a straying car's run ends: leaderboard (default) only once its centre has left "
                             "every lane, charging the distance driven outside the route's lanes; metadrive also at "
                             "the first touch of a solid line or the sidewalk (docs/closed_loop.md)")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--traffic-density", type=float, default=0.1)
    parser.add_argument("--expert", action="store_true",
                        help="MetaDrive's IDM policy drives (the reference row); controls on ROS are ignored")
    parser.add_argument("--instruction-schedule", default="",
                        help="override the route's commands over tick ranges, e.g. stop:100-160 (ticks, end "
                        "exclusive); the instruction check of the driving model uses it")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="expert-supervised run recorded as a training episode under DIR (docs/data.md): the node "
                             "steers, the IDM expert keeps the speed and takes over while the car strays")
    parser.add_argument("--takeover-m", type=float, default=0.7,
                        help="with --record: the expert takes the wheel when the car is, or in 1 s at its speed and "
                             "turn rate will be, this far (m) from the expert's lane (default 0.7)")
    parser.add_argument("--progress", action="store_true",
                        help=f"print a '{PROGRESS_PREFIX.strip()}' JSON line every {PROGRESS_EVERY} ticks on stdout")
    parser.add_argument("--output", type=Path, default=None, help="route result JSON (default: stdout)")
    args = parser.parse_args(argv)
    args.map = int(args.map) if args.map.isdigit() else args.map
    try:
        parse_schedule(args.instruction_schedule)
        Takeover(args.takeover_m)
    except ValueError as exc:
        parser.error(str(exc))
    if args.record is not None and args.expert:
        parser.error("--record records the node's driving under the expert's supervision; drop --expert")
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop = {"requested": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.__setitem__("requested", True))
    try:
        result = run(args, lambda: stop["requested"])
    finally:
        rclpy.try_shutdown()
    text = json.dumps(result.to_dict(), indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    print(f"metadrive_bridge: {result.status}, route completion {100 * result.completion:.1f}%, "
          f"{len(result.infractions)} infractions, {result.control_timeouts} control timeouts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
