"""The `autoprune` lifecycle node: cameras in, the VLA pruned to a latency budget on its own thread, commands out.

Lifecycle: configure loads the model, warms it up and calibrates the latency model; activate starts commanding;
deactivate commands a final safe stop; cleanup frees the model. `autostart` runs configure + activate at start.

Every output answers one camera frame set and carries the primary camera's `header.stamp`. The newest set
always wins: sets arriving during inference replace the pending one (dropped-stale). A safety watchdog at
`control_rate_hz` commands safe stops (no throttle, full brake, steering held) while the primary camera is
silent, an inference runs past the hard deadline, or the last frame failed (undecodable image, model fault,
non-finite action); the first good answer ends it, without a restart.
"""
from __future__ import annotations

import gc
import math
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from autoprune_ros.ros.frame_stats import format_stamp
from autoprune_ros.ros.image_codec import ImageDecodeError, from_compressed_msg, from_image_msg
from autoprune_ros.ros.outputs import ackermann_control, carla_control, trajectory
from autoprune_ros.ros.parameters import PARAMETERS, check_change
from autoprune_ros.ros.qos import latched_qos, stream_qos
from autoprune_ros.ros.route_input import RouteInput
from autoprune_ros.runtime.frame_sync import FrameSync, ViewSet
from autoprune_ros.runtime.latest_frame import LatestFrame
from autoprune_ros.vla.action import Action

FRAME_STATS_TOPIC = "/autoprune/frame_stats"
CONTROL_TOPICS = {"carla": "/carla/hero/vehicle_control_cmd", "ackermann": "/autoprune/ackermann_cmd"}
LATENCY_WINDOW = 200  # frames in the rolling latency percentiles of /diagnostics


def _stamp_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@dataclass
class _Health:
    frames: int = 0
    malformed: int = 0
    model_faults: int = 0
    deadline_misses: int = 0
    hard_deadline_misses: int = 0
    safe_stops: int = 0
    failing: str = ""  # why the last frame failed; "" once a frame succeeds
    last_error: str = ""
    budget: float | None = None
    governor_feasible: bool = True
    governor_reason: str = ""
    missing_cameras: list[str] = field(default_factory=list)
    unsynced_cameras: list[str] = field(default_factory=list)
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    inference_started: float | None = None  # monotonic time the running inference's frame arrived


class AutoPruneNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("autoprune", **kwargs)
        for name, spec in PARAMETERS.items():
            self.declare_parameter(name, spec.default, spec.descriptor())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pipeline = None
        self.health = _Health()
        self.instruction = self._param("instruction")
        self.speed_mps = 0.0
        self.yaw_rate_rps = 0.0
        self.route = RouteInput(self._param("ego_frame_id"))
        self.last_steer = 0.0
        self.active = False
        self._inputs: list = []
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.frames: LatestFrame[tuple[ViewSet, float]] = LatestFrame()
        self.faulted = False  # configure failed: command safe stops until a configure succeeds
        self.sync: FrameSync | None = None
        self.camera_topics = list(self._param("camera_topics"))
        # The command publisher and the watchdog live as long as the node, so that a node whose configure failed
        # can still command safe stops; a node deactivated on purpose stays silent.
        self.interface = self._param("control_interface")
        self.max_steer = 0.0
        control_type = type(self._control(Action.safe_stop(), Header()))
        self.control_pub = self.create_publisher(control_type, CONTROL_TOPICS[self.interface], 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_timer(1.0 / self._param("control_rate_hz"), self._watchdog)

    def _param(self, name: str):
        return self.get_parameter(name).value

    # ---- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # a bad model path or parameter must leave the node unconfigured, not dead
            self.health.last_error = f"configure failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(f"{self.health.last_error}; fix the parameter and configure again "
                                    "(commanding safe stops meanwhile)")
            self._release()
            self.faulted = True
            return TransitionCallbackReturn.FAILURE
        self.faulted = False
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        from autoprune_ros.runtime.pipeline import FramePipeline

        topics = self.camera_topics
        if not topics:
            raise ValueError("camera_topics is empty: name at least one camera topic")
        policy = self._load_policy()
        self.max_steer = policy.controller.max_steer_angle
        self.pipeline = FramePipeline(policy, self._param("pruning_policy"), self._make_governor(policy))
        self._calibrate()
        self.trajectory_pub = self.create_lifecycle_publisher(Path, "/autoprune/trajectory", 10)
        self.stats_pub = self.create_lifecycle_publisher(DiagnosticStatus, FRAME_STATS_TOPIC, 10)
        self._inputs.append(self.create_subscription(String, "/autoprune/instruction", self._on_instruction,
                                                            latched_qos()))
        self._inputs.append(self.create_subscription(Odometry, "/carla/hero/odometry", self._on_odometry,
                                                            stream_qos("best_effort", 1)))
        if self._param("route_topic") and policy.uses_route:
            self._inputs.append(self.create_subscription(Path, self._param("route_topic"), self.route.on_path,
                                                                latched_qos()))
        self.get_logger().info(f"configured: {', '.join(topics)} -> {CONTROL_TOPICS[self.interface]}, policy "
                               f"{self._param('pruning_policy')}, latency budget {self._param('latency_budget_ms')} ms")

    def _load_policy(self):
        from autoprune_ros.runtime.policy_setup import load_policy

        model, device = self._param("model"), self._param("device")
        start = time.perf_counter()
        policy = load_policy(model, seed=self._param("seed"), device=device, dtype=self._param("dtype"),
                             threads=self._param("num_threads"))
        self.get_logger().info(f"model {model!r} loaded and warmed up on {device} ({self._param('dtype')}) in "
                               f"{time.perf_counter() - start:.1f} s")
        return policy

    def _make_governor(self, policy):
        from autoprune_ros.runtime.policy_setup import make_governor

        return make_governor(policy, len(self._param("camera_topics")), self._param("latency_budget_ms"),
                             self._param("min_token_budget"), self._param("max_token_budget"),
                             self._param("complexity_aware"))

    def _calibrate(self) -> None:
        """Seed the latency model with a few frames at the smallest, middle and largest budgets."""
        from autoprune_ros.runtime.policy_setup import calibrate

        calibrate(self.pipeline, len(self.camera_topics), self.instruction, self._param("calibration_frames"))

    def _subscribe_cameras(self) -> None:
        """Camera inputs exist only while active: publishers see no subscriber until the node can answer."""
        topics = self.camera_topics
        self.sync = FrameSync(len(topics), int(self._param("camera_sync_tolerance_ms") * 1e6),
                              int(self._param("camera_timeout_s") * 1e9))
        qos = stream_qos(self._param("image_qos_reliability"), self._param("image_qos_depth"))
        self._cameras = []
        for index, topic in enumerate(topics):
            msg_type = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self._cameras.append(self.create_subscription(msg_type, topic,
                                                          lambda msg, i=index: self._on_camera(i, msg), qos))

    def _unsubscribe_cameras(self) -> None:
        for sub in getattr(self, "_cameras", []):
            self.destroy_subscription(sub)
        self._cameras = []

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stopping.clear()
        self.frames = LatestFrame()
        self._subscribe_cameras()
        self._worker = threading.Thread(target=self._run, name="autoprune-inference", daemon=True)
        self._worker.start()
        self.active = True
        self.health.failing = ""
        self.get_logger().info("active: commanding")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._safe_stop(self._now_ns(), "deactivated")  # before the publishers go inactive
        self._stop_worker()
        self._unsubscribe_cameras()
        self.get_logger().info("inactive: commanded a final safe stop")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self._safe_stop(self._now_ns(), "shutting down")
            self._stop_worker()
            self._unsubscribe_cameras()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle error in state {state.label}; releasing resources")
        self._stop_worker()
        self._unsubscribe_cameras()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        self.active = False
        self._stopping.set()
        self.frames.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def _release(self) -> None:
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs.clear()
        for name in ("trajectory_pub", "stats_pub"):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        if self.pipeline is not None:
            self.pipeline = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ---- parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        current = {name: self._param(name) for name in PARAMETERS}
        for param in params:
            reason = check_change(param.name, param.value, current)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            current[param.name] = param.value
        for param in params:
            self._apply(param.name, param.value, current)
        return SetParametersResult(successful=True)

    def _apply(self, name: str, value, current: dict) -> None:
        if name == "instruction":
            self.instruction = value
        if self.pipeline is None:
            return
        governor = self.pipeline.governor
        if name == "pruning_policy":
            self.pipeline.set_policy(value)
        elif name == "latency_budget_ms":
            governor.set_latency_budget(value)
        elif name in ("min_token_budget", "max_token_budget"):
            cap = self.pipeline.visual_tokens(len(self.camera_topics))
            governor.set_limits(min(current["min_token_budget"], cap), min(current["max_token_budget"], cap))
        elif name == "complexity_aware":
            governor.complexity_aware = value

    # ---- callbacks (executor thread; never block)
    def _on_camera(self, index: int, msg) -> None:
        if not self.active:
            return
        view_set = self.sync.add(index, _stamp_ns(msg.header.stamp), time.monotonic_ns(), msg)
        if view_set is not None:
            self.frames.put((view_set, time.monotonic()))

    def _on_instruction(self, msg: String) -> None:
        if msg.data.strip():
            self.instruction = msg.data
            self.get_logger().info(f"instruction: {msg.data!r}")

    def _on_odometry(self, msg: Odometry) -> None:
        v = msg.twist.twist.linear
        speed = math.hypot(v.x, v.y)
        if math.isfinite(speed):
            self.speed_mps = speed
        yaw_rate = msg.twist.twist.angular.z
        if math.isfinite(yaw_rate):
            self.yaw_rate_rps = yaw_rate
        self.route.on_odometry(msg)

    # ---- inference thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self.frames.take(timeout=0.2)
            if item is not None:
                self._answer(*item)

    def _answer(self, view_set: ViewSet, arrived: float) -> None:
        health = self.health
        health.inference_started = arrived
        try:
            decode_start = time.perf_counter()
            try:
                views = [from_compressed_msg(m) if isinstance(m, CompressedImage) else from_image_msg(m)
                         for m in view_set.views]
            except ImageDecodeError as exc:
                health.malformed += 1
                self._fail(view_set.stamp_ns, f"rejected camera frame: {exc}")
                return
            pre_ms = (time.perf_counter() - decode_start) * 1e3
            health.missing_cameras = [self.camera_topics[i] for i in view_set.missing]
            health.unsynced_cameras = [self.camera_topics[i] for i in view_set.unsynced]
            try:
                result = self.pipeline.step(views, self.instruction, self.speed_mps, pre_ms=pre_ms,
                                            dt=1.0 / self._param("control_rate_hz"), yaw_rate_rps=self.yaw_rate_rps,
                                            route=self.route.ego_route())
            except Exception as exc:  # any model fault must end in a safe stop, not a dead thread
                health.model_faults += 1
                self._fail(view_set.stamp_ns, f"policy failed: {type(exc).__name__}: {exc}")
                return
            self._publish_result(view_set, arrived, result)
        finally:
            health.inference_started = None

    def _publish_result(self, view_set: ViewSet, arrived: float, result) -> None:
        health = self.health
        action = result.output.action
        if not action.is_finite():
            health.model_faults += 1
            self._fail(view_set.stamp_ns, "policy returned a non-finite action")
            return
        pipeline_ms = (time.monotonic() - arrived) * 1e3
        if pipeline_ms > self._param("hard_deadline_ms"):
            health.hard_deadline_misses += 1
            self._fail(view_set.stamp_ns, f"answer took {pipeline_ms:.0f} ms, past the hard deadline "
                       f"({self._param('hard_deadline_ms'):.0f} ms)")
            return
        header = Header(stamp=_stamp(view_set.stamp_ns), frame_id=self._param("ego_frame_id"))
        self.control_pub.publish(self._control(action, header))
        self.trajectory_pub.publish(trajectory(action, header.stamp, self._param("ego_frame_id")))
        self.last_steer = action.steer
        missed = pipeline_ms > self._param("latency_budget_ms")
        health.deadline_misses += missed
        health.frames += 1
        health.failing = ""
        health.budget, health.governor_feasible = result.budget, result.governor_feasible
        health.governor_reason = result.governor_reason
        latency_ms = (self._now_ns() - view_set.stamp_ns) / 1e6
        health.latencies.append(pipeline_ms)
        self._publish_frame_stats(view_set, result, latency_ms, pipeline_ms, missed)

    def _fail(self, stamp_ns: int, reason: str) -> None:
        self.health.failing = self.health.last_error = reason
        self.get_logger().warning(f"{reason}; commanding a safe stop", throttle_duration_sec=1.0)
        self._safe_stop(stamp_ns, reason)

    def _safe_stop(self, stamp_ns: int, reason: str) -> None:
        self.health.safe_stops += 1
        header = Header(stamp=_stamp(stamp_ns), frame_id=self._param("ego_frame_id"))
        self.control_pub.publish(self._control(Action.safe_stop(self.last_steer), header))

    def _control(self, action: Action, header: Header):
        if self.interface == "carla":
            return carla_control(action, header)
        # steer was normalised by the policy's controller; its road-wheel angle at |steer| = 1 converts back.
        return ackermann_control(action, header, self.max_steer)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # ---- watchdog (executor thread)
    def _watchdog(self) -> None:
        if self.faulted:
            reason = self.health.last_error
        elif self.active:
            reason = self._unhealthy_reason()
        else:
            return
        if reason:
            self.get_logger().warning(f"{reason}; commanding a safe stop", throttle_duration_sec=2.0)
            self._safe_stop(self._now_ns(), reason)

    def _unhealthy_reason(self) -> str:
        health = self.health
        age = self.sync.age_ns(0, time.monotonic_ns())
        if age is None or age > self._param("camera_timeout_s") * 1e9:
            return f"no frame from {self.camera_topics[0]} for over {self._param('camera_timeout_s')} s"
        started = health.inference_started
        if started is not None and (time.monotonic() - started) * 1e3 > self._param("hard_deadline_ms"):
            return f"inference running past the hard deadline ({self._param('hard_deadline_ms'):.0f} ms)"
        return health.failing

    # ---- reporting
    def _publish_frame_stats(self, view_set: ViewSet, result, latency_ms: float, pipeline_ms: float,
                             missed: bool) -> None:
        out, action, stats = result.output, result.output.action, result.output.prefill
        values = {
            "stamp": format_stamp(view_set.stamp_ns),
            "latency_ms": f"{latency_ms:.2f}", "pipeline_ms": f"{pipeline_ms:.2f}",
            "deadline": "miss" if missed else "hit",
            **{f"{k}_ms": f"{v:.2f}" for k, v in out.timings_ms.items()},
            "policy": result.policy, "budget": "" if result.budget is None else f"{result.budget:g}",
            "governor": result.governor_reason,
            "visual_tokens": str(out.num_visual_tokens),
            "kept_tokens_per_layer": " ".join(map(str, stats.visual_tokens_per_layer)) if stats else "",
            "complexity": "" if result.complexity is None else f"{result.complexity:.4f}",
            "slope": "" if stats is None or stats.slope is None else f"{stats.slope:.4f}",
            "flops_ratio": "" if stats is None else f"{stats.flops_ratio:.4f}",
            "views": str(len(view_set.views)), "dropped_stale": str(self.frames.dropped_stale),
            "steer": f"{action.steer:.4f}", "throttle": f"{action.throttle:.4f}", "brake": f"{action.brake:.4f}",
            "target_speed": f"{action.target_speed:.3f}",
            "route_points": "" if out.route_targets is None else " ".join(f"{v:.2f}"
                                                                            for v in out.route_targets.ravel()),
        }
        self.stats_pub.publish(DiagnosticStatus(
            level=DiagnosticStatus.WARN if missed else DiagnosticStatus.OK, name="autoprune: frame",
            message=f"frame {self.health.frames}", hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()]))

    def _route_status(self) -> str:
        """The route's state for a model that reads one ('not used' otherwise, or with route_topic empty)."""
        if self.pipeline is None or not self.pipeline.policy.uses_route or not self._param("route_topic"):
            return "not used"
        return self.route.status

    def _publish_diagnostics(self) -> None:
        h = self.health
        level, problems = DiagnosticStatus.OK, []
        if h.failing or h.model_faults or h.hard_deadline_misses:
            level = DiagnosticStatus.ERROR
        if h.failing:
            problems.append(h.failing)
        if h.model_faults:
            problems.append(f"{h.model_faults} model faults")
        if h.hard_deadline_misses:
            problems.append(f"{h.hard_deadline_misses} answers past the hard deadline")
        for count, text in ((h.deadline_misses, "deadline misses"), (h.malformed, "malformed frames"),
                            (self.frames.dropped_stale, "frames dropped as stale")):
            if count:
                problems.append(f"{count} {text}")
                level = max(level, DiagnosticStatus.WARN)
        if h.missing_cameras:
            problems.append(f"cameras missing: {', '.join(h.missing_cameras)}")
            level = max(level, DiagnosticStatus.WARN)
        if not h.governor_feasible:
            problems.append(f"latency budget infeasible: {h.governor_reason}")
            level = max(level, DiagnosticStatus.WARN)
        route_status = self._route_status()
        if route_status not in ("ok", "not used"):
            problems.append(f"route: {route_status} (driving from the camera alone)")
            level = max(level, DiagnosticStatus.WARN)
        lat = np.array(h.latencies) if h.latencies else np.array([np.nan])
        values = {
            "state": "active" if self.active else ("inactive" if self.pipeline else "unconfigured"),
            "frames_answered": h.frames, "frames_received": self.frames.received,
            "dropped_stale": self.frames.dropped_stale, "malformed": h.malformed, "model_faults": h.model_faults,
            "deadline_misses": h.deadline_misses, "hard_deadline_misses": h.hard_deadline_misses,
            "safe_stops": h.safe_stops, "pipeline_ms_p50": f"{np.percentile(lat, 50):.2f}",
            "pipeline_ms_p99": f"{np.percentile(lat, 99):.2f}", "token_budget": h.budget,
            "governor": h.governor_reason, "unsynced_cameras": ", ".join(h.unsynced_cameras),
            "instruction": self.instruction, "route": route_status, "last_error": h.last_error,
        }
        if self.faulted:
            level = DiagnosticStatus.ERROR
            problems.insert(0, h.last_error)
        status = DiagnosticStatus(level=level, name="autoprune: pipeline",
                                  message="; ".join(problems) or ("running" if self.active else values["state"]),
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                              status=[status]))


