"""One episode as a rosbag2 (mcap, version 8: Humble reads it) on the bag contract of docs/data.md: per tick the
camera, odometry, the reference path and, when it changes, the instruction, then the control applied. Shared by
the expert recorder and the bridge's expert-supervised runs, so that both give the same training data.
Runs in the simulator environment (.venv-sim) with AMENT_PREFIX_PATH pointing at it (carla_msgs definitions)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoprune_sim import ros_contract as contract
from autoprune_sim.metadrive_env import YawRate

TYPES = {
    contract.CAMERA_TOPIC: "sensor_msgs/msg/Image",
    contract.ODOMETRY_TOPIC: "nav_msgs/msg/Odometry",
    contract.CONTROL_TOPIC: "carla_msgs/msg/CarlaEgoVehicleControl",
    contract.INSTRUCTION_TOPIC: "std_msgs/msg/String",
    contract.REFERENCE_PATH_TOPIC: "nav_msgs/msg/Path",
}


def control_msg(steer_md: float, throttle_brake: float):
    """CARLA control (steer positive right) from MetaDrive's (steering positive left, throttle_brake)."""
    from carla_msgs.msg import CarlaEgoVehicleControl

    return CarlaEgoVehicleControl(steer=float(-steer_md), throttle=float(max(0.0, throttle_brake)),
                                  brake=float(max(0.0, -throttle_brake)), hand_brake=False, reverse=False,
                                  gear=1, manual_gear_shift=False)


class EpisodeBag:
    """Writer of one episode's bag into `folder` (must not exist); a context manager, or `open()` / `close()`.
    `segments` lists the instruction spans in ticks ({"instruction", "start", "end"}, end exclusive), as
    episode.json records them; `yaw_rate` is the last frame's (rad/s, from the previous frame's yaw)."""

    def __init__(self, folder: Path, dt_s: float) -> None:
        from autoprune_ros.replay.typestore import project_typestore

        self.folder, self.dt_s = Path(folder), dt_s
        self.store = project_typestore()
        if TYPES[contract.CONTROL_TOPIC] not in self.store.types:
            raise RuntimeError("carla_msgs definitions not found: set AMENT_PREFIX_PATH to the simulator environment")
        self.segments: list[dict[str, Any]] = []
        self._writer = None
        self._conns: dict[str, Any] = {}
        self._instruction: str | None = None
        self._yaw_rate = YawRate(dt_s)

    def open(self) -> EpisodeBag:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self._writer = Writer(self.folder, version=8, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns = {topic: self._writer.add_connection(topic, msgtype, typestore=self.store)
                       for topic, msgtype in TYPES.items()}
        return self

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> EpisodeBag:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, topic: str, ns: int, msg: Any) -> None:
        from rclpy.serialization import serialize_message

        self._writer.write(self._conns[topic], ns, serialize_message(msg))

    def write_frame(self, tick: int, image_rgb: np.ndarray, state: Any, reference: np.ndarray,
                    instruction: str) -> Any:
        """The messages of tick `tick` before the car acts: instruction (on change), camera, odometry (its yaw
        rate from the previous frame; `state` is a metadrive_env.EgoState) and the reference path (K, 2) in the
        map frame. Returns the tick's stamp for `write_control`."""
        from std_msgs.msg import String

        stamp = contract.tick_stamp(tick, self.dt_s)
        ns = contract.stamp_ns(stamp)
        if instruction != self._instruction:
            self._write(contract.INSTRUCTION_TOPIC, ns, String(data=instruction))
            self.segments.append({"instruction": instruction, "start": tick, "end": tick + 1})
            self._instruction = instruction
        self.segments[-1]["end"] = tick + 1
        yaw_rate = self._yaw_rate.update(state.yaw)
        self._write(contract.CAMERA_TOPIC, ns, contract.image_msg(image_rgb, "rgb8", stamp, contract.CAMERA_FRAME_ID))
        self._write(contract.ODOMETRY_TOPIC, ns, contract.odometry_msg(state.x, state.y, state.yaw, state.speed, 0.0,
                                                                       yaw_rate, stamp))
        self._write(contract.REFERENCE_PATH_TOPIC, ns, contract.path_msg(reference, stamp))
        return stamp

    @property
    def yaw_rate(self) -> float:
        """The yaw rate of the last frame written (rad/s)."""
        return self._yaw_rate.value

    def write_control(self, stamp: Any, steer_md: float, throttle_brake: float) -> None:
        """The control applied at the tick stamped `stamp`, from MetaDrive's steering and throttle_brake."""
        control = control_msg(steer_md, throttle_brake)
        control.header.stamp = stamp
        control.header.frame_id = contract.EGO_FRAME
        self._write(contract.CONTROL_TOPIC, contract.stamp_ns(stamp), control)
