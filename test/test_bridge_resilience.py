"""The MetaDrive bridge survives its driver crashing and coming back: the controller is killed (SIGKILL) in the
middle of a route, the bridge counts control timeouts while nobody answers, and a new controller picks the route
up where it stands; the bridge finishes the route and writes its result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from autoprune_ros.processes import ros_args, start_module, stop
from autoprune_ros.rosenv import ros_environment

from conftest import spin_until

SIM_PREFIX = Path(__file__).resolve().parent.parent / ".venv-sim"
CONTROL_TOPIC = "/carla/hero/vehicle_control_cmd"  # autoprune_sim.ros_contract.CONTROL_TOPIC
TICKS = 150
STEP_NS = 100_000_000  # one MetaDrive tick, 0.1 s of sim time
KILL_AFTER = 40  # answered frames before the crash: the vehicle is under way
DEAD_S = 2.0  # wall seconds with no controller at all
DELAY_MS = 50.0  # controller compute time per frame: paces the route so the crash lands early in it
pytestmark = [pytest.mark.sim, pytest.mark.ros]


def _require_sim() -> None:
    if not (SIM_PREFIX / "bin" / "python").exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although `make test` builds it: run `make setup-sim`")
        pytest.skip(".venv-sim not built (make setup-sim)")


def test_bridge_survives_the_controller_dying_and_coming_back(tmp_path, ros_context) -> None:
    _require_sim()
    from carla_msgs.msg import CarlaEgoVehicleControl
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    out, log_path = tmp_path / "result.json", tmp_path / "loop.log"
    env = ros_environment()
    sim_env = dict(env, AMENT_PREFIX_PATH=str(SIM_PREFIX))
    stamps: list[int] = []  # header stamps (sim time ns) of every control seen on the topic
    watcher = Node("resilience_watcher", context=ros_context)
    watcher.create_subscription(CarlaEgoVehicleControl, CONTROL_TOPIC,
                                lambda m: stamps.append(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), 100)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(watcher)
    controller_args = ros_args({"target_speed": 8.0, "delay_ms": DELAY_MS})
    children: list[subprocess.Popen] = []
    log = open(log_path, "w")

    def logs() -> str:
        log.flush()
        return log_path.read_text()[-3000:]

    try:
        bridge = subprocess.Popen([str(SIM_PREFIX / "bin" / "python"), "-m", "autoprune_sim.metadrive_bridge",
                                   "--seed", "7", "--map", "3", "--traffic-density", "0.0", "--ticks", str(TICKS),
                                   "--mode", "sync", "--control-timeout", "0.3", "--output", str(out)],
                                  env=sim_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        children.append(bridge)
        first = start_module("autoprune_sim.lane_keeping_controller", controller_args, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
        children.append(first)
        assert spin_until(executor, lambda: len(stamps) >= KILL_AFTER or bridge.poll() is not None, 75.0), \
            f"the first controller answered only {len(stamps)} frames\n{logs()}"
        assert bridge.poll() is None, f"the bridge ended before the crash\n{logs()}"

        first.send_signal(signal.SIGKILL)  # a crash: no shutdown, no goodbye to DDS
        assert first.wait(10) == -signal.SIGKILL
        spin_until(executor, lambda: False, DEAD_S)  # nobody drives; controls already in flight still arrive
        last_before = max(stamps)  # the last frame the crashed controller answered
        assert bridge.poll() is None, f"the bridge died with its controller\n{logs()}"

        second = start_module("autoprune_sim.lane_keeping_controller", controller_args, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
        children.append(second)
        spin_until(executor, lambda: bridge.poll() is not None, 120.0)  # the watcher keeps counting meanwhile
        assert bridge.poll() == 0, f"the bridge did not finish cleanly\n{logs()}"
    finally:
        for child in reversed(children):
            stop(child)
        executor.shutdown()
        watcher.destroy_node()
        log.close()

    assert out.exists(), f"the bridge wrote no result\n{log_path.read_text()[-3000:]}"
    result = json.loads(out.read_text())
    assert result["control_timeouts"] > 0, "the frames nobody answered were counted as control timeouts"
    assert result["ticks"] == TICKS or result["status"] in ("Completed", "Perfect"), result["status"]
    # Frames 0..last_before were the crashed controller's at most; every other answered frame was the new one's.
    answered_after = result["ticks"] - result["control_timeouts"] - (last_before // STEP_NS + 1)
    assert answered_after >= 30, f"only {answered_after} frames answered after the restart"
    assert any(s > last_before for s in stamps), "no control of the new controller was seen on the topic"
    kinds = [i["kind"] for i in result["infractions"]]
    assert not any("collision" in k or k in ("off_road", "outside_route_lanes") for k in kinds), kinds
    tail = result["speeds_mps"][-30:]
    assert sum(tail) / len(tail) > 3.0, f"the vehicle stopped after the restart: {tail}"
