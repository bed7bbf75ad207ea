"""The route input: the target point's geometry, the head that reads it, and what training and the policy feed it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_vla_train import CONFIG, FRAMES, _line, straight, write_episode

from autoprune_ros.vla.action_head import ActionHead
from autoprune_ros.vla.route import route_feature_size, route_features, route_targets, to_ego_frame

LOOKAHEAD = 30.0
ROUTE_FEATURES = route_feature_size(1)


def route_target(route, lookahead: float):
    """The single target point (2,), or None."""
    points = route_targets(route, lookahead)
    return None if points is None else points[0]


def _arc(radius: float, length: float = 80.0, step: float = 1.0) -> np.ndarray:
    """A left bend starting at the origin heading +x, in the ego frame."""
    angle = np.arange(0.0, length, step) / radius
    return np.stack((radius * np.sin(angle), radius * (1 - np.cos(angle))), axis=-1)


def test_target_point_lies_the_lookahead_along_the_route_past_the_projection() -> None:
    straight_road = np.array([[-10.0, 2.0], [100.0, 2.0]])  # car 2 m right of the route's line
    np.testing.assert_allclose(route_target(straight_road, LOOKAHEAD), (LOOKAHEAD, 2.0), atol=1e-9)
    bend = _arc(50.0)
    target = route_target(bend, LOOKAHEAD)
    expected = (50 * math.sin(LOOKAHEAD / 50), 50 * (1 - math.cos(LOOKAHEAD / 50)))
    np.testing.assert_allclose(target, expected, atol=0.05)  # the chord of a left bend points left
    assert target[1] > 8.0
    short = np.array([[0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(route_target(short, LOOKAHEAD), (LOOKAHEAD, 0.0), atol=1e-9)  # extended straight
    behind = np.array([[-50.0, 0.0], [-40.0, 0.0]])  # the car has passed the route's end
    np.testing.assert_allclose(route_target(behind, LOOKAHEAD), (-40.0 + LOOKAHEAD, 0.0), atol=1e-9)


@pytest.mark.parametrize("route", [None, np.zeros((0, 2)), np.ones((1, 2)), np.ones((3, 2)),
                                   np.array([[0.0, 0.0], [np.nan, 1.0]])])
def test_no_usable_route_is_no_target(route) -> None:
    assert route_target(route, LOOKAHEAD) is None
    np.testing.assert_array_equal(route_features(None, LOOKAHEAD), np.zeros(ROUTE_FEATURES))


def test_several_points_are_spaced_evenly_up_to_the_lookahead() -> None:
    bend = _arc(50.0)
    points = route_targets(bend, LOOKAHEAD, 3)
    expected = [(50 * math.sin(s / 50), 50 * (1 - math.cos(s / 50))) for s in (10.0, 20.0, 30.0)]
    np.testing.assert_allclose(points, expected, atol=0.05)
    np.testing.assert_allclose(points[-1], route_target(bend, LOOKAHEAD))
    assert route_feature_size(3) == 7


def test_features_scale_by_the_lookahead_and_flag_missing_rows() -> None:
    batch = np.array([[[30.0, -6.0]], [[np.nan, np.nan]]], dtype=np.float32)
    np.testing.assert_allclose(route_features(batch, LOOKAHEAD), [[1.0, -0.2, 1.0], [0.0, 0.0, 0.0]])
    two = np.array([[[15.0, 0.0], [30.0, 3.0]]], dtype=np.float32)
    np.testing.assert_allclose(route_features(two, LOOKAHEAD, 2), [[0.5, 0.0, 1.0, 0.1, 1.0]])
    np.testing.assert_array_equal(route_features(None, LOOKAHEAD, 2), np.zeros(5))


def test_ego_frame() -> None:
    points = np.array([[11.0, 20.0], [10.0, 25.0]])
    np.testing.assert_allclose(to_ego_frame(points, 10.0, 20.0, math.pi / 2), [[0.0, -1.0], [5.0, 0.0]], atol=1e-12)


def test_a_widened_head_predicts_what_it_did_until_it_learns_the_route() -> None:
    torch.manual_seed(0)
    head = ActionHead(16, 4, 32)
    wide = head.with_route_input(ROUTE_FEATURES)
    hidden = torch.randn(5, 16)
    route = torch.randn(5, ROUTE_FEATURES)
    for before, after in zip(head(hidden), wide(hidden, route), strict=True):
        torch.testing.assert_close(before, after)
    for before, after in zip(wide(hidden), wide(hidden, torch.zeros(5, ROUTE_FEATURES)), strict=True):
        torch.testing.assert_close(before, after)  # no route = zero features
    with pytest.raises(ValueError, match="already"):
        wide.with_route_input(ROUTE_FEATURES)
    with torch.no_grad():
        wide.route.weight[:] = 0.5
    assert not torch.allclose(wide(hidden, route)[0], head(hidden)[0]), "the new inputs reach the output"


def _route_config(tmp_path: Path, lookahead: float | None = LOOKAHEAD) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    cfg["action_head"].update(num_waypoints=4, waypoint_dt=0.5, route_lookahead_m=lookahead)
    return cfg


def test_dataset_targets_come_from_the_reference_path_and_mirror(tmp_path: Path) -> None:
    from autoprune_ros.vla.augment import mirror_sample
    from autoprune_ros.vla.dataset import DrivingDataset, collate

    yaw = straight(0.0)[2]
    left = np.array([-math.sin(yaw), math.cos(yaw)])

    def reference(t: float) -> np.ndarray:  # the lane centre 1.5 m left of the drive
        return _line(np.array(straight(t)[:2]) + 1.5 * left, yaw)

    folder = write_episode(tmp_path / "ref", straight, seed=2, reference=reference)
    plain = write_episode(tmp_path / "plain", straight, seed=3)
    data = DrivingDataset([folder, plain], _route_config(tmp_path))
    with_route = data[0]
    np.testing.assert_allclose(with_route.route, [(LOOKAHEAD, 1.5)], atol=1e-4)
    np.testing.assert_allclose(mirror_sample(with_route).route, [(LOOKAHEAD, -1.5)], atol=1e-4)
    without = data[len(data) - 1]
    assert without.route is None, "an episode without reference paths has no route"
    routes = collate([with_route, without])[6]
    assert routes.shape == (2, 1, 2) and torch.isfinite(routes[0]).all() and torch.isnan(routes[1]).all()
    three = DrivingDataset([folder], {**_route_config(tmp_path), "action_head": {
        **_route_config(tmp_path)["action_head"], "route_points": 3}})
    np.testing.assert_allclose(three[0].route, [(10.0, 1.5), (20.0, 1.5), (30.0, 1.5)], atol=1e-4)
    assert DrivingDataset([folder], _route_config(tmp_path, None))[0].route is None, "a model without route input"
    from autoprune_ros.vla.builder import build_tiny_vla
    from autoprune_ros.vla.train import route_batch

    three_point = build_tiny_vla({**_route_config(tmp_path), "action_head": {
        **_route_config(tmp_path)["action_head"], "route_points": 3}}, seed=0)
    none_at_all = route_batch(three_point, collate([without, without])[6])
    assert torch.equal(none_at_all, torch.zeros(2, 7)), "a batch without any route: zero features of the right size"
    assert len(data) == 2 * (FRAMES - 20)  # 2 s of future needed at 0.1 s a frame


def test_the_policy_reads_the_route_and_refuses_a_malformed_one(tmp_path: Path) -> None:
    from autoprune_ros.runtime.synthetic_frames import road_frame
    from autoprune_ros.vla.builder import build_tiny_vla

    policy = build_tiny_vla(_route_config(tmp_path), seed=0)
    assert policy.uses_route
    with torch.no_grad():
        policy.head.route.weight.normal_()
    frame = road_frame(0, 160, 120)
    left = policy.act([frame], "follow the lane", 5.0, route=_arc(40.0))
    right = policy.act([frame], "follow the lane", 5.0, route=_arc(40.0) * [1.0, -1.0])
    none = policy.act([frame], "follow the lane", 5.0)
    assert none.route_targets is None and left.route_targets[0, 1] > 5.0 > -5.0 > right.route_targets[0, 1]
    assert not np.allclose(left.action.waypoints, right.action.waypoints)
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        policy.act([frame], "follow the lane", 5.0, route=np.zeros(4))
    plain = build_tiny_vla(_route_config(tmp_path, None), seed=0)
    assert not plain.uses_route and plain.act([frame], "follow the lane", 5.0, route=_arc(40.0)).route_targets is None


def fine_tune_setup(tmp_path: Path, lookahead: float | None) -> tuple[Path, list[str]]:
    """Three straight episodes with reference paths, a small config with route input `lookahead` (None: none) and
    the common autoprune-train arguments of a one-epoch run on them: (config path, arguments)."""
    yaw = straight(0.0)[2]
    for seed in (5, 6, 7):
        write_episode(tmp_path / "data" / f"ep{seed}", straight, seed=seed,
                      reference=lambda t: _line(np.array(straight(t)[:2]), yaw))
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(_route_config(tmp_path, lookahead)), encoding="utf-8")
    return config, ["--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.34",
                    "--no-progress", "--threads", "2", "--aux-vision-weight", "0"]


def test_fine_tuning_adds_a_route_input_to_a_model_without_one(tmp_path: Path, capsys) -> None:
    from autoprune_ros.vla.builder import load_vla
    from autoprune_ros.vla.train import main

    config, base = fine_tune_setup(tmp_path, None)
    assert main([*base, "--config", str(config), "--output", str(tmp_path / "a")]) == 0
    assert not load_vla(tmp_path / "a").uses_route
    assert main([*base, "--init", str(tmp_path / "a"), "--route-lookahead", "25", "--route-points", "2",
                 "--route-dropout", "0.5", "--output", str(tmp_path / "b")]) == 0
    tuned = load_vla(tmp_path / "b")
    assert tuned.route_lookahead_m == 25.0 and tuned.head.route_size == route_feature_size(2)
    assert tuned.head.route.weight.abs().sum() > 0, "the route weights trained"
    report = json.loads((tmp_path / "b" / "training.json").read_text(encoding="utf-8"))
    assert report["hyperparameters"]["route_lookahead"] == 25.0 and report["hyperparameters"]["route_dropout"] == 0.5
    assert main([*base, "--init", str(tmp_path / "b"), "--route-lookahead", "30", "--output", str(tmp_path / "c")]) == 2
    assert "reads 2 route point(s) up to 25.0 m" in capsys.readouterr().err
    for bad in (["--route-lookahead", "0"], ["--route-dropout", "1.5"], ["--route-points", "2"],
                ["--route-lookahead", "30", "--route-points", "0"]):
        with pytest.raises(SystemExit):
            main([*base, "--config", str(config), *bad, "--output", str(tmp_path / "d")])
