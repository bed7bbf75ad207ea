"""The simulator's own environment has MetaDrive, rclpy and the project's messages, side by side."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autoprune_ros.rosenv import ros_environment

SIM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-sim" / "bin" / "python"

pytestmark = pytest.mark.sim


def test_metadrive_rclpy_and_messages_import_in_the_sim_env() -> None:
    if not SIM_PYTHON.exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although `make test` builds it: run `make setup-sim`")
        pytest.skip(".venv-sim not built (make setup-sim)")
    env = ros_environment()
    env["AMENT_PREFIX_PATH"] = str(SIM_PYTHON.parent.parent)
    code = ("import metadrive, numpy, rclpy, autoprune_sim; from carla_msgs.msg import CarlaEgoVehicleControl; "
            "from rosgraph_msgs.msg import Clock; print('numpy', numpy.__version__)")
    result = subprocess.run([str(SIM_PYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "numpy 1.24" in result.stdout  # MetaDrive's pin, not the main environment's numpy 2
