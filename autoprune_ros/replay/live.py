"""Live replay: the bag's inputs published on ROS with /clock to the real `autoprune` node, its outputs recorded.

The node runs as a child process (use_sim_time on), as on the vehicle. A player node in this process publishes
/clock and the topics the node consumes (cameras, instruction, odometry: the bag's CDR bytes, unchanged, in the
bag's order), and a recorder subscribed to the node's outputs writes them to an output bag (bag time = the sim
time of receipt) and matches them to the bag's frames by header stamp.

`rate` > 0 plays at the recorded rate times `rate`: the node sees the bag as it would see the sensors and drops
frames it is too slow for. `rate` = 0 is step mode, deterministic and drop-free on any machine: camera delivery
is reliable, each primary image goes out only once the node has answered the previous one, and before it a
service round trip to the node (see `_Player.barrier`) makes sure the node's executor has handled the /clock
tick, instruction, odometry and secondary cameras sent before it. The node then holds the same inputs the
offline runner hands the pipeline, so both give the same actions for the same frames.
"""
from __future__ import annotations

import importlib
import os
import struct
import subprocess
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune_ros.replay.frames import FrameRecord
from autoprune_ros.ros.frame_stats import kept_tokens, stamp_ns
from autoprune_ros.ros.parameters import PARAMETERS
from autoprune_ros.rosenv import ros_environment
from autoprune_ros.runtime.configs import PolicyConfig, node_params

NODE_NAME = "autoprune"
INSTRUCTION_TOPIC = "/autoprune/instruction"
ODOMETRY_TOPIC = "/carla/hero/odometry"
ROUTE_TOPIC = PARAMETERS["route_topic"].default
CONTROL_TOPIC = "/carla/hero/vehicle_control_cmd"
TRAJECTORY_TOPIC = "/autoprune/trajectory"
FRAME_STATS_TOPIC = "/autoprune/frame_stats"
RECORDED = {CONTROL_TOPIC: "carla_msgs/msg/CarlaEgoVehicleControl", TRAJECTORY_TOPIC: "nav_msgs/msg/Path",
            FRAME_STATS_TOPIC: "diagnostic_msgs/msg/DiagnosticStatus",
            "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
SAFE_STOP_LOG = "; commanding a safe stop"  # how the node's warnings about a safe stop end
CLOCK_PERIOD_S = 0.02  # rate > 0: wall time between /clock messages while waiting for the next bag message
FAIL_GRACE_S = 1.0  # a command for a frame with no frame_stats this long after it is the node's safe stop
SETTLE_S = 0.5  # after the node's inputs matched: lets discovery finish on the node's side too
DRAIN_IDLE_S = 10.0  # rate > 0: after the last frame, stop waiting once the node has been silent this long


class LiveReplayError(ValueError):
    """Live replay could not run (the node did not come up or died, a type cannot be published); says why."""


@dataclass
class _Answer:
    """What the node published for one stamp."""

    control: Any = None
    path: Any = None
    stats: dict[str, str] | None = None
    control_at: float | None = None  # monotonic arrival of a command sent after the frame went out
    reason: str = ""  # the node's last logged reason for a safe stop when that command came


@dataclass
class _Out:
    """One bag message to publish: on `topic` (the node's name for its role), `rank` orders a batch of equal
    bag time (instruction and odometry, then secondary cameras, then the primary, which starts the node's set)."""

    time_ns: int
    topic: str
    data: bytes
    rank: int
    stamp_ns: int | None = None  # primary camera only: its header stamp


def node_camera_topic(topic: str, msgtype: str) -> str:
    """The topic the node subscribes for a camera: it takes CompressedImage exactly on topics ending in
    /compressed, so a compressed stream on another name gets the suffix and an Image stream loses it."""
    compressed = msgtype.endswith("CompressedImage")
    name = topic.rstrip("/")
    if compressed and not name.endswith("/compressed"):
        return name + "/compressed"
    if not compressed and name.endswith("/compressed"):
        return name[: -len("/compressed")] + "/image"
    return name


def get_message(msgtype: str) -> type:
    """The rclpy message class of a ROS 2 type name ("sensor_msgs/msg/Image")."""
    package, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(package.replace("/", ".")), name)
    except (ImportError, AttributeError):
        raise LiveReplayError(f"no ROS interface package here provides {msgtype}: install it to replay this bag "
                              "live, or replay it offline") from None


