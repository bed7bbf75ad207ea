"""A simple controller node for closed-loop tests: answers every camera frame with a CarlaEgoVehicleControl
stamped with that frame, steering on the bridge's lane-state pseudo-sensor (PD on lateral offset and heading
error) and holding a target speed. It stands in for the VLA node where a test needs a driver that really drives.

    python -m autoprune_sim.lane_keeping_controller --ros-args -p target_speed:=8.0 -p delay_ms:=0.0

`steer_bias` (MetaDrive steering units, left positive) is added to every command: a driver that strays, for the
tests of the bridge's expert takeovers.
"""
from __future__ import annotations

import sys
import time

import rclpy
from carla_msgs.msg import CarlaEgoVehicleControl
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray

from autoprune_sim import ros_contract as contract
from autoprune_sim.metadrive_bridge import LANE_STATE_TOPIC


class LaneKeepingController(Node):
    def __init__(self) -> None:
        super().__init__("lane_keeping_controller")
        self.target_speed = self.declare_parameter("target_speed", 8.0).value
        self.delay_s = self.declare_parameter("delay_ms", 0.0).value / 1e3  # simulated compute time per frame
        self.steer_bias = self.declare_parameter("steer_bias", 0.0).value
        self.lane = (0.0, 0.0, 0.0)
        self.pub = self.create_publisher(CarlaEgoVehicleControl, contract.CONTROL_TOPIC, 10)
        self.create_subscription(Float32MultiArray, LANE_STATE_TOPIC, self._on_lane, 10)
        self.create_subscription(Image, contract.CAMERA_TOPIC, self._on_image, 10)

    def _on_lane(self, msg: Float32MultiArray) -> None:
        self.lane = tuple(msg.data[:3])

    def _on_image(self, msg: Image) -> None:
        offset, heading_error, speed = self.lane
        steer_left = -(0.5 * offset + 1.2 * heading_error) + self.steer_bias
        accel = 0.3 * (self.target_speed - speed)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.pub.publish(CarlaEgoVehicleControl(
            header=msg.header, steer=float(max(-1.0, min(1.0, -steer_left))),  # CARLA steers right-positive
            throttle=float(max(0.0, min(1.0, accel))), brake=float(max(0.0, min(1.0, -accel)))))


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=sys.argv if argv is None else argv)
    node = LaneKeepingController()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
