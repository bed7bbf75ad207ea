"""The project's carla_msgs and ackermann_msgs import, carry the public fields, and round-trip on the wire."""
from __future__ import annotations

import pytest

# Field names and types of the public packages (carla-simulator/ros-carla-msgs, ros-drivers/ackermann_msgs).
PUBLIC_FIELDS = {
    ("carla_msgs", "CarlaEgoVehicleControl"): {
        "header": "std_msgs/Header", "throttle": "float", "steer": "float", "brake": "float",
        "hand_brake": "boolean", "reverse": "boolean", "gear": "int32", "manual_gear_shift": "boolean"},
    ("carla_msgs", "CarlaEgoVehicleStatus"): {
        "header": "std_msgs/Header", "velocity": "float", "acceleration": "geometry_msgs/Accel",
        "orientation": "geometry_msgs/Quaternion", "control": "carla_msgs/CarlaEgoVehicleControl"},
    ("carla_msgs", "CarlaCollisionEvent"): {
        "header": "std_msgs/Header", "other_actor_id": "uint32", "normal_impulse": "geometry_msgs/Vector3"},
    ("carla_msgs", "CarlaLaneInvasionEvent"): {"header": "std_msgs/Header", "crossed_lane_markings": "sequence<int32>"},
    ("carla_msgs", "CarlaStatus"): {
        "frame": "uint64", "fixed_delta_seconds": "float", "synchronous_mode": "boolean",
        "synchronous_mode_running": "boolean"},
    ("carla_msgs", "CarlaControl"): {"command": "int8"},
    ("ackermann_msgs", "AckermannDrive"): {
        "steering_angle": "float", "steering_angle_velocity": "float", "speed": "float", "acceleration": "float",
        "jerk": "float"},
    ("ackermann_msgs", "AckermannDriveStamped"): {
        "header": "std_msgs/Header", "drive": "ackermann_msgs/AckermannDrive"},
}


def _msg_class(package: str, name: str):
    import importlib

    return getattr(importlib.import_module(f"{package}.msg"), name)


@pytest.mark.parametrize(("package", "name"), sorted(PUBLIC_FIELDS))
def test_fields_match_the_public_definition(package: str, name: str) -> None:
    assert _msg_class(package, name).get_fields_and_field_types() == PUBLIC_FIELDS[(package, name)]


def test_constants() -> None:
    from carla_msgs.msg import CarlaControl, CarlaLaneInvasionEvent

    assert (CarlaControl.PLAY, CarlaControl.PAUSE, CarlaControl.STEP_ONCE) == (0, 1, 2)
    assert (CarlaLaneInvasionEvent.LANE_MARKING_OTHER, CarlaLaneInvasionEvent.LANE_MARKING_BROKEN,
            CarlaLaneInvasionEvent.LANE_MARKING_SOLID) == (0, 1, 2)


def _control():
    from carla_msgs.msg import CarlaEgoVehicleControl

    msg = CarlaEgoVehicleControl(throttle=0.25, steer=-0.5, brake=0.0, hand_brake=False, reverse=True, gear=-1,
                                 manual_gear_shift=True)
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 12, 345_000_000, "hero"
    return msg


def _ackermann():
    from ackermann_msgs.msg import AckermannDriveStamped

    msg = AckermannDriveStamped()
    msg.header.stamp.sec, msg.header.frame_id = 7, "base_link"
    msg.drive.steering_angle, msg.drive.speed, msg.drive.acceleration = 0.125, 8.5, -1.5
    return msg


@pytest.mark.parametrize("make", [_control, _ackermann], ids=["CarlaEgoVehicleControl", "AckermannDriveStamped"])
def test_cdr_round_trip(make) -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    msg = make()
    assert deserialize_message(serialize_message(msg), type(msg)) == msg


@pytest.mark.parametrize(("package", "name", "make"), [("carla_msgs", "CarlaEgoVehicleControl", _control),
                                                       ("ackermann_msgs", "AckermannDriveStamped", _ackermann)])
def test_rosbags_reads_what_rclpy_writes(package: str, name: str, make) -> None:
    """Bags are written with rosbags and replayed through rclpy: each must decode what the other encodes.

    (Bytes are not compared: CDR padding is unspecified and rclpy leaves it uninitialised.)"""
    from rclpy.serialization import deserialize_message, serialize_message

    from autoprune_ros.replay.typestore import project_typestore

    store = project_typestore()  # reads the .msg files installed with the interface packages
    original = make()
    decoded = store.deserialize_cdr(serialize_message(original), f"{package}/msg/{name}")
    assert deserialize_message(bytes(store.serialize_cdr(decoded, f"{package}/msg/{name}")), type(original)) == original
    if name == "CarlaEgoVehicleControl":
        assert (decoded.throttle, decoded.steer, decoded.gear, decoded.reverse) == (0.25, -0.5, -1, True)
    else:
        assert (decoded.drive.speed, decoded.drive.steering_angle) == (8.5, 0.125)


@pytest.mark.ros
def test_control_crosses_processes(ros_context, tmp_path) -> None:
    """A child process publishes CarlaEgoVehicleControl; this process receives it intact."""
    import subprocess
    import sys
    import textwrap

    from carla_msgs.msg import CarlaEgoVehicleControl
    from rclpy.executors import SingleThreadedExecutor

    from conftest import spin_until

    script = tmp_path / "pub_control.py"
    script.write_text(textwrap.dedent("""
        import time, rclpy
        from carla_msgs.msg import CarlaEgoVehicleControl
        rclpy.init()
        node = rclpy.create_node("control_pub")
        pub = node.create_publisher(CarlaEgoVehicleControl, "/test/vehicle_control_cmd", 10)
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        msg = CarlaEgoVehicleControl(throttle=0.75, steer=0.25, gear=1)
        msg.header.stamp.sec = 42
        for _ in range(3):
            pub.publish(msg)
            time.sleep(0.1)
        rclpy.shutdown()
    """))
    node = __import__("rclpy").create_node("control_sub", context=ros_context)
    got: list = []
    node.create_subscription(CarlaEgoVehicleControl, "/test/vehicle_control_cmd", got.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        assert spin_until(executor, lambda: bool(got), timeout=40), "no control message arrived"
        assert child.wait(30) == 0
    finally:
        child.kill()
    assert (got[0].throttle, got[0].steer, got[0].gear, got[0].header.stamp.sec) == (0.75, 0.25, 1, 42)
