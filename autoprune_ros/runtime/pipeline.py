"""The per-frame pipeline shared by the node and offline replay: views -> token budget -> pruned policy -> action.

No ROS here: the caller decodes images, measures its own pre- and post-processing, and publishes. The latency
governor (when given) picks each frame's token budget from the time left in the latency budget; the pruning
policy named by `policy_name` is built for that budget over all views' visual tokens.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoprune_ros.pruning.config import KEYS, build_policy
from autoprune_ros.vla.policy import PolicyOutput, VLAPolicy

POLICY_NAMES = tuple(KEYS)


@dataclass
class FrameResult:
    output: PolicyOutput
    policy: str
    budget: float | None  # average visual tokens per layer asked of the pruner (None: not pruned)
    governor_feasible: bool  # False when even the minimum budget was predicted to miss the deadline
    governor_reason: str
    predicted_ms: float | None
    complexity: float | None  # this frame's measured text-vision mutual information (AutoPrune), if any
    wall_ms: float  # time inside step()


class FramePipeline:
    def __init__(self, policy: VLAPolicy, policy_name: str = "autoprune", governor=None) -> None:
        self.policy = policy
        self.governor = governor
        self.num_layers = policy.model.config.text_config.num_hidden_layers
        self.set_policy(policy_name)
        # A frame's complexity is measured during its own prefill, after its budget is chosen: the governor gets
        # the previous frame's value (consecutive frames at 10 Hz see nearly the same scene) and uses it only in
        # its complexity-aware mode.
        self.last_complexity: float | None = None

    def set_policy(self, name: str) -> None:
        if name not in POLICY_NAMES:
            raise ValueError(f"unknown pruning policy {name!r}; use one of {list(POLICY_NAMES)}")
        self.policy_name = name

    def visual_tokens(self, num_views: int) -> int:
        return num_views * self.policy.visual_tokens_per_image

    def step(self, views: Sequence[np.ndarray], instruction: str, speed_mps: float, *, pre_ms: float = 0.0,
             dt: float = 0.1, budget: float | None = None, yaw_rate_rps: float = 0.0,
             route: np.ndarray | None = None) -> FrameResult:
        """Run one frame. `pre_ms`: the caller's own pre-processing (image decoding) for this frame; `budget`
        overrides the governor for this frame (calibration, replay of a recorded budget); `yaw_rate_rps`: the ego
        yaw rate from odometry (left positive), for models whose prompt reads it; `route`: the route ahead in the
        ego frame ((K, 2), x forward, y left), for models with a route input."""
        start = time.perf_counter()
        num_visual = self.visual_tokens(len(views))
        feasible, reason, predicted = True, "not pruned", None
        governed = budget is None and self.governor is not None and self.policy_name != "none"
        if self.policy_name == "none":
            budget = None
        elif budget is not None:
            reason = "budget given"
        elif governed:
            choice = self.governor.choose(self.last_complexity)
            budget, feasible, reason, predicted = choice.budget, choice.feasible, choice.reason, choice.predicted_ms
            budget = min(budget, num_visual)
        else:
            budget, reason = num_visual, "no governor: every visual token"
        config = {"policy": self.policy_name} if budget is None else {"policy": self.policy_name, "budget": budget}
        pruning = build_policy(config, self.num_layers, num_visual)
        output = self.policy.act(list(views), instruction, speed_mps, dt, pruning=pruning, yaw_rate_rps=yaw_rate_rps,
                                 route=route)
        stats = output.prefill
        complexity = stats.mutual_information if stats is not None else None
        if complexity is not None:
            self.last_complexity = complexity
        wall_ms = (time.perf_counter() - start) * 1e3
        if governed:
            timings = output.timings_ms
            kept = sum(stats.visual_tokens_per_layer) if stats is not None else None
            self.governor.observe(budget, timings["model"], pre_ms + timings["preprocess"],
                                  timings["head_and_control"], x=kept)
        return FrameResult(output, self.policy_name, budget, feasible, reason, predicted, complexity, wall_ms)

