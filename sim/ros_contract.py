"""The ROS topic contract that every simulator bridge speaks (CARLA and MetaDrive alike), so the node's
configuration is the same for both: topic names, QoS choices and message conversions.

Pure functions and constants. Imports rclpy and ROS message types only (plus numpy, any version from 1.24), so
it loads in the main environment and in the simulator's own (.venv-sim: numpy 1.24, no torch).

Conventions:
- Time is simulation time. Stamps are exact integer nanoseconds: use `tick_stamp(tick, dt)` in a tick loop
  (tick * round(dt * 1e9), no float accumulation); `stamp(seconds)` rounds to the nearest nanosecond.
- Poses are ROS (REP 103: x forward, y left, z up, yaw counter-clockwise). Odometry carries the pose in
  `map` and the twist in the child frame (`hero`), as REP 105 and the CARLA ROS bridge do.
- Controls are CARLA's: steer in [-1, 1] with positive = right, throttle and brake in [0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

NS_PER_S = 1_000_000_000
STAMP_TOLERANCE_NS = 1_000_000  # a control answers a frame when the stamps agree within 1 ms (Leaderboard rule)

# ---- names
ROLE_NAME = "hero"
CAMERA_ID = "rgb_front"
MAP_FRAME = "map"
EGO_FRAME = ROLE_NAME
CAMERA_FRAME_ID = f"{ROLE_NAME}/{CAMERA_ID}"
CAMERA_FRAME = CAMERA_FRAME_ID

CAMERA_TOPIC = f"/carla/{ROLE_NAME}/{CAMERA_ID}/image"
CLOCK_TOPIC = "/clock"
ODOMETRY_TOPIC = f"/carla/{ROLE_NAME}/odometry"
VEHICLE_STATUS_TOPIC = f"/carla/{ROLE_NAME}/vehicle_status"
COLLISION_TOPIC = f"/carla/{ROLE_NAME}/collision"
LANE_INVASION_TOPIC = f"/carla/{ROLE_NAME}/lane_invasion"
STATUS_TOPIC = "/carla/status"
INSTRUCTION_TOPIC = "/autoprune/instruction"
CONTROL_TOPIC = f"/carla/{ROLE_NAME}/vehicle_control_cmd"
FRAME_STATS_TOPIC = "/autoprune/frame_stats"
# the route ahead (nav_msgs/Path, map frame, latched), as the CARLA ROS bridge's waypoint publisher names it
ROUTE_TOPIC = f"/carla/{ROLE_NAME}/waypoints"
# privileged, MetaDrive only: the centreline the expert steers for, ahead of the ego (sim/reference_path.py)
REFERENCE_PATH_TOPIC = f"/metadrive/{ROLE_NAME}/reference_path"

# ---- navigation commands published on INSTRUCTION_TOPIC
FOLLOW_LANE = "follow the lane"
TURN_LEFT = "turn left at the next intersection"
TURN_RIGHT = "turn right at the next intersection"
GO_STRAIGHT = "go straight at the next intersection"
INSTRUCTIONS = (FOLLOW_LANE, TURN_LEFT, TURN_RIGHT, GO_STRAIGHT)

# ---- QoS (a best-effort subscriber, like the node's camera input, receives from these reliable publishers)
SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)  # camera, odometry, status: as the CARLA bridge
CLOCK_QOS = SENSOR_QOS
EVENT_QOS = SENSOR_QOS  # collision, lane invasion
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)  # instruction: late joiners get the last one
# Controls and frame stats: reliable and deep enough that a late answer never pushes out the awaited one.
CONTROL_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
FRAME_STATS_QOS = CONTROL_QOS

# ---- images
_CHANNELS = {"mono8": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}
ENCODINGS = tuple(_CHANNELS)


# ---- time
def stamp_from_ns(ns: int) -> Time:
    """A builtin_interfaces/Time from integer nanoseconds (>= 0)."""
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"simulation time must not be negative, got {ns} ns")
    return Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


def stamp(sim_time_s: float) -> Time:
    """A builtin_interfaces/Time for `sim_time_s` seconds, rounded to the nearest nanosecond."""
    if not math.isfinite(sim_time_s):
        raise ValueError(f"simulation time must be finite, got {sim_time_s}")
    return stamp_from_ns(round(sim_time_s * NS_PER_S))


def dt_ns(dt_s: float) -> int:
    """A tick length in integer nanoseconds."""
    ns = round(dt_s * NS_PER_S)
    if ns <= 0:
        raise ValueError(f"tick length must be positive, got {dt_s} s")
    return ns


def tick_stamp(tick: int, dt_s: float) -> Time:
    """The stamp of tick `tick` (0-based count of `dt_s` steps), exact: no accumulated float error."""
    return stamp_from_ns(int(tick) * dt_ns(dt_s))


def stamp_ns(t: Time) -> int:
    """Integer nanoseconds of a builtin_interfaces/Time."""
    return int(t.sec) * NS_PER_S + int(t.nanosec)


def time_of(t: Time) -> float:
    """Seconds (float) of a builtin_interfaces/Time."""
    return t.sec + t.nanosec / NS_PER_S


def stamps_match(a: Time | int, b: Time | int, tolerance_ns: int = STAMP_TOLERANCE_NS) -> bool:
    """True when two stamps (Time or integer ns) agree within `tolerance_ns`."""
    a_ns = a if isinstance(a, int) else stamp_ns(a)
    b_ns = b if isinstance(b, int) else stamp_ns(b)
    return abs(a_ns - b_ns) <= tolerance_ns


def _as_time(value: Time | float | int) -> Time:
    return value if isinstance(value, Time) else stamp(float(value))


def parse_stamp_text(text: str) -> int:
    """Integer nanoseconds from the node's "sec.nanosec" text (frame_stats key "stamp"); ValueError if malformed."""
    sec, _, nsec = text.strip().partition(".")
    if not sec.isdigit() or (nsec and not nsec.isdigit()) or len(nsec) > 9:
        raise ValueError(f"not a 'sec.nanosec' stamp: {text!r}")
    return int(sec) * NS_PER_S + int(nsec.ljust(9, "0") or 0)


