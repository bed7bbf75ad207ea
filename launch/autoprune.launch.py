"""Launch the autoprune node with its parameter file (ROS 2 installs with launch_ros).

    ros2 launch autoprune_ros autoprune.launch.py params_file:=my.yaml namespace:=ego \
        camera_topic:=/carla/hero/rgb_front/image control_interface:=ackermann use_sim_time:=true

Kept thin on purpose: machines without launch_ros start the same node with `autoprune_ros.processes`.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

DEFAULT_CAMERA = "/carla/hero/rgb_front/image"  # the first of the node's default camera_topics


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("autoprune_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "autoprune.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("camera_topic", default_value=DEFAULT_CAMERA,
                              description="remap the default front camera topic to this one"),
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
                "control_interface": LaunchConfiguration("control_interface"),
                "use_sim_time": LaunchConfiguration("use_sim_time"),
            },
        ],
        remappings=[(DEFAULT_CAMERA, LaunchConfiguration("camera_topic"))],
    )
    return LaunchDescription([*args, node])