HELP = """usage: autoprune_node [--ros-args -p name:=value ... -r from:=to ...]

Runs a VLA driving policy on the newest camera frames, pruned to a latency budget, and publishes stamped
driving commands. A lifecycle node: with autostart:=false, drive it through its change_state service.

parameters (defaults; read-only ones are fixed at start):
""" + "\n".join(f"  {n:26s} {p.default!r:34s} {p.descriptor().description}{' [read-only]' if p.read_only else ''}"
                for n, p in PARAMETERS.items()) + f"""

topics: in  camera_topics (sensor_msgs/Image, or CompressedImage for .../compressed),
            /autoprune/instruction (std_msgs/String, transient local),
            /carla/hero/odometry (nav_msgs/Odometry: speed and yaw rate, the ego state in the prompt; pose),
            route_topic (nav_msgs/Path, transient local: the route, for models with a route input)
        out {CONTROL_TOPICS['carla']} (carla_msgs/CarlaEgoVehicleControl) or
            {CONTROL_TOPICS['ackermann']} (ackermann_msgs/AckermannDriveStamped),
            /autoprune/trajectory (nav_msgs/Path), {FRAME_STATS_TOPIC} (diagnostic_msgs/DiagnosticStatus),
            /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    own_args = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if "-h" in own_args or "--help" in own_args:
        print(HELP)
        return 0
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = AutoPruneNode()
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node.pipeline is not None:
                node.trigger_activate()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        if node.active:
            node.trigger_deactivate()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
