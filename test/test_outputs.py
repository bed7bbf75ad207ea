"""Output adapters keep each interface's sign conventions and carry the frame's header."""
from __future__ import annotations

import math

import numpy as np
from std_msgs.msg import Header

from autoprune_ros.ros.outputs import ackermann_control, carla_control, trajectory
from autoprune_ros.vla.action import Action

LEFT_TURN = Action(steer=0.5, throttle=0.3, brake=0.0, target_speed=6.0,
                   waypoints=np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 3.0]], np.float32))


def _header() -> Header:
    header = Header(frame_id="hero/rgb_front")
    header.stamp.sec, header.stamp.nanosec = 17, 250_000_000
    return header


def test_carla_steers_right_positive() -> None:
    msg = carla_control(LEFT_TURN, _header())
    assert msg.steer == -0.5 and msg.throttle == np.float32(0.3) and msg.brake == 0.0
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (17, 250_000_000)
    assert not msg.reverse and not msg.hand_brake


def test_ackermann_angle_is_left_positive_radians() -> None:
    msg = ackermann_control(LEFT_TURN, _header(), max_steer_angle=0.6)
    assert math.isclose(msg.drive.steering_angle, 0.3, rel_tol=1e-6) and msg.drive.speed == 6.0
    assert msg.header.stamp.sec == 17


def test_safe_stop_brakes_and_holds_steering() -> None:
    msg = carla_control(Action.safe_stop(steer=0.2), _header())
    assert (msg.throttle, msg.brake) == (0.0, 1.0) and math.isclose(msg.steer, -0.2, rel_tol=1e-6)


def test_trajectory_poses_follow_the_waypoints() -> None:
    path = trajectory(LEFT_TURN, _header().stamp, "hero")
    assert path.header.frame_id == "hero" and path.header.stamp.sec == 17
    xy = [(p.pose.position.x, p.pose.position.y) for p in path.poses]
    assert xy == [(1.0, 0.0), (2.0, 1.0), (3.0, 3.0)]
    yaw = [2 * math.atan2(p.pose.orientation.z, p.pose.orientation.w) for p in path.poses]
    assert math.isclose(yaw[0], 0.0, abs_tol=1e-9) and math.isclose(yaw[1], math.atan2(1, 1), rel_tol=1e-9)
