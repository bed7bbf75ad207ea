"""A short MetaDrive closed loop over ROS: the bridge (simulator environment) and a lane-keeping controller node
(main environment) on one DDS domain. Synchronous mode drives the route cleanly; in latency mode a controller
that answers 250 ms late has its controls applied 3 ticks late."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoprune_ros.processes import ros_args, start_module, stop
from autoprune_ros.rosenv import ros_environment

SIM_PREFIX = Path(__file__).resolve().parent.parent / ".venv-sim"
pytestmark = [pytest.mark.sim, pytest.mark.ros]


def _closed_loop(tmp_path: Path, mode: str, ticks: int, delay_ms: float = 0.0, steer_bias: float = 0.0,
                 bridge_args: tuple[str, ...] = ()) -> dict:
    if not (SIM_PREFIX / "bin" / "python").exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although `make test` builds it: run `make setup-sim`")
        pytest.skip(".venv-sim not built (make setup-sim)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / f"{mode}.json"
    env = ros_environment()
    sim_env = dict(env, AMENT_PREFIX_PATH=str(SIM_PREFIX))
    with open(tmp_path / f"bridge-{mode}.log", "w") as log:
        bridge = subprocess.Popen([str(SIM_PREFIX / "bin" / "python"), "-m", "autoprune_sim.metadrive_bridge",
                                   "--seed", "7", "--map", "3", "--traffic-density", "0.0", "--ticks", str(ticks),
                                   "--mode", mode, "--control-timeout", "3.0", "--output", str(out), *bridge_args],
                                  env=sim_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        controller = start_module("autoprune_sim.lane_keeping_controller",
                                  ros_args({"target_speed": 8.0, "delay_ms": delay_ms, "steer_bias": steer_bias}),
                                  env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            assert bridge.wait(timeout=420) == 0, (tmp_path / f"bridge-{mode}.log").read_text()[-3000:]
        finally:
            stop(bridge)
            stop(controller)
    return json.loads(out.read_text())


def test_sync_closed_loop_drives_the_route(tmp_path) -> None:
    result = _closed_loop(tmp_path, "sync", ticks=250)
    assert result["meta"]["mode"] == "sync" and result["ticks"] > 200
    assert result["control_timeouts"] <= 2, "the controller answers every frame"
    kinds = [i["kind"] for i in result["infractions"]]
    assert not any("collision" in k or k in ("off_road", "outside_route_lanes") for k in kinds), kinds
    assert result["completion"] >= 0.25, f"route completion {result['completion']:.2f} after {result['ticks']} ticks"
    speeds = result["speeds_mps"][100:]
    assert 6.0 <= sum(speeds) / len(speeds) <= 9.5, "holding the 8 m/s target"


def test_latency_mode_applies_late_controls_late(tmp_path) -> None:
    result = _closed_loop(tmp_path, "latency", ticks=60, delay_ms=250.0)
    assert result["meta"]["mode"] == "latency"
    delay = result["meta"]["control_delay"]
    assert delay["mode"] == "latency" and delay["late_frames"] > 0
    assert min(result["latencies_ms"]) >= 240.0


def test_termination_rules_for_a_car_that_crosses_the_centre_line(tmp_path) -> None:
    """A driver pulling left settles with its centre just across the centre line (the opposite lane). MetaDrive's
    own rule ends the run when the body first touches that solid line; the Leaderboard's lets it drive on and
    charges the distance driven outside the route's lanes."""
    strict = _closed_loop(tmp_path / "metadrive", "sync", ticks=80, steer_bias=0.9,
                          bridge_args=("--termination", "metadrive"))
    assert strict["meta"]["termination"] == "metadrive"
    assert strict["status"] == "Failed - off road" and strict["ticks"] < 40, (strict["status"], strict["ticks"])
    (off_road,) = [i for i in strict["infractions"] if i["kind"] == "off_road"]
    assert off_road["detail"] == "touched a solid line"
    lenient = _closed_loop(tmp_path / "leaderboard", "sync", ticks=80, steer_bias=0.9)
    assert lenient["meta"]["termination"] == "leaderboard", "the default rule"
    assert lenient["status"] == "Failed - route timeout" and lenient["ticks"] == 80, lenient["status"]
    kinds = {i["kind"]: i for i in lenient["infractions"]}
    assert "off_road" not in kinds and "outside_route_lanes" in kinds, kinds
    outside = kinds["outside_route_lanes"]
    driven = sum(lenient["speeds_mps"]) * lenient["dt"]
    assert 0.0 < outside["value"] < 100.0 * driven / lenient["length_m"], "a share of the distance driven"
    assert lenient["completion"] > strict["completion"]


def test_supervised_run_records_the_takeovers_as_a_training_episode(tmp_path) -> None:
    """A driver that pulls to the left: alone it leaves the road; supervised, the expert keeps taking the wheel
    back, and the run is a reference-labelled episode whose labels lead back to the lane."""
    from autoprune_ros.vla.dataset import episode_targets, read_episode
    from autoprune_sim.takeover import distance_to_path

    strict = ("--termination", "metadrive")  # "kept on the road" then means not even touching a solid line
    alone = _closed_loop(tmp_path / "alone", "sync", ticks=150, steer_bias=0.6, bridge_args=strict)
    assert alone["status"] == "Failed - off road", alone["status"]
    record = tmp_path / "episodes"
    result = _closed_loop(tmp_path / "supervised", "sync", ticks=150, steer_bias=0.6,
                          bridge_args=("--record", str(record), *strict))
    assert result["status"] == "Failed - route timeout" and result["ticks"] == 150, "the expert kept it on the road"
    meta = json.loads((record / "seed00007_map3" / "episode.json").read_text())
    assert meta["kept"] and meta["targets"] == "reference" and meta["driver"] == "supervised"
    assert len(meta["takeovers"]) >= 2 and 0.05 < meta["expert_steer_share"] < 0.95, meta["takeovers"]
    assert result["meta"]["takeovers"] == meta["takeovers"]
    episode = read_episode(record / "seed00007_map3")
    assert len(episode) == 150 and episode.references is not None
    handed_back = meta["takeovers"][0]["end"]
    assert -episode.controls[handed_back, 0] > 0.3, "handed back on the lane, the biased driver steers left again"
    index, waypoints, _ = episode_targets(episode, 8, 0.5)
    assert len(index) > 0 and np.isfinite(waypoints).all()
    off_lane, label_end_off = [], []
    for row, i in enumerate(index):
        (x, y, yaw), path = episode.poses[i], episode.references[i]
        rotation = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        end = np.array([x, y]) + rotation @ waypoints[row, -1]  # the label's last waypoint, in the map frame
        off_lane.append(distance_to_path(path, np.array([x, y])))
        label_end_off.append(distance_to_path(path, end))
    assert max(off_lane) > 0.2, "the data shows the car off its lane"
    assert max(label_end_off) < 0.05, "and every label leads back onto it"
