"""The simulator's own environment has MetaDrive, rclpy and the project's messages, side by side."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autoprune_ros.rosenv import ros_environment

SIM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-sim" / "bin" / "python"

pytestmark = pytest.mark.sim


def _sim_env() -> dict[str, str]:
    """The environment to run SIM_PYTHON in; skips (fails under AUTOPRUNE_REQUIRE_SIM=1) without .venv-sim."""
    if not SIM_PYTHON.exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although `make test` builds it: run `make setup-sim`")
        pytest.skip(".venv-sim not built (make setup-sim)")
    return dict(ros_environment(), AMENT_PREFIX_PATH=str(SIM_PYTHON.parent.parent))


def test_metadrive_rclpy_and_messages_import_in_the_sim_env() -> None:
    env = _sim_env()
    code = ("import metadrive, numpy, rclpy, autoprune_sim; from carla_msgs.msg import CarlaEgoVehicleControl; "
            "from rosgraph_msgs.msg import Clock; print('numpy', numpy.__version__)")
    result = subprocess.run([str(SIM_PYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "numpy 1.24" in result.stdout  # MetaDrive's pin, not the main environment's numpy 2


def test_route_distance_measures_how_far_the_car_has_left_its_route() -> None:
    """What the bridge scores the car's place by: its distance from the route's lane centre lines (beyond
    ROUTE_DEVIATION_M the route ends, the Leaderboard's route deviation) and whether it is inside a lane of the
    route (else it drives "outside route lanes")."""
    env = _sim_env()
    code = """
from autoprune_sim.metadrive_env import ROUTE_DEVIATION_M, Route, make_env
env = make_env(7, 3, 64, 48, 0.0, horizon=50)
env.reset()
route = Route(env)
lane = route.lanes[0]
where = [route.deviation(env)]
for lateral in (0.0, 0.3 * lane.width, -0.7 * lane.width, -45.0):  # MetaDrive: right +
    env.vehicle.set_position(lane.position(10.0, lateral))
    where.append(route.deviation(env))
env.close()
print("where", *(f"{d},{int(inside)}" for d, inside in where), ROUTE_DEVIATION_M, lane.width)
"""
    result = subprocess.run([str(SIM_PYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(text for text in result.stdout.splitlines() if text.startswith("where")).split()
    start, along, inner, outer, beside = [(float(d), inside == "1") for d, inside in (w.split(",") for w in line[1:6])]
    limit, width = float(line[6]), float(line[7])
    assert start == along == (0.0, True)
    assert inner[1] and inner[0] == pytest.approx(0.3 * width, abs=0.01), "a car off its lane centre, in the lane"
    assert not outer[1], "across the centre line (lane 0 is next to it): outside the route's lanes"
    assert beside[0] == pytest.approx(45.0, abs=0.5) and beside[0] > limit and not beside[1]


def test_the_route_the_bridge_publishes_runs_ahead_along_the_route_lane() -> None:
    """The route ahead (the route lane's centreline, ROS map frame with MetaDrive's y mirrored) starts at the car and
    runs on; a car pushed off the route keeps the route lane it last had."""
    env = _sim_env()
    code = """
import numpy as np
from autoprune_sim.metadrive_env import make_env
from autoprune_sim.reference_path import AHEAD_M, RouteLane, lane_ahead
env = make_env(7, 3, 64, 48, 0.0, horizon=50)
env.reset()
tracker = RouteLane()
lane = tracker.update(env)
path = lane_ahead(env, lane)
x, y = env.vehicle.position
start = np.hypot(path[0, 0] - x, path[0, 1] + y)
length = np.hypot(*np.diff(path, axis=0).T).sum()
env.vehicle.set_position(lane.position(10.0, -45.0))
env.step([0.0, 0.0])  # the car's lane is looked up again in the step
kept = tracker.update(env) is lane
env.close()
print("route", start, length, AHEAD_M, int(kept))
"""
    result = subprocess.run([str(SIM_PYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(text for text in result.stdout.splitlines() if text.startswith("route")).split()
    start, length, ahead = float(line[1]), float(line[2]), float(line[3])
    assert start < 2.5, "the route starts beside the car"
    assert ahead - 2.5 <= length <= ahead + 2.5, "and runs AHEAD_M on"
    assert line[4] == "1", "off the route, the route lane stays the last one on it"
