"""A small deterministic synthetic episode in the project's bag contract (docs/data.md), for tests and demos.

A car drives a gentle left curve at cruise speed, then brakes to a standstill over the last third; the
instruction switches from "follow the lane" to "stop" at the braking tick. 10 Hz, header stamp of tick t =
t x 100 ms, bag time = header stamp. Per tick the bag holds, in this order: the instruction (tick 0 and on
change), the secondary cameras, the primary camera (so a live node's frame sync finds the other views
already there), odometry and the CARLA-convention control.

    python -m autoprune_ros.replay.sample_bag data/sample_bag --storage mcap --frames 30
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from autoprune_ros.replay.bag_writer import STORAGES, open_writer
from autoprune_ros.runtime.synthetic_frames import road_frame

TICK_NS = 100_000_000
CAMERA_TOPICS = ("/carla/hero/rgb_front/image", "/carla/hero/rgb_left/image", "/carla/hero/rgb_right/image")
ODOMETRY_TOPIC = "/carla/hero/odometry"
CONTROL_TOPIC = "/carla/hero/vehicle_control_cmd"
INSTRUCTION_TOPIC = "/autoprune/instruction"
FOLLOW, STOP = "follow the lane", "stop"
CRUISE_MPS = 4.0
CURVATURE = 0.02  # 1/m: a gentle left curve (50 m radius)
MAX_STEER_RAD = 0.6
WHEELBASE_M = 2.8
CRUISE_THROTTLE, BRAKE = 0.35, 0.5


def camera_topic(index: int, compressed: bool) -> str:
    """The sample bag's topic of camera `index` (0 = primary), `/compressed` appended for CompressedImage."""
    return CAMERA_TOPICS[index] + ("/compressed" if compressed else "")


def braking_tick(frames: int) -> int:
    """The first tick of the braking third (the instruction turns to "stop" there)."""
    return max(1, (2 * frames) // 3)


def speed_at(tick: int, frames: int) -> float:
    """Cruise speed, then a linear decrease reaching 0 at the last tick."""
    start = braking_tick(frames)
    if tick < start:
        return CRUISE_MPS
    return CRUISE_MPS * max(0.0, 1.0 - (tick - start + 1) / max(1, frames - start))


def camera_image(tick: int, camera: int, width: int, height: int, seed: int) -> np.ndarray:
    """The RGB frame of `camera` at `tick`: the synthetic road, each camera and seed at its own phase."""
    return road_frame(tick + 37 * camera + 1000 * seed, width, height)


def header_msg(store, stamp_ns: int, frame_id: str):
    """A std_msgs/Header (a rosbags object of `store`) stamped at `stamp_ns`."""
    time = store.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                        nanosec=stamp_ns % 1_000_000_000)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def image_msg(store, header, rgb: np.ndarray, compressed: bool = False):
    """An rgb8 sensor_msgs/Image, or a lossless PNG CompressedImage, of the RGB uint8 array `rgb`."""
    if compressed:
        import cv2

        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
        if not ok:
            raise ValueError(f"cannot PNG-encode a {rgb.shape} frame")
        return store.types["sensor_msgs/msg/CompressedImage"](header=header, format="rgb8; png compressed bgr8",
                                                              data=np.asarray(buf, np.uint8).ravel())
    height, width = rgb.shape[:2]
    return store.types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding="rgb8",
                                                is_bigendian=0, step=3 * width, data=rgb.reshape(-1).copy())


