"""Closed loop on MetaDrive (ROS 2 installs with launch_ros): the autoprune node and the MetaDrive bridge.

    ros2 launch autoprune_ros closed_loop_metadrive.launch.py sim_python:=/opt/metadrive-env/bin/python \
        seed:=7 map:=3 ticks:=600 mode:=sync termination:=leaderboard output:=results/metadrive/seed7_sync.json

The node runs on simulation time (the bridge publishes /clock) with the parameters file, on the CARLA control
interface the bridge answers to. The bridge steps MetaDrive once per control and writes its route result to
`output` when the route ends; everything shuts down when the bridge exits.

MetaDrive 0.3.0.1 needs its own Python environment (its numpy/panda3d pins clash with the node's torch stack):
`sim_python` is that environment's interpreter. It must import metadrive, rclpy, carla_msgs and this package's
`autoprune_sim` in the environment `ros2 launch` passes on, e.g. a virtual environment made with
`--system-site-packages` on the ROS installation's Python, with `metadrive-simulator==0.3.0.1` and this package
installed into it. (The repository's wheel-based `.venv-sim` brings its own ROS libraries; a sourced ROS
installation's PYTHONPATH and AMENT_PREFIX_PATH would shadow them, so start that one without launch, as
`test/test_metadrive_loop.py` does.)

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
        DeclareLaunchArgument("seed", default_value="7", description="MetaDrive scenario seed"),
        DeclareLaunchArgument("map", default_value="3",
                              description="block count or block string (S, C, X, T, O, r, R)"),
        DeclareLaunchArgument("ticks", default_value="600",
                              description="tick limit (0.1 s each) before a route timeout"),
        DeclareLaunchArgument("mode", default_value="sync", choices=["sync", "latency"],
                              description="sync: the simulator waits for each control; latency: controls take effect "
                              "ceil(latency / 0.1 s) ticks late"),
        DeclareLaunchArgument("termination", default_value="leaderboard", choices=["leaderboard", "metadrive"],
                              description="leaderboard: a straying run ends once the car's centre has left every "
                              "lane; metadrive: also at the first touch of a solid line or the sidewalk"),
        DeclareLaunchArgument("sim_python", default_value="python3",
                              description="python of the simulator environment (MetaDrive needs its own)"),
        DeclareLaunchArgument("output", default_value="results/closed_loop_metadrive.json",
                              description="route result JSON written by the bridge"),
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
        name="metadrive_bridge",
        cmd=[
            LaunchConfiguration("sim_python"), "-m", "autoprune_sim.metadrive_bridge",
            "--seed", LaunchConfiguration("seed"),
            "--map", LaunchConfiguration("map"),
            "--ticks", LaunchConfiguration("ticks"),
            "--mode", LaunchConfiguration("mode"),
            "--termination", LaunchConfiguration("termination"),
            "--output", LaunchConfiguration("output"),
        ],
        output="screen",
    )
    shutdown = RegisterEventHandler(OnProcessExit(
        target_action=bridge, on_exit=[EmitEvent(event=Shutdown(reason="metadrive_bridge finished the route"))]))
    return LaunchDescription([*args, node, bridge, shutdown])
