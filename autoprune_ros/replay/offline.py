"""Offline replay: every frame of a bag through the node's own pipeline, in order, without DDS and without drops.

Each frame is decoded with the node's image codec, then `FramePipeline.step` runs with the instruction and speed
the node would hold at that stamp. The outputs are deterministic for a given model and frames (latency aside):
a fixed token budget is handed to the pipeline directly, the controller is reset at the start of each
configuration's run, and nothing depends on arrival times. Governed configurations (`<policy>:governed`) choose
each frame's budget with the node's latency governor, calibrated as the node calibrates it, so their budgets
(and so their outputs) follow the machine's timing.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from autoprune_ros.replay.frames import FrameRecord, ReplayFrame
from autoprune_ros.ros.image_codec import from_compressed_msg, from_image_msg
from autoprune_ros.ros.parameters import PARAMETERS
from autoprune_ros.runtime.configs import PolicyConfig
from autoprune_ros.runtime.pipeline import FramePipeline, FrameResult
from autoprune_ros.vla.policy import VLAPolicy

DEFAULT_INSTRUCTION: str = PARAMETERS["instruction"].default
DEFAULT_DT: float = 1.0 / PARAMETERS["control_rate_hz"].default  # the node's control period


def is_compressed(msg: Any) -> bool:
    """True for a sensor_msgs/CompressedImage (by its rosbags type name, else by its fields)."""
    msgtype = getattr(msg, "__msgtype__", "")
    if msgtype:
        return msgtype.endswith("CompressedImage")
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def decode_view(msg: Any) -> np.ndarray:
    """An Image or CompressedImage message -> RGB uint8 (H, W, 3), as the node decodes it."""
    return from_compressed_msg(msg) if is_compressed(msg) else from_image_msg(msg)


def build_pipeline(model: str, config: PolicyConfig, latency_budget_ms: float, num_cameras: int, seed: int = 0,
                   threads: int | None = None, *, policy: VLAPolicy | None = None) -> FramePipeline:
    """The pipeline the node builds for `config` (node_params' settings): the policy ('tiny' or a save_vla
    folder; pass `policy` to reuse one already loaded), the latency governor over `num_cameras` views and, for
    governed configurations, its calibration with the node's default number of frames."""
    from autoprune_ros.runtime.policy_setup import calibrate, load_policy, make_governor

    if policy is None:
        policy = load_policy(model, seed=seed, threads=threads or 0)
    low = config.tokens or PARAMETERS["min_token_budget"].default
    high = config.tokens or PARAMETERS["max_token_budget"].default
    governor = make_governor(policy, num_cameras, latency_budget_ms, low, high,
                             PARAMETERS["complexity_aware"].default)
    pipeline = FramePipeline(policy, config.policy, governor)
    if config.governed:
        calibrate(pipeline, num_cameras, DEFAULT_INSTRUCTION, PARAMETERS["calibration_frames"].default)
    return pipeline


def _record(frame: ReplayFrame, result: FrameResult, latency_ms: float) -> FrameRecord:
    out, action, stats = result.output, result.output.action, result.output.prefill
    return FrameRecord(
        index=frame.index, stamp_ns=frame.stamp_ns, steer=action.steer, throttle=action.throttle,
        brake=action.brake, target_speed=action.target_speed, waypoints=action.waypoints.tolist(),
        budget=None if result.budget is None else float(result.budget), visual_tokens=out.num_visual_tokens,
        kept_tokens_per_layer=None if stats is None else [int(n) for n in stats.visual_tokens_per_layer],
        complexity=result.complexity, slope=None if stats is None else stats.slope,
        flops_ratio=None if stats is None else stats.flops_ratio, latency_ms=latency_ms,
        model_ms=out.timings_ms.get("model"))


def run_offline(frames: Iterable[ReplayFrame], pipeline: FramePipeline, config: PolicyConfig, *,
                default_instruction: str = DEFAULT_INSTRUCTION, dt: float = DEFAULT_DT, progress: bool = False,
                total: int | None = None) -> list[FrameRecord]:
    """Run `config` on every frame, in order; one FrameRecord per frame. A frame that cannot be decoded or whose
    step raises (or returns a non-finite action) is recorded as "failed" with the reason, as the node would
    answer it with a safe stop, and the run goes on. The instruction and ego state carry over between frames as in
    the node: the last non-empty instruction (else `default_instruction`), the last finite speed and yaw rate
    (else 0)."""
    pipeline.set_policy(config.policy)
    pipeline.policy.reset()
    pipeline.last_complexity = None
    instruction, speed, yaw_rate = default_instruction, 0.0, 0.0
    records: list[FrameRecord] = []
    items: Iterable[ReplayFrame] = frames
    if progress:
        from tqdm import tqdm

        items = tqdm(frames, total=total, desc=config.name, unit="frame", leave=False)
    for frame in items:
        if frame.instruction is not None and frame.instruction.strip():
            instruction = frame.instruction
        if frame.speed_mps is not None and math.isfinite(frame.speed_mps):
            speed = frame.speed_mps
        if frame.yaw_rate_rps is not None and math.isfinite(frame.yaw_rate_rps):
            yaw_rate = frame.yaw_rate_rps
        records.append(_run_frame(frame, pipeline, config, instruction, speed, yaw_rate, dt, frame.route))
    return records


def _run_frame(frame: ReplayFrame, pipeline: FramePipeline, config: PolicyConfig, instruction: str, speed: float,
               yaw_rate: float, dt: float, route: np.ndarray | None = None) -> FrameRecord:
    start = time.perf_counter()
    try:
        views = [decode_view(msg) for msg in frame.views]
    except Exception as exc:  # the node rejects what it cannot decode; so does replay, frame by frame
        return FrameRecord(frame.index, frame.stamp_ns, status="failed", error=f"rejected camera frame: {exc}")
    pre_ms = (time.perf_counter() - start) * 1e3
    budget = None if config.tokens is None else min(config.tokens, pipeline.visual_tokens(len(views)))
    try:
        result = pipeline.step(views, instruction, speed, pre_ms=pre_ms, dt=dt, budget=budget, yaw_rate_rps=yaw_rate,
                               route=route)
    except Exception as exc:  # a model fault fails this frame only, as in the node
        return FrameRecord(frame.index, frame.stamp_ns, status="failed",
                           error=f"policy failed: {type(exc).__name__}: {exc}")
    if not result.output.action.is_finite():
        return FrameRecord(frame.index, frame.stamp_ns, status="failed", error="policy returned a non-finite action")
    return _record(frame, result, pre_ms + result.wall_ms)
