"""Closed loop on a CARLA 0.9.16 server (ROS 2 installs with launch_ros): the autoprune node and the CARLA bridge.

    ros2 launch autoprune_ros closed_loop_carla.launch.py routes:=/path/to/routes.xml \
        host:=127.0.0.1 port:=2000 mode:=sync output_dir:=results/carla

Start the server first (see docs/carla.md). The node runs on simulation time (the bridge publishes /clock) with
the parameters file, on the CARLA control interface. The bridge runs every route of `routes` (a Leaderboard 2.0
route XML) and writes route_<id>_<mode>.json into `output_dir`; everything shuts down when the bridge exits.
The launch arguments not given keep the bridge's own defaults; for its other options (--routes-subset, free
drive, camera, ...) run `python -m autoprune_sim.carla_bridge --help` and start it directly.

The bridge runs with `python` (default `python3`): the node's environment, which has the `carla==0.9.16` client,
rclpy, carla_msgs and this package's `autoprune_sim`.

Both processes must share ROS_DOMAIN_ID (and ROS_AUTOMATIC_DISCOVERY_RANGE): they inherit it from the shell that
runs `ros2 launch`, so export it there, never per process. `python -m autoprune_ros.rosenv` picks a fresh id per
run when none is set; export one before starting either process by hand.

Kept thin on purpose: machines without launch_ros start the same processes with `autoprune_ros.processes`.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, ExecuteProcess, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("autoprune_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "autoprune.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("host", default_value="127.0.0.1", description="CARLA server host"),
        DeclareLaunchArgument("port", default_value="2000", description="CARLA server RPC port"),
        DeclareLaunchArgument("routes", description="Leaderboard 2.0 route XML (required)"),
        DeclareLaunchArgument("mode", default_value="sync", choices=["sync", "latency"],
                              description="sync: each control applies at its own frame; latency: ceil(latency / dt) "
                              "ticks later"),
        DeclareLaunchArgument("output_dir", default_value="results/carla",
                              description="folder for route_<id>_<mode>.json"),
        DeclareLaunchArgument("control_timeout", default_value="1.0",
                              description="wall seconds to wait for the control of each frame"),
        DeclareLaunchArgument("on_timeout", default_value="hold", choices=["hold", "brake", "zero"],
                              description="when no control came: hold the control in effect, full brake, or zero"),
        DeclareLaunchArgument("max_consecutive_timeouts", default_value="100",
                              description="end a route after this many control timeouts in a row (0: never)"),
        DeclareLaunchArgument("wait_for_node", default_value="60.0",
                              description="wall seconds to wait for the node's camera subscription"),
        DeclareLaunchArgument("fixed_delta_seconds", default_value="0.05", description="simulation step, s"),
        DeclareLaunchArgument("python", default_value="python3",
                              description="python with the carla client and rclpy (the node's environment)"),
    ]
    node = Node(
        package="autoprune_ros",
        executable="autoprune_node",
        name="autoprune",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {"use_sim_time": True, "control_interface": "carla"},
        ],
    )
    bridge = ExecuteProcess(
        name="carla_bridge",
        cmd=[
            LaunchConfiguration("python"), "-m", "autoprune_sim.carla_bridge",
            "--host", LaunchConfiguration("host"),
            "--port", LaunchConfiguration("port"),
            "--routes", LaunchConfiguration("routes"),
            "--mode", LaunchConfiguration("mode"),
            "--output", LaunchConfiguration("output_dir"),
            "--control-timeout", LaunchConfiguration("control_timeout"),
            "--on-timeout", LaunchConfiguration("on_timeout"),
            "--max-consecutive-timeouts", LaunchConfiguration("max_consecutive_timeouts"),
            "--wait-for-node", LaunchConfiguration("wait_for_node"),
            "--fixed-delta-seconds", LaunchConfiguration("fixed_delta_seconds"),
        ],
        output="screen",
    )
    shutdown = RegisterEventHandler(OnProcessExit(
        target_action=bridge, on_exit=[EmitEvent(event=Shutdown(reason="carla_bridge finished its routes"))]))
    return LaunchDescription([*args, node, bridge, shutdown])
