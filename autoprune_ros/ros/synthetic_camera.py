"""A camera node that publishes a synthetic road scene: the demo's camera, and the publisher in transport tests.

    python -m autoprune_ros.ros.synthetic_camera --ros-args -p rate_hz:=10.0 -p count:=100
"""
from __future__ import annotations

import sys

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image

from autoprune_ros.ros.image_codec import CHANNELS, to_image_msg
from autoprune_ros.ros.qos import RELIABILITY, stream_qos
from autoprune_ros.runtime.synthetic_frames import road_frame

# Distinct frames generated up front and cycled, so publishing costs no rendering time.
FRAME_CYCLE = 20


class SyntheticCamera(Node):
    """Publishes `count` frames (0: until stopped) at `rate_hz`, stamped with the node clock."""

    def __init__(self) -> None:
        super().__init__("synthetic_camera")
        p = self.declare_parameter
        p("topic", "/carla/hero/rgb_front/image", ParameterDescriptor(description="image topic to publish"))
        p("frame_id", "hero/rgb_front", ParameterDescriptor(description="header.frame_id of every frame"))
        p("width", 640, ParameterDescriptor(description="image width, px"))
        p("height", 480, ParameterDescriptor(description="image height, px"))
        p("encoding", "rgb8", ParameterDescriptor(description=f"one of {sorted(CHANNELS)}"))
        p("rate_hz", 10.0, ParameterDescriptor(description="publish rate"))
        p("count", 0, ParameterDescriptor(description="frames to publish, then exit; 0 = until stopped"))
        p("reliability", "best_effort", ParameterDescriptor(description=f"one of {sorted(RELIABILITY)}"))
        p("depth", 1, ParameterDescriptor(description="QoS history depth"))
        p("wait_for_subscribers", 1, ParameterDescriptor(description="hold the first frame until this many match"))
        p("wait_timeout_s", 30.0, ParameterDescriptor(description="give up waiting for subscribers after this"))
        get = self.get_parameter
        self.count = get("count").value
        self.rate_hz = get("rate_hz").value
        width, height = get("width").value, get("height").value
        encoding = get("encoding").value
        self.frame_id = get("frame_id").value
        self.frames = [to_image_msg(road_frame(i, width, height, self.rate_hz), encoding) for i in range(FRAME_CYCLE)]
        qos = stream_qos(get("reliability").value, get("depth").value)
        self.publisher = self.create_publisher(Image, get("topic").value, qos)
        self.wait_for = get("wait_for_subscribers").value
        self.wait_deadline = self.get_clock().now() + Duration(seconds=get("wait_timeout_s").value)
        self.sent = 0
        self.done = False
        self.timer = self.create_timer(1.0 / self.rate_hz, self._tick)

    def _tick(self) -> None:
        if self.sent == 0 and self.publisher.get_subscription_count() < self.wait_for:
            if self.get_clock().now() > self.wait_deadline:
                self.get_logger().error(f"no subscriber on {self.publisher.topic_name} after waiting; giving up")
                self.done = True
            return
        msg = self.frames[self.sent % FRAME_CYCLE]
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        self.publisher.publish(msg)
        self.sent += 1
        if self.count and self.sent >= self.count:
            self.done = True
            self.publisher.wait_for_all_acked(Duration(seconds=3.0))
            self.get_logger().info(f"published {self.sent} frames on {self.publisher.topic_name}")


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=sys.argv if argv is None else argv)
    node = SyntheticCamera()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.done:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