def cdr_stamp_ns(data: bytes) -> int | None:
    """The header stamp of a CDR-serialized message whose first field is a std_msgs/Header (images)."""
    if len(data) < 12:
        return None
    sec, nanosec = struct.unpack_from("<iI" if data[1] & 1 else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _optional(values: dict[str, str], key: str) -> float | None:
    text = values.get(key, "")
    return float(text) if text else None


def frame_record(index: int, stamp_ns: int, answer: _Answer | None, log: Path | str) -> FrameRecord:
    """The FrameRecord of what the node published for a frame's stamp (steer positive left, as offline);
    `log` is the node's log, named where a safe stop's reason is not known."""
    if answer is None or (answer.stats is None and answer.control_at is None):
        return FrameRecord(index, stamp_ns, status="missing", error="the node published nothing for this frame")
    if answer.stats is None:
        return FrameRecord(index, stamp_ns, status="failed",
                           error=f"the node commanded a safe stop: {answer.reason or f'see its log {log}'}")
    values, control = answer.stats, answer.control
    kept = kept_tokens(values)
    record = FrameRecord(
        index, stamp_ns, target_speed=float(values["target_speed"]), budget=_optional(values, "budget"),
        visual_tokens=int(values["visual_tokens"]), kept_tokens_per_layer=kept or None,
        complexity=_optional(values, "complexity"), slope=_optional(values, "slope"),
        flops_ratio=_optional(values, "flops_ratio"), latency_ms=_optional(values, "pipeline_ms"),
        model_ms=_optional(values, "model_ms"))
    if control is not None:  # float32 fields: finer than frame_stats' four decimals; CARLA steers positive right
        record.steer, record.throttle, record.brake = -float(control.steer), float(control.throttle), float(
            control.brake)
    else:
        record.steer, record.throttle, record.brake = (float(values[k]) for k in ("steer", "throttle", "brake"))
    if answer.path is not None:
        record.waypoints = [[float(p.pose.position.x), float(p.pose.position.y)] for p in answer.path.poses]
    return record


def _camera_types(reader, cameras: list[str]) -> dict[str, str]:
    """Each camera's message type, from its first message."""
    types: dict[str, str] = {}
    messages = reader.cdr_messages(cameras)
    for topic, msgtype, _, _ in messages:
        types.setdefault(topic, msgtype)
        if len(types) == len(cameras):
            break
    messages.close()
    if cameras[0] not in types:
        raise LiveReplayError(f"{reader.info.path}: no camera frames to publish on {cameras[0]}")
    return types


def _outgoing(reader, camera_topics: dict[str, str]) -> Iterator[_Out]:
    """The bag's messages for the node, in bag order, on the node's topics."""
    topics = reader.info.topics
    names = {**camera_topics}
    names.update({t: node for t, node in ((topics.instruction, INSTRUCTION_TOPIC),
                                          (topics.odometry, ODOMETRY_TOPIC), (topics.route, ROUTE_TOPIC)) if t})
    primary = topics.cameras[0]
    for topic, _, t_ns, data in reader.cdr_messages(list(names)):
        if topic == primary:
            yield _Out(t_ns, names[topic], data, 2, cdr_stamp_ns(data))
        else:
            yield _Out(t_ns, names[topic], data, 1 if topic in camera_topics else 0)


def _batches(items: Iterable[_Out]) -> Iterator[list[_Out]]:
    """Runs of equal bag time, each ordered by rank."""
    batch: list[_Out] = []
    for item in items:
        if batch and item.time_ns != batch[0].time_ns:
            yield sorted(batch, key=lambda o: o.rank)
            batch = []
        batch.append(item)
    if batch:
        yield sorted(batch, key=lambda o: o.rank)


class _Player:
    """The in-process rclpy side: publishers of the node's inputs and /clock, the recorder of its outputs, the
    service round trip. `now_ns` is the sim time last published; recorded messages get it as their bag time."""

    def __init__(self, context, writer, publish: dict[str, str], step: bool, proc: subprocess.Popen,
                 log: Path) -> None:
        import rclpy
        from rcl_interfaces.msg import Log
        from rcl_interfaces.srv import GetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rosgraph_msgs.msg import Clock

        from autoprune_ros.replay.typestore import project_typestore
        from autoprune_ros.ros.qos import latched_qos, stream_qos

        self.proc, self.log, self.writer, self.store = proc, log, writer, project_typestore()
        self.node = rclpy.create_node("autoprune_replay_player", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.clock_cls = Clock
        self.clock_pub = self.node.create_publisher(Clock, "/clock", stream_qos("best_effort", 1))
        qos = {INSTRUCTION_TOPIC: latched_qos(), ROUTE_TOPIC: latched_qos(),
               ODOMETRY_TOPIC: stream_qos("best_effort", 1)}
        image_qos = stream_qos("reliable", 10) if step else stream_qos("best_effort", 1)
        self.pubs = {topic: self.node.create_publisher(get_message(msgtype), topic, qos.get(topic, image_qos))
                     for topic, msgtype in publish.items()}
        self.params = self.node.create_client(GetParameters, f"/{NODE_NAME}/get_parameters")
        self.request = GetParameters.Request(names=["use_sim_time"])
        self.now_ns = 0
        self.answers: dict[int, _Answer] = {}
        self.sent: set[int] = set()  # stamps whose primary image went out
        self.last_warning = ""  # the node's latest reason for a safe stop, from /rosout
        self.fatal = ""  # the node's configure failure, from /rosout: nothing will answer
        self.last_output = time.monotonic()
        for topic, msgtype in RECORDED.items():
            writer.add(topic, msgtype)
            self.node.create_subscription(get_message(msgtype), topic, lambda data, t=topic: self._on_output(t, data),
                                          stream_qos("reliable", 100), raw=True)
        # /rosout is transient local: what the node logged before this subscription matched arrives too.
        self.node.create_subscription(Log, "/rosout", self._on_log, latched_qos(100))

    # ---- recorder
    def _on_output(self, topic: str, data: bytes) -> None:
        self.writer.write_cdr(topic, self.now_ns, data)
        if topic == "/diagnostics":
            return
        self.last_output = time.monotonic()
        msg = self.store.deserialize_cdr(data, RECORDED[topic])
        if topic == FRAME_STATS_TOPIC:
            values = {kv.key: kv.value for kv in msg.values}
            stamp = stamp_ns(values)
            if stamp is not None:
                self.answers.setdefault(stamp, _Answer()).stats = values
            return
        stamp = _stamp_ns(msg.header.stamp)
        answer = self.answers.setdefault(stamp, _Answer())
        if topic == TRAJECTORY_TOPIC:
            answer.path = msg
            return
        answer.control = msg
        # A command stamped like a frame that has not gone out yet is the watchdog's (it stamps with the clock).
        if stamp in self.sent and answer.control_at is None:
            answer.control_at, answer.reason = time.monotonic(), self.last_warning

    def _on_log(self, msg) -> None:
        if msg.name != NODE_NAME:
            return
        if msg.msg.endswith(SAFE_STOP_LOG):
            self.last_warning = msg.msg.removesuffix(SAFE_STOP_LOG)
        elif msg.msg.startswith("configure failed"):
            self.fatal = msg.msg.split("; fix the parameter")[0]

    # ---- waiting
    def spin(self, seconds: float = 0.0) -> None:
        self.executor.spin_once(timeout_sec=seconds)

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Spin until `predicate()` or `timeout` s; LiveReplayError as soon as the node is known not to answer."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise LiveReplayError(f"the autoprune node exited with status {self.proc.returncode}; see its log "
                                      f"{self.log}")
            if self.fatal:
                raise LiveReplayError(f"the autoprune node could not start: {self.fatal}; see its log {self.log}")
            if time.monotonic() > deadline:
                return False
            self.spin(0.01)
        return True

    def ready(self) -> bool:
        """Every input matched (camera subscriptions exist only while the node is active) and its services up."""
        return all(p.get_subscription_count() > 0 for p in [*self.pubs.values(), self.clock_pub]) and \
            self.params.service_is_ready()

    def barrier(self, timeout: float) -> None:
        """Two parameter-service round trips to the node. In one wake its single-threaded executor runs timers,
        then subscriptions, then services: once the first reply is back it has handled what was sent before
        the request; the second lets the watchdog timer that a /clock tick made ready run before the frame."""
        for _ in range(2):
            future = self.params.call_async(self.request)
            if not self.spin_until(future.done, timeout):
                raise LiveReplayError(f"the autoprune node did not answer a parameter request within {timeout:.0f} s; "
                                      f"see its log {self.log}")

    def resolved(self, stamp_ns: int) -> bool:
        """The node answered the stamp, or commanded a safe stop for it and no answer followed."""
        answer = self.answers.get(stamp_ns)
        if answer is None:
            return False
        if answer.stats is not None:
            return True
        if answer.control_at is None or time.monotonic() - answer.control_at <= FAIL_GRACE_S:
            return False
        answer.reason = self.last_warning or answer.reason  # the node logs before it commands; now it is here
        return True

    # ---- playing
    def clock(self, t_ns: int) -> None:
        from builtin_interfaces.msg import Time

        self.now_ns = max(self.now_ns, t_ns)
        self.clock_pub.publish(self.clock_cls(clock=Time(sec=self.now_ns // 1_000_000_000,
                                                         nanosec=self.now_ns % 1_000_000_000)))

    def publish(self, out: _Out) -> None:
        if out.stamp_ns is not None:
            self.sent.add(out.stamp_ns)
        self.pubs[out.topic].publish(out.data)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def run_live(reader, config: PolicyConfig, *, output_bag: Path, model: str = "tiny", rate: float = 1.0,
             output_storage: str = "mcap", latency_budget_ms: float = PARAMETERS["latency_budget_ms"].default,
             node_log: Path | None = None, progress: bool = False, extra_params: Mapping[str, Any] | None = None,
             startup_timeout: float = 300.0, answer_timeout: float = 120.0) -> list[FrameRecord]:
    """Replay the bag of `reader` (a bag_reader.BagReader) through the real node running `config`: one
    FrameRecord per frame of `reader.frames()`, by index ("missing" where the node answered nothing, "failed"
    where it commanded a safe stop). The node's outputs go to `output_bag` (bag_writer storage). `rate` 0 is
    step mode (deterministic, no drops); `extra_params` are more node parameters (num_threads, device, ...).
    The node's output goes to `node_log` (a temporary file when None), which errors name. LiveReplayError when
    the node does not come up within `startup_timeout` s or dies; on any exit, Ctrl-C included, the node is
    stopped and the output bag closed first."""
    os.environ.update(ros_environment())  # before rclpy loads its middleware: the node must share it all
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from autoprune_ros.processes import ros_args, start_module, stop
    from autoprune_ros.replay.bag_writer import open_writer

    if rate < 0:
        raise LiveReplayError(f"rate must be >= 0 (0: step mode), got {rate}")
    step = rate == 0
    info = reader.info
    frames = [(f.index, f.stamp_ns) for f in reader.frames()]
    types = _camera_types(reader, list(info.topics.cameras))
    cameras = {t: node_camera_topic(t, types[t]) for t in info.topics.cameras if t in types}
    publish = {cameras[t]: types[t] for t in cameras}
    publish.update({node: msgtype for t, node, msgtype in ((info.topics.instruction, INSTRUCTION_TOPIC,
                                                              "std_msgs/msg/String"),
                                                             (info.topics.odometry, ODOMETRY_TOPIC,
                                                              "nav_msgs/msg/Odometry"),
                                                             (info.topics.route, ROUTE_TOPIC,
                                                              "nav_msgs/msg/Path")) if t})
    params = {**node_params(config, latency_budget_ms, model), "camera_topics": list(cameras.values())}
    if step:
        params["image_qos_reliability"] = "reliable"
    params.update(extra_params or {})
    if node_log is None:
        fd, name = tempfile.mkstemp(prefix="autoprune-node-", suffix=".log")
        os.close(fd)
        node_log = Path(name)
    context = rclpy.Context()
    with open(node_log, "w") as log_file, open_writer(output_bag, output_storage) as writer:
        proc = start_module("autoprune_ros.ros.node", ros_args(params), stdout=log_file, stderr=subprocess.STDOUT)
        rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
        player = bar = None
        try:
            player = _Player(context, writer, publish, step, proc, node_log)
            if not player.spin_until(player.ready, startup_timeout):
                raise LiveReplayError(f"the autoprune node did not come up within {startup_timeout:.0f} s; see its "
                                      f"log {node_log}")
            player.spin_until(lambda: False, SETTLE_S)
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(frames), desc=f"live {config.name}", unit="frame", leave=False)
            answers = _play(player, _batches(_outgoing(reader, cameras)), frames, step=step, rate=rate,
                            answer_timeout=answer_timeout, bar=bar)
        finally:
            if bar is not None:
                bar.close()
            stop(proc)
            if player is not None:
                player.close()
            rclpy.try_shutdown(context=context)
    return [frame_record(index, stamp, answers.get(index), node_log) for index, stamp in frames]