# ---- messages
def clock_msg(sim_time: Time | float) -> Clock:
    """rosgraph_msgs/Clock for a simulation time (a Time or seconds)."""
    return Clock(clock=_as_time(sim_time))


def image_msg(pixels: np.ndarray, encoding: str, stamp: Time | float, frame_id: str) -> Image:
    """sensor_msgs/Image from an (H, W, C) or (H, W) uint8 array, rows packed (step = W * C).

    The array is sent as it is: pass bgra8 as CARLA delivers it, rgb8 as MetaDrive's flipped frame.
    """
    if encoding not in _CHANNELS:
        raise ValueError(f"unsupported encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    channels = _CHANNELS[encoding]
    if arr.ndim == 2 and channels == 1:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(f"{encoding} needs shape (H, W, {channels}), got {arr.shape}")
    height, width = arr.shape[:2]
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=width * channels)
    msg.header.stamp = _as_time(stamp)
    msg.header.frame_id = frame_id
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation by `yaw` radians about z."""
    return 0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)


def rpy_quaternion(roll: float, pitch: float, yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of intrinsic Z-Y-X (yaw, pitch, roll) rotations, radians."""
    cr, sr = math.cos(roll / 2.0), math.sin(roll / 2.0)
    cp, sp = math.cos(pitch / 2.0), math.sin(pitch / 2.0)
    cy, sy = math.cos(yaw / 2.0), math.sin(yaw / 2.0)
    return (sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy)


def quaternion_yaw(q) -> float:
    """Yaw (radians, (-pi, pi]) of a quaternion with fields x, y, z, w."""
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def odometry_msg(x: float, y: float, yaw: float, vx: float, vy: float, yaw_rate: float,
                 stamp: Time | float, *, z: float = 0.0, frame_id: str = MAP_FRAME,
                 child_frame_id: str = EGO_FRAME) -> Odometry:
    """nav_msgs/Odometry: pose (x, y, z, yaw) in `frame_id`; twist (vx forward, vy left, yaw_rate) in the
    child frame. ROS axes and radians."""
    msg = Odometry(child_frame_id=child_frame_id)
    msg.header.stamp = _as_time(stamp)
    msg.header.frame_id = frame_id
    pose = msg.pose.pose
    pose.position.x, pose.position.y, pose.position.z = float(x), float(y), float(z)
    q = pose.orientation
    q.x, q.y, q.z, q.w = yaw_quaternion(float(yaw))
    twist = msg.twist.twist
    twist.linear.x, twist.linear.y = float(vx), float(vy)
    twist.angular.z = float(yaw_rate)
    return msg


def path_msg(points, stamp: Time | float, frame_id: str = MAP_FRAME):
    """nav_msgs/Path through (K, 2) points (x, y in `frame_id`), every pose stamped like the path."""
    msg = Path()
    msg.header.stamp = _as_time(stamp)
    msg.header.frame_id = frame_id
    for x, y in points:
        pose = PoseStamped(header=msg.header)
        pose.pose.position.x, pose.pose.position.y = float(x), float(y)
        pose.pose.orientation.w = 1.0
        msg.poses.append(pose)
    return msg


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def control_tuple(msg) -> tuple[float, float, float, bool, bool]:
    """(steer, throttle, brake, hand_brake, reverse) of a CarlaEgoVehicleControl, clamped to [-1, 1] / [0, 1].

    A message with any non-finite value becomes a safe stop (0 steer, 0 throttle, full brake).
    """
    steer, throttle, brake = float(msg.steer), float(msg.throttle), float(msg.brake)
    if not all(math.isfinite(v) for v in (steer, throttle, brake)):
        return 0.0, 0.0, 1.0, bool(msg.hand_brake), False
    return (_clamp(steer, -1.0, 1.0), _clamp(throttle, 0.0, 1.0), _clamp(brake, 0.0, 1.0),
            bool(msg.hand_brake), bool(msg.reverse))


def frame_stats_latency(values: Mapping[str, str] | object) -> tuple[int, float] | None:
    """(frame stamp ns, pipeline ms) from a /autoprune/frame_stats DiagnosticStatus (or a key -> value mapping);
    None when either key is missing or malformed."""
    if not isinstance(values, Mapping):
        values = {kv.key: kv.value for kv in getattr(values, "values", [])}
    try:
        ns = parse_stamp_text(values["stamp"])
        ms = float(values["pipeline_ms"])
    except (KeyError, ValueError, TypeError):
        return None
    return (ns, ms) if math.isfinite(ms) and ms >= 0 else None