def odometry_msg(store, header, x: float, y: float, yaw: float, speed: float, yaw_rate: float):
    """A nav_msgs/Odometry at map pose (x, y, yaw) moving at `speed` m/s (twist.linear.x) turning at `yaw_rate`."""
    t = store.types
    vec = t["geometry_msgs/msg/Vector3"]
    pose = t["geometry_msgs/msg/Pose"](
        position=t["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
        orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    twist = t["geometry_msgs/msg/Twist"](linear=vec(x=speed, y=0.0, z=0.0), angular=vec(x=0.0, y=0.0, z=yaw_rate))
    return t["nav_msgs/msg/Odometry"](
        header=header, child_frame_id="hero",
        pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=t["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)))


def control_msg(store, header, steer_left: float, throttle: float, brake: float):
    """A carla_msgs/CarlaEgoVehicleControl; `steer_left` is positive left, stored in CARLA's positive-right sign."""
    return store.types["carla_msgs/msg/CarlaEgoVehicleControl"](
        header=header, throttle=throttle, steer=-steer_left, brake=brake, hand_brake=False, reverse=False,
        gear=1, manual_gear_shift=False)


def write_sample_bag(path: str | Path, storage: str = "mcap", frames: int = 30, *, width: int = 64,
                     height: int = 48, cameras: int = 1, compressed: bool = False, seed: int = 0) -> Path:
    """Write the synthetic episode to `path` (a rosbag2 folder, or a `.bag` file for "rosbag1") and return it.

    `cameras` (1-3) adds left / right cameras after the contract's front camera; `compressed` stores PNG
    CompressedImage on `<camera>/compressed` topics instead of rgb8 Image (lossless, so pixels round-trip).
    `seed` shifts the scene's phase and the curve's tightness; the bag is a function of the arguments alone.
    """
    if frames < 1:
        raise ValueError(f"a sample bag needs at least one frame, got {frames}")
    if not 1 <= cameras <= len(CAMERA_TOPICS):
        raise ValueError(f"cameras must be 1 to {len(CAMERA_TOPICS)}, got {cameras}")
    curvature = CURVATURE * (1.0 + 0.25 * np.random.default_rng(seed).uniform(-1.0, 1.0))
    steer_left = math.atan(WHEELBASE_M * curvature) / MAX_STEER_RAD
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with open_writer(path, storage) as bag:
        store = bag.typestore
        bag.add(INSTRUCTION_TOPIC, "std_msgs/msg/String")
        for cam in range(cameras):
            bag.add(camera_topic(cam, compressed), image_type)
        bag.add(ODOMETRY_TOPIC, "nav_msgs/msg/Odometry")
        bag.add(CONTROL_TOPIC, "carla_msgs/msg/CarlaEgoVehicleControl")
        x = y = yaw = 0.0
        previous = None
        for tick in range(frames):
            t_ns = tick * TICK_NS
            instruction = STOP if tick >= braking_tick(frames) else FOLLOW
            if instruction != previous:
                bag.write(INSTRUCTION_TOPIC, t_ns, store.types["std_msgs/msg/String"](data=instruction))
                previous = instruction
            for cam in [*range(1, cameras), 0]:
                header = header_msg(store, t_ns, "hero/" + CAMERA_TOPICS[cam].split("/")[3])
                rgb = camera_image(tick, cam, width, height, seed)
                bag.write(camera_topic(cam, compressed), t_ns, image_msg(store, header, rgb, compressed))
            speed = speed_at(tick, frames)
            yaw_rate = speed * curvature
            odom = odometry_msg(store, header_msg(store, t_ns, "map"), x, y, yaw, speed, yaw_rate)
            bag.write(ODOMETRY_TOPIC, t_ns, odom)
            if instruction == STOP:
                throttle, brake = 0.0, 1.0 if speed == 0 else BRAKE
            else:
                throttle, brake = CRUISE_THROTTLE, 0.0
            control = control_msg(store, header_msg(store, t_ns, "hero"), steer_left if speed > 0 else 0.0,
                                   throttle, brake)
            bag.write(CONTROL_TOPIC, t_ns, control)
            dt = TICK_NS / 1e9  # integrate the pose to the next tick
            x, y, yaw = x + speed * math.cos(yaw) * dt, y + speed * math.sin(yaw) * dt, yaw + yaw_rate * dt
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoprune_ros.replay.sample_bag",
        description="Write a small synthetic episode (front camera, odometry, CARLA control, instruction; 10 Hz) "
        "in the project's bag contract, for trying autoprune-replay without a recording.")
    parser.add_argument("output", help="bag folder to create (a .bag file for --storage rosbag1); must not exist")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage (default: mcap)")
    parser.add_argument("--frames", type=int, default=30, help="ticks of 0.1 s (default: 30)")
    parser.add_argument("--width", type=int, default=64, help="image width (default: 64)")
    parser.add_argument("--height", type=int, default=48, help="image height (default: 48)")
    parser.add_argument("--cameras", type=int, default=1, help="1 to 3 cameras (front, left, right; default: 1)")
    parser.add_argument("--compressed", action="store_true", help="PNG CompressedImage instead of rgb8 Image")
    parser.add_argument("--seed", type=int, default=0, help="scene variation (default: 0)")
    args = parser.parse_args(argv)
    try:
        path = write_sample_bag(args.output, args.storage, args.frames, width=args.width, height=args.height,
                                cameras=args.cameras, compressed=args.compressed, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.frames} frames to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