def _play(player: _Player, batches: Iterator[list[_Out]], frames: list[tuple[int, int]], *, step: bool,
          rate: float, answer_timeout: float, bar) -> dict[int, _Answer]:
    """Publish the batches (step mode: each primary image once the node has answered the previous one; else
    on the bag's schedule scaled by `rate`) and wait for the last frame's answer; returns answers by frame."""
    indices: dict[int, deque[int]] = defaultdict(deque)  # stamp -> frame indices, in order
    for index, stamp in frames:
        indices[stamp].append(index)
    answers: dict[int, _Answer] = {}
    start_wall = start_time = last_stamp = None
    for batch in batches:
        t_ns = batch[0].time_ns
        if start_time is None:
            start_wall, start_time = time.monotonic(), t_ns
        if not step:
            due = start_wall + (t_ns - start_time) / 1e9 / rate
            while (left := due - time.monotonic()) > 0:
                player.clock(start_time + int((time.monotonic() - start_wall) * rate * 1e9))
                player.spin(min(left, CLOCK_PERIOD_S))
        player.clock(t_ns)
        for out in batch:
            if out.stamp_ns is None:
                player.publish(out)
                continue
            if step:
                player.barrier(answer_timeout)
            player.publish(out)
            last_stamp = out.stamp_ns
            index = indices[out.stamp_ns].popleft() if indices.get(out.stamp_ns) else None
            if index is None:  # not a frame of the reader (its message does not decode): nothing to wait for
                continue
            if step:
                player.spin_until(lambda s=out.stamp_ns: player.resolved(s), answer_timeout)
                answer = player.answers.pop(out.stamp_ns, None)
                if answer is not None:
                    answers[index] = answer
            if bar is not None:
                bar.update()
        player.spin()
    if last_stamp is not None and not step:  # the newest frame is never dropped as stale: its answer ends the run
        sent = time.monotonic()
        player.spin_until(lambda: player.resolved(last_stamp) or time.monotonic() - max(
            sent, player.last_output) > DRAIN_IDLE_S, answer_timeout)
    if not step:
        answers = {index: player.answers[stamp] for index, stamp in frames if stamp in player.answers}
    return answers
