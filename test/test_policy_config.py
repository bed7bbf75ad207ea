"""Policies load from config/policies/*.yaml and bad configs fail with errors that name the problem."""
from __future__ import annotations

import pytest

from autoprune_ros.paths import config_path
from autoprune_ros.pruning import AutoPrune, FastV, NoPrune, PDrop
from autoprune_ros.pruning.config import build_policy, load_policy_config

SHIPPED = sorted(config_path("policies").glob("*.yaml"))


def test_every_shipped_policy_builds_for_llava_1_5() -> None:
    built = {path.stem: build_policy(path, num_layers=32, num_visual=576) for path in SHIPPED}
    assert isinstance(built["none"], NoPrune)
    assert isinstance(built["autoprune"], AutoPrune) and built["autoprune"].budget == 64
    assert isinstance(built["fastv"], FastV) and built["fastv"].layer == 2
    assert isinstance(built["pdrop"], PDrop)


def test_budget_override_reaches_every_policy() -> None:
    for path in SHIPPED:
        policy = build_policy(path, 32, 576, budget=128)
        if isinstance(policy, AutoPrune):
            assert policy.budget == 128
        elif isinstance(policy, FastV):
            assert abs((576 + 31 * policy.keep) / 32 - 128) <= 0.5
        elif isinstance(policy, PDrop):
            assert abs(sum(PDrop.counts(32, 576, policy.stage_layers, policy.ratio)) / 32 - 128) <= 1.0


@pytest.mark.parametrize(("config", "message"), [
    ({"policy": "sparsevlm"}, "unknown policy 'sparsevlm'"),
    ({"policy": "autoprune"}, "needs a 'budget'"),
    ({"policy": "autoprune", "budget": 64, "k0": -0.4}, "must not be negative"),
    ({"policy": "autoprune", "budget": 64, "temperature": 1}, "unknown key"),
    ({"policy": "autoprune", "budget": "many"}, "must be a number"),
    ({"policy": "fastv", "layer": 2}, "exactly one of 'keep' or 'budget'"),
    ({"policy": "pdrop", "ratio": 0.5, "budget": 64}, "exactly one of 'ratio' or 'budget'"),
])
def test_invalid_configs(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_policy_config(config)


def test_budget_above_the_visual_tokens() -> None:
    with pytest.raises(ValueError, match="above the visual-token count"):
        build_policy({"policy": "autoprune", "budget": 700}, 32, 576)


def test_missing_file_names_the_examples(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config/policies"):
        load_policy_config(tmp_path / "nope.yaml")
