"""Launch the autoprune node with its parameter file (ROS 2 installs with launch_ros).

    ros2 launch autoprune_ros autoprune.launch.py params_file:=my.yaml namespace:=ego \
        camera_topic:=/carla/hero/rgb_front/image control_interface:=ackermann use_sim_time:=true

Kept thin on purpose: machines without launch_ros start the same node with `autoprune_ros.processes`.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("autoprune_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "autoprune.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("camera_topic", default_value="/carla/hero/rgb_front/image",
                              description="camera image topic the node subscribes to"),
        DeclareLaunchArgument("control_interface", default_value="carla", description="carla | ackermann"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
    ]
    node = Node(
        package="autoprune_ros",
        executable="autoprune_node",
        name="autoprune",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "camera_topic": LaunchConfiguration("camera_topic"),
                "control_interface": LaunchConfiguration("control_interface"),
                "use_sim_time": LaunchConfiguration("use_sim_time"),
            },
        ],
    )
    return LaunchDescription([*args, node])
