"""The `autoprune` node: camera frames in, the VLA policy on its own thread, stamped driving commands out.

Every output answers one camera frame and carries that frame's `header.stamp`. The newest frame always wins:
frames arriving during inference replace the pending one and are counted as dropped-stale. A frame that
cannot be decoded or a policy that fails yields a safe stop (no throttle, full brake, steering held) for that
frame, and the node keeps running.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from autoprune_ros.ros.image_codec import ImageDecodeError, from_image_msg
from autoprune_ros.ros.outputs import CONTROL_INTERFACES, ackermann_control, carla_control, trajectory
from autoprune_ros.ros.qos import RELIABILITY, latched_qos, stream_qos
from autoprune_ros.runtime.latest_frame import LatestFrame
from autoprune_ros.vla.action import Action

FRAME_STATS_TOPIC = "/autoprune/frame_stats"
CONTROL_TOPICS = {"carla": "/carla/hero/vehicle_control_cmd", "ackermann": "/autoprune/ackermann_cmd"}


def _describe(text: str, *, read_only: bool = False, int_range: tuple[int, int] | None = None) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=text, read_only=read_only)
    if int_range:
        descriptor.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    return descriptor


# name: (default, descriptor). read_only ones are fixed at start; the others change at run time.
PARAMETERS = {
    "model": ("tiny", _describe("'tiny' (built from config/models/tiny_llava.yaml) or a folder written by "
                                "save_vla (safetensors only)", read_only=True)),
    "seed": (0, _describe("weight seed for models built from config", read_only=True, int_range=(0, 2**31 - 1))),
    "device": ("cpu", _describe("'cpu' or 'cuda'", read_only=True)),
    "num_threads": (0, _describe("torch CPU threads; 0 keeps torch's default", read_only=True, int_range=(0, 256))),
    "camera_topic": ("/carla/hero/rgb_front/image", _describe("sensor_msgs/Image input", read_only=True)),
    "image_qos_reliability": ("best_effort", _describe(f"one of {sorted(RELIABILITY)}", read_only=True)),
    "image_qos_depth": (1, _describe("camera subscription depth; 1 = latest frame only", read_only=True,
                                     int_range=(1, 100))),
    "control_interface": ("carla", _describe(f"one of {list(CONTROL_INTERFACES)}", read_only=True)),
    "ego_frame_id": ("hero", _describe("frame_id of the trajectory (ego frame, x forward, y left)",
                                       read_only=True)),
    "instruction": ("follow the lane", _describe("instruction used until one arrives on /autoprune/instruction")),
}


@dataclass
class _Counters:
    frames: int = 0
    malformed: int = 0
    model_faults: int = 0
    last_error: str = ""
    last_latency_ms: float = float("nan")


class AutoPruneNode(Node):
    """Loads the policy, then subscribes; inference runs on a worker thread fed by a latest-frame slot."""

    def __init__(self, **kwargs) -> None:
        super().__init__("autoprune", **kwargs)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self._check_startup_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        get = self.get_parameter
        self.instruction = get("instruction").value
        self.speed_mps = 0.0
        self.last_steer = 0.0
        self.counters = _Counters()
        self.policy = self._load_policy()

        self.interface = get("control_interface").value
        control_type = type(self._control(Action.safe_stop(), Header()))
        self.control_pub = self.create_publisher(control_type, CONTROL_TOPICS[self.interface], 10)
        self.trajectory_pub = self.create_publisher(Path, "/autoprune/trajectory", 10)
        self.stats_pub = self.create_publisher(DiagnosticStatus, FRAME_STATS_TOPIC, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.frames: LatestFrame[Image] = LatestFrame()
        self.create_subscription(Image, get("camera_topic").value, self.frames.put,
                                 stream_qos(get("image_qos_reliability").value, get("image_qos_depth").value))
        self.create_subscription(String, "/autoprune/instruction", self._on_instruction, latched_qos())
        self.create_subscription(Odometry, "/carla/hero/odometry", self._on_odometry, stream_qos("best_effort", 1))
        self.create_timer(1.0, self._publish_diagnostics)
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._run, name="autoprune-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"ready: {get('camera_topic').value} -> {CONTROL_TOPICS[self.interface]} "
                               f"({self.interface}), instruction {self.instruction!r}")

    # ---- set-up
    def _check_startup_parameters(self) -> None:
        get = self.get_parameter
        checks = {
            "device": get("device").value in ("cpu", "cuda"),
            "image_qos_reliability": get("image_qos_reliability").value in RELIABILITY,
            "control_interface": get("control_interface").value in CONTROL_INTERFACES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid parameters: " + ", ".join(
                f"{n}={get(n).value!r} ({PARAMETERS[n][1].description})" for n in bad))

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "instruction":
                if not str(param.value).strip():
                    return SetParametersResult(successful=False, reason="instruction must not be empty")
                self.instruction = str(param.value)
        return SetParametersResult(successful=True)

    def _load_policy(self):
        import torch

        from autoprune_ros.paths import config_path
        from autoprune_ros.vla.builder import build_tiny_vla, load_vla

        get = self.get_parameter
        if get("num_threads").value:
            torch.set_num_threads(get("num_threads").value)
        device = get("device").value
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device is 'cuda' but torch sees no CUDA GPU: set device:=cpu or check the driver")
        model = get("model").value
        start = time.perf_counter()
        if model == "tiny":
            policy = build_tiny_vla(config_path("models", "tiny_llava.yaml"), seed=get("seed").value)
        else:
            policy = load_vla(model)
        policy.to(device)
        policy.warmup()
        self.get_logger().info(f"model {model!r} loaded and warmed up on {device} in "
                               f"{time.perf_counter() - start:.1f} s")
        return policy

    # ---- callbacks (executor thread; never block)
    def _on_instruction(self, msg: String) -> None:
        if msg.data.strip():
            self.instruction = msg.data
            self.get_logger().info(f"instruction: {msg.data!r}")

    def _on_odometry(self, msg: Odometry) -> None:
        v = msg.twist.twist.linear
        self.speed_mps = math.hypot(v.x, v.y)

    # ---- inference thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            msg = self.frames.take(timeout=0.2)
            if msg is not None:
                self._answer(msg)

    def _answer(self, msg: Image) -> None:
        try:
            rgb = from_image_msg(msg)
        except ImageDecodeError as exc:
            self.counters.malformed += 1
            self._fail(msg.header, f"rejected camera frame: {exc}")
            return
        try:
            out = self.policy.act([rgb], self.instruction, self.speed_mps)
        except Exception as exc:  # any model fault must end in a safe stop, not a dead thread
            self.counters.model_faults += 1
            self._fail(msg.header, f"policy failed: {type(exc).__name__}: {exc}")
            return
        action = out.action
        if not action.is_finite():
            self.counters.model_faults += 1
            self._fail(msg.header, "policy returned a non-finite action")
            return
        self.last_steer = action.steer
        self.control_pub.publish(self._control(action, msg.header))
        self.trajectory_pub.publish(trajectory(action, msg.header.stamp, self.get_parameter("ego_frame_id").value))
        self.counters.frames += 1
        latency_ms = self._age_ms(msg.header.stamp)
        self.counters.last_latency_ms = latency_ms
        self._publish_frame_stats(msg.header.stamp, latency_ms, out, action)

    def _fail(self, header: Header, reason: str) -> None:
        self.counters.last_error = reason
        self.get_logger().warning(f"{reason}; commanding a safe stop", throttle_duration_sec=1.0)
        self.control_pub.publish(self._control(Action.safe_stop(self.last_steer), header))

    def _control(self, action: Action, header: Header):
        if self.interface == "carla":
            return carla_control(action, header)
        # steer was normalised by the policy's controller; its road-wheel angle at |steer| = 1 converts back.
        return ackermann_control(action, header, self.policy.controller.max_steer_angle)

    def _age_ms(self, stamp: Time) -> float:
        return (self.get_clock().now().nanoseconds - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e6

    def _publish_frame_stats(self, stamp: Time, latency_ms: float, out, action: Action) -> None:
        values = {
            "stamp": f"{stamp.sec}.{stamp.nanosec:09d}",
            "latency_ms": f"{latency_ms:.2f}",
            **{f"{k}_ms": f"{v:.2f}" for k, v in out.timings_ms.items()},
            "visual_tokens": str(out.num_visual_tokens),
            "dropped_stale": str(self.frames.dropped_stale),
            "steer": f"{action.steer:.4f}", "throttle": f"{action.throttle:.4f}", "brake": f"{action.brake:.4f}",
            "target_speed": f"{action.target_speed:.3f}",
        }
        self.stats_pub.publish(DiagnosticStatus(
            level=DiagnosticStatus.OK, name="autoprune: frame", message=f"frame {self.counters.frames}",
            hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()]))

    def _publish_diagnostics(self) -> None:
        c = self.counters
        level, message = DiagnosticStatus.OK, "running"
        if c.model_faults:
            level, message = DiagnosticStatus.ERROR, f"model faults: {c.model_faults} (last: {c.last_error})"
        elif c.malformed or self.frames.dropped_stale:
            level, message = DiagnosticStatus.WARN, (f"{c.malformed} malformed frames, "
                                                     f"{self.frames.dropped_stale} dropped as stale")
        values = {"frames_answered": c.frames, "frames_received": self.frames.received,
                  "dropped_stale": self.frames.dropped_stale, "malformed": c.malformed,
                  "model_faults": c.model_faults, "last_latency_ms": f"{c.last_latency_ms:.2f}",
                  "instruction": self.instruction}
        status = DiagnosticStatus(level=level, name="autoprune: pipeline", message=message,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                              status=[status]))

    def shutdown(self) -> None:
        """Stop the worker and command a final safe stop (stamped now: it answers no frame)."""
        self._stopping.set()
        self.frames.close()
        self._worker.join(timeout=5.0)
        stop_header = Header(stamp=self.get_clock().now().to_msg())
        self.control_pub.publish(self._control(Action.safe_stop(self.last_steer), stop_header))


HELP = """usage: autoprune_node [--ros-args -p name:=value ... -r from:=to ...]

Runs a VLA driving policy on the newest camera frame and publishes stamped driving commands.

parameters (defaults; read-only ones are fixed at start):
""" + "\n".join(f"  {n:24s} {d!r:32s} {desc.description}{' [read-only]' if desc.read_only else ''}"
                for n, (d, desc) in PARAMETERS.items()) + f"""

topics: in  <camera_topic> (sensor_msgs/Image), /autoprune/instruction (std_msgs/String, transient local),
            /carla/hero/odometry (nav_msgs/Odometry)
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
    node = None
    try:
        node = AutoPruneNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"autoprune_node: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
