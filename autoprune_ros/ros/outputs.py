"""Turn an Action into the stamped messages the node publishes, one adapter per control interface."""
from __future__ import annotations

import math

from ackermann_msgs.msg import AckermannDriveStamped
from builtin_interfaces.msg import Time
from carla_msgs.msg import CarlaEgoVehicleControl
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
from std_msgs.msg import Header

from autoprune_ros.vla.action import Action

CONTROL_INTERFACES = ("carla", "ackermann")


def carla_control(action: Action, header: Header) -> CarlaEgoVehicleControl:
    """CARLA steers positive to the right; Action follows REP 103 (positive left), hence the sign flip."""
    return CarlaEgoVehicleControl(header=header, throttle=float(action.throttle), steer=float(-action.steer),
                                  brake=float(action.brake), hand_brake=False, reverse=False, gear=1,
                                  manual_gear_shift=False)


def ackermann_control(action: Action, header: Header, max_steer_angle: float) -> AckermannDriveStamped:
    """Steering angle in radians (positive left), speed = the policy's target speed, m/s."""
    msg = AckermannDriveStamped(header=header)
    msg.drive.steering_angle = float(action.steer * max_steer_angle)
    msg.drive.speed = float(action.target_speed)
    return msg


def trajectory(action: Action, stamp: Time, frame_id: str) -> Path:
    """The predicted waypoints as a Path in the ego frame (x forward, y left), heading along the path."""
    path = Path(header=Header(stamp=stamp, frame_id=frame_id))
    prev = (0.0, 0.0)
    for x, y in action.waypoints.tolist():
        pose = PoseStamped(header=path.header)
        pose.pose.position.x, pose.pose.position.y = float(x), float(y)
        yaw = math.atan2(y - prev[1], x - prev[0]) if (x, y) != prev else 0.0
        pose.pose.orientation.z, pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        path.poses.append(pose)
        prev = (x, y)
    return path
