"""The node in its own process: frames in every encoding get commands stamped with the frame's stamp; a
malformed frame gets a safe stop stamped with that frame, and the node goes on answering."""
from __future__ import annotations

import pytest

from autoprune_ros.processes import ros_args
from autoprune_ros.ros.image_codec import CHANNELS, to_image_msg
from autoprune_ros.runtime.synthetic_frames import road_frame

from conftest import spin_until

pytestmark = pytest.mark.ros


def test_commands_answer_frames_by_stamp(ros_context, spawn) -> None:
    from carla_msgs.msg import CarlaEgoVehicleControl
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Path
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from autoprune_ros.ros.qos import stream_qos

    node_proc = spawn("autoprune_ros.ros.node", ros_args({"camera_topic": "/test/node/image", "num_threads": 1}))
    test_node = __import__("rclpy").create_node("node_test_driver", context=ros_context)
    camera = test_node.create_publisher(Image, "/test/node/image", stream_qos("reliable", 10))
    controls: dict[int, CarlaEgoVehicleControl] = {}
    paths: dict[int, Path] = {}
    diagnostics: list[DiagnosticArray] = []
    key = lambda stamp: stamp.sec * 1_000_000_000 + stamp.nanosec  # noqa: E731
    test_node.create_subscription(CarlaEgoVehicleControl, "/carla/hero/vehicle_control_cmd",
                                  lambda m: controls.setdefault(key(m.header.stamp), m), 50)
    test_node.create_subscription(Path, "/autoprune/trajectory", lambda m: paths.setdefault(key(m.header.stamp), m),
                                  50)
    test_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(test_node)
    assert spin_until(executor, lambda: camera.get_subscription_count() > 0 or node_proc.poll() is not None, 90)
    assert node_proc.poll() is None, "the node exited during start-up"

    def send(msg: Image, sec: int) -> int:
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, 123_456_789
        camera.publish(msg)
        assert spin_until(executor, lambda: key(msg.header.stamp) in controls, 30), f"no answer to frame {sec}"
        return key(msg.header.stamp)

    rgb = road_frame(0, 320, 240)
    for sec, encoding in enumerate(sorted(CHANNELS), start=100):
        stamp = send(to_image_msg(rgb, encoding), sec)
        control = controls[stamp]
        assert 0.0 <= control.throttle <= 1.0 and -1.0 <= control.steer <= 1.0 and 0.0 <= control.brake <= 1.0
        assert stamp in paths or spin_until(executor, lambda s=stamp: s in paths, 5)
        assert len(paths[stamp].poses) > 0

    broken = to_image_msg(rgb, "rgb8")
    broken.data = bytes(broken.data)[:1000]
    stop = controls[send(broken, 200)]
    assert (stop.throttle, stop.brake) == (0.0, 1.0), "a truncated frame must command a safe stop"

    send(to_image_msg(rgb, "bgr8"), 201)  # still answering after the bad frame
    assert node_proc.poll() is None
    assert spin_until(executor, lambda: any(s.values and any(kv.key == "malformed" and kv.value == "1"
                                                             for kv in s.values) for d in diagnostics
                                            for s in d.status), 5)
