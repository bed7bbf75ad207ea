"""Loading the node's policy, building its latency governor and calibrating it, from plain settings.

Shared by the `autoprune` node (which reads the settings from its ROS parameters) and offline replay (which takes
them from the command line), so that both run the same model the same way. No ROS here.
"""
from __future__ import annotations

import numpy as np

from autoprune_ros.runtime.governor import LatencyGovernor
from autoprune_ros.runtime.pipeline import FramePipeline
from autoprune_ros.vla.policy import VLAPolicy

CALIBRATION_SHAPE = (480, 640, 3)  # a typical camera frame: decoding and resizing cost as on the vehicle


def load_policy(model: str, *, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                threads: int = 0) -> VLAPolicy:
    """'tiny' (built from config/models/tiny_llava.yaml with `seed`), a bundled model name or a folder written by
    save_vla (`paths.resolve_model`), moved to `device` / `dtype` and warmed up. `threads` > 0 sets torch's CPU
    threads."""
    import torch

    from autoprune_ros.paths import BUILT_FROM_CONFIG, config_path, resolve_model
    from autoprune_ros.vla.builder import build_tiny_vla, load_vla

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device is 'cuda' but torch sees no CUDA GPU: set device:=cpu or check the driver")
    if model == BUILT_FROM_CONFIG:
        policy = build_tiny_vla(config_path("models", "tiny_llava.yaml"), seed=seed)
    else:
        policy = load_vla(resolve_model(model))
    policy.to(device, getattr(torch, dtype))
    policy.warmup()
    return policy


def make_governor(policy: VLAPolicy, num_cameras: int, latency_budget_ms: float, min_token_budget: int,
                  max_token_budget: int, complexity_aware: bool = False) -> LatencyGovernor:
    """The latency governor for `num_cameras` views, its token limits capped at the visual tokens there are."""
    num_visual = policy.visual_tokens_per_image * num_cameras
    return LatencyGovernor(latency_budget_ms, min(min_token_budget, num_visual), min(max_token_budget, num_visual),
                           policy.model.config.text_config.num_hidden_layers, complexity_aware=complexity_aware)


def calibrate(pipeline: FramePipeline, num_cameras: int, instruction: str, frames: int) -> None:
    """Seed the governor's latency model with `frames` frames at its smallest, middle and largest budgets, then
    reset the controller (the calibration frames are not part of any drive). Nothing to do unpruned."""
    governor = pipeline.governor
    if not frames or governor is None or pipeline.policy_name == "none":
        return
    views = [np.full(CALIBRATION_SHAPE, 127, np.uint8)] * num_cameras
    low, high = governor.min_tokens, governor.max_tokens
    samples = []
    for budget in sorted({low, (low + high) // 2, high}):
        for _ in range(frames):
            out = pipeline.step(views, instruction, 0.0, budget=budget).output
            samples.append((budget, out.timings_ms["model"]))
    governor.calibrate(samples)
    pipeline.policy.reset()
