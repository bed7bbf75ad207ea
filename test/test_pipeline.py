"""The framework-free per-frame pipeline the node and replay share, and multi-camera frame matching."""
from __future__ import annotations

import numpy as np
import pytest

from autoprune_ros.paths import config_path
from autoprune_ros.runtime.frame_sync import FrameSync
from autoprune_ros.runtime.governor import LatencyGovernor
from autoprune_ros.runtime.pipeline import FramePipeline
from autoprune_ros.vla.builder import build_tiny_vla

FRAME = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vla():
    return build_tiny_vla(config_path("models", "tiny_llava.yaml"))


def test_governed_frames_stay_in_limits_and_feed_the_governor(vla) -> None:
    layers = vla.model.config.text_config.num_hidden_layers
    governor = LatencyGovernor(10_000.0, 16, 64, layers)
    pipeline = FramePipeline(vla, "autoprune", governor)
    results = [pipeline.step([FRAME], "follow the lane", 3.0) for _ in range(12)]
    for result in results:
        assert 16 <= result.budget <= 64
        kept = result.output.prefill.visual_tokens_per_layer
        assert abs(np.mean(kept) - result.budget) <= 1.0
        assert result.complexity is not None and result.output.action.is_finite()
    budgets = [r.budget for r in results]
    assert budgets == sorted(budgets), "with time to spare the budget only ramps up (by at most 25% a frame)"
    assert budgets[-1] >= 64 - governor.hysteresis_tokens, "with time to spare it should come within hysteresis of max"
    assert pipeline.last_complexity == results[-1].complexity


def test_policy_none_and_budget_override(vla) -> None:
    pipeline = FramePipeline(vla, "none")
    result = pipeline.step([FRAME, FRAME], "stop", 0.0)
    assert result.budget is None and result.output.prefill.visual_tokens_per_layer[0] == 392
    pipeline.set_policy("fastv")
    result = pipeline.step([FRAME], "stop", 0.0, budget=40)
    assert result.budget == 40 and result.governor_reason == "budget given"
    with pytest.raises(ValueError, match="unknown pruning policy"):
        pipeline.set_policy("tome")


def test_frame_sync_matches_views_by_stamp() -> None:
    sync: FrameSync[str] = FrameSync(3, tolerance_ns=20_000_000, timeout_ns=500_000_000)
    assert sync.add(1, 1_000_000_000, 0, "left") is None
    views = sync.add(0, 1_005_000_000, 1_000, "front")
    assert views.views == ["front", "left"] and views.cameras == [0, 1] and views.missing == [2]
    sync.add(2, 1_000_000_000, 2_000, "right")
    views = sync.add(0, 1_100_000_000, 3_000, "front2")
    assert views.views == ["front2", "left", "right"] and views.unsynced == [1, 2] and not views.missing
    late = sync.add(0, 2_000_000_000, 900_000_000, "front3")
    assert late.missing == [1, 2] and late.views == ["front3"]
