"""Waypoints in the route's frame: laying (along, left of) onto the route line, and the config, dataset, policy and
fine-tune that use it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_vla_route import LOOKAHEAD, _arc, _route_config, fine_tune_setup
from test_vla_train import _line, straight, write_episode

from autoprune_ros.vla.route import ROUTE_LINE_POINTS, ROUTE_LINE_STEP_M, route_line
from autoprune_ros.vla.route_frame import along_route, straight_line

RADIUS = 20.0


def _frame_config(tmp_path: Path) -> dict:
    cfg = _route_config(tmp_path)
    cfg["action_head"]["waypoint_frame"] = "route"
    return cfg


def test_the_route_line_is_the_route_every_metre_from_the_projection() -> None:
    route = np.vstack(([[-20.0, 1.5]], _arc(RADIUS, 120.0) + [0.0, 1.5]))  # a bend from 1.5 m left of the car
    line = route_line(route)
    assert line.shape == (ROUTE_LINE_POINTS, 2)
    np.testing.assert_allclose(line[0], (0.0, 1.5), atol=1e-9)
    steps = np.hypot(*np.diff(line, axis=0).T)
    np.testing.assert_allclose(steps, ROUTE_LINE_STEP_M, atol=0.01)  # chords of 1 m arcs
    assert route_line(None) is None and route_line(np.ones((3, 2))) is None


def test_on_a_straight_line_route_frame_is_ego_frame() -> None:
    points = torch.tensor([[[2.0, 0.3], [5.5, -1.0], [120.0, 2.0]]])  # the last one past the line's end
    line = torch.from_numpy(straight_line()).unsqueeze(0)
    torch.testing.assert_close(along_route(points, line), points, atol=1e-5, rtol=0)
    torch.testing.assert_close(along_route(points, None), points)
    missing = torch.full((1, ROUTE_LINE_POINTS, 2), float("nan"))
    torch.testing.assert_close(along_route(points, missing), points, atol=1e-5, rtol=0)


def test_waypoints_follow_a_bend_and_their_offset_is_to_its_left() -> None:
    line = torch.from_numpy(route_line(_arc(RADIUS, 120.0))).float()
    quarter = RADIUS * math.pi / 2
    out = along_route(torch.tensor([[quarter, 0.0], [quarter, 2.0], [10.0, -1.0]]), line)
    torch.testing.assert_close(out[0], torch.tensor([RADIUS, RADIUS]), atol=0.05, rtol=0)  # a quarter turn left
    torch.testing.assert_close(out[1], torch.tensor([RADIUS - 2.0, RADIUS]), atol=0.05, rtol=0)  # towards the centre
    angle = 10.0 / RADIUS
    expected = torch.tensor([(RADIUS + 1.0) * math.sin(angle), RADIUS - (RADIUS + 1.0) * math.cos(angle)])
    torch.testing.assert_close(out[2], expected, atol=0.05, rtol=0)  # right of the route: away from the centre


def test_gradients_reach_both_coordinates_and_batches_mix_routes() -> None:
    frame_points = torch.tensor([[[8.0, 0.5]], [[8.0, 0.5]]], requires_grad=True)
    lines = torch.stack((torch.from_numpy(route_line(_arc(RADIUS, 120.0))).float(),
                         torch.full((ROUTE_LINE_POINTS, 2), float("nan"))))
    out = along_route(frame_points, lines)
    torch.testing.assert_close(out[1], frame_points[1].detach())  # no route: ego frame
    assert out[0, 0, 1] > 0.5 + 1.0, "the bend lifts the first sample's point to the left"
    out.sum().backward()
    assert torch.isfinite(frame_points.grad).all() and (frame_points.grad[0].abs() > 0).all()
    with pytest.raises(ValueError, match="at least 2 points"):
        along_route(frame_points, torch.zeros(2, 1, 2))


def test_the_route_frame_needs_a_route_input(tmp_path: Path) -> None:
    from autoprune_ros.vla.builder import validate_model_config

    cfg = _route_config(tmp_path, None)
    cfg["action_head"]["waypoint_frame"] = "route"
    with pytest.raises(ValueError, match="route_lookahead_m"):
        validate_model_config(cfg)
    cfg["action_head"]["waypoint_frame"] = "polar"
    with pytest.raises(ValueError, match="waypoint_frame"):
        validate_model_config(cfg)


def test_the_policy_lays_its_waypoints_along_the_route(tmp_path: Path) -> None:
    from autoprune_ros.runtime.synthetic_frames import road_frame
    from autoprune_ros.vla.builder import build_tiny_vla

    frame = road_frame(0, 160, 120)
    on_route = build_tiny_vla(_frame_config(tmp_path), seed=0)
    in_ego = build_tiny_vla(_route_config(tmp_path), seed=0)  # the same weights, ego-frame waypoints
    bend = _arc(10.0, 60.0)
    turning = on_route.act([frame], "follow the lane", 8.0, route=bend).action.waypoints
    ego = in_ego.act([frame], "follow the lane", 8.0, route=bend).action.waypoints
    # same (s, d) for both: the route-frame ones are the ego ones laid along the 10 m-radius left bend
    expected = along_route(torch.tensor(ego), torch.from_numpy(route_line(bend))).numpy()
    np.testing.assert_allclose(turning, expected, atol=1e-4)
    heading = np.arctan2(*np.diff(turning[-2:], axis=0)[0][::-1])
    assert heading > np.arctan2(*np.diff(ego[-2:], axis=0)[0][::-1]) + 0.2, "the far waypoints turn left"
    without = on_route.act([frame], "follow the lane", 8.0).action.waypoints
    np.testing.assert_allclose(without, in_ego.act([frame], "follow the lane", 8.0).action.waypoints, atol=1e-5)


def test_the_dataset_gives_route_lines_that_mirror(tmp_path: Path) -> None:
    from autoprune_ros.vla.augment import mirror_sample
    from autoprune_ros.vla.dataset import DrivingDataset, collate

    yaw = straight(0.0)[2]
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    folder = write_episode(tmp_path / "ref", straight, seed=2,
                           reference=lambda t: _line(np.array(straight(t)[:2]) + 1.5 * left, yaw))
    plain = write_episode(tmp_path / "plain", straight, seed=3)
    data = DrivingDataset([folder, plain], _frame_config(tmp_path))
    sample, without = data[0], data[len(data) - 1]
    assert sample.route_line.shape == (ROUTE_LINE_POINTS, 2) and without.route_line is None
    np.testing.assert_allclose(sample.route_line[:, 1], 1.5, atol=1e-4)  # the lane centre 1.5 m left, straight on
    np.testing.assert_allclose(mirror_sample(sample).route_line[:, 1], -1.5, atol=1e-4)
    lines = collate([sample, without])[7]
    assert lines.shape == (2, ROUTE_LINE_POINTS, 2) and torch.isnan(lines[1]).all()
    assert DrivingDataset([folder], _route_config(tmp_path))[0].route_line is None, "an ego-frame model has none"


def test_fine_tuning_turns_an_ego_frame_head_into_a_route_frame_one(tmp_path: Path, capsys) -> None:
    from autoprune_ros.vla.builder import load_vla
    from autoprune_ros.vla.train import main

    config, base = fine_tune_setup(tmp_path, LOOKAHEAD)
    assert main([*base, "--config", str(config), "--output", str(tmp_path / "ego")]) == 0
    assert load_vla(tmp_path / "ego").waypoint_frame == "ego"
    assert main([*base, "--init", str(tmp_path / "ego"), "--waypoint-frame", "route",
                 "--output", str(tmp_path / "route")]) == 0
    tuned = load_vla(tmp_path / "route")
    assert tuned.waypoint_frame == "route" and tuned.route_lookahead_m == 30.0
    report = json.loads((tmp_path / "route" / "training.json").read_text(encoding="utf-8"))
    assert report["hyperparameters"]["waypoint_frame"] == "route" and math.isfinite(report["epochs"][0]["val_loss"])
    no_route = tmp_path / "no_route.yaml"
    no_route.write_text(yaml.safe_dump(_route_config(tmp_path, None)), encoding="utf-8")
    assert main([*base, "--config", str(no_route), "--waypoint-frame", "route", "--output", str(tmp_path / "x")]) == 2
    assert "needs a route input" in capsys.readouterr().err
