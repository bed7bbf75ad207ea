"""VLAPolicy: camera views + instruction + ego speed -> Action, via a LLaVA model, an action head and a controller."""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, LlavaForConditionalGeneration, LlavaProcessor

from autoprune_ros.pruning.policies import NoPrune, PruningPolicy

from .action import Action
from .action_head import ActionHead
from .controller import WaypointController
from .pruned_prefill import PrefillStats, PruningSession
from .route import route_features, route_line, route_targets
from .route_frame import along_route

_ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class PolicyOutput:
    """What `VLAPolicy.act` returns for one frame.

    `num_visual_tokens` is the total over all views entering the decoder; `timings_ms` has the keys
    preprocess, model and head_and_control (wall-clock milliseconds).
    """

    action: Action
    num_visual_tokens: int
    timings_ms: dict[str, float]
    prefill: PrefillStats | None = None  # kept tokens per layer, MI, slope, FLOPs of this frame's prefill
    route_targets: np.ndarray | None = None  # (P, 2) ego-frame route points the head read; None: no route


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _check_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The camera views as a list, or ValueError saying what is wrong with which one."""
    if isinstance(images, np.ndarray):
        raise ValueError(
            f"images must be a sequence of HxWx3 uint8 arrays (one per camera view), got a single array of shape "
            f"{images.shape}; wrap one view in a list"
        )
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a non-empty sequence of HxWx3 uint8 RGB arrays, one per camera view")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise ValueError(f"images[{i}] must be a numpy.ndarray, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images[{i}] must have shape HxWx3 (RGB, channels last), got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"images[{i}] must have dtype uint8, got {image.dtype}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"images[{i}] is empty: shape {image.shape}")
    return list(images)


def _check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class VLAPolicy:
    """A driving policy around a transformers LLaVA model.

    Per frame: prompt + processor (`prepare_inputs`), the model's prefill up to the decoder's final norm
    (`_encode`, the one step a pruning engine replaces), the action head on the last prompt token, then the
    waypoint controller. Never sets torch thread counts: that is the caller's decision.
    """

    DEFAULT_PROMPT_TEMPLATE = (
        "USER: {images}\nYou are driving a car. Instruction: {instruction}. Speed: {speed:.1f} m/s. ASSISTANT:"
    )

    def __init__(self, model: LlavaForConditionalGeneration, processor: LlavaProcessor, head: ActionHead,
                 controller: WaypointController, config: Mapping[str, Any]) -> None:
        self.model = model
        self.processor = processor
        self.head = head
        self.controller = controller
        self.config = dict(config)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.check_prompt_template(config["prompt"]["template"])
        self._template = config["prompt"]["template"]
        self._max_instruction_chars = config["prompt"]["max_instruction_chars"]
        self.max_speed = float(config["action_head"]["max_speed"])
        self.waypoint_dt = float(config["action_head"]["waypoint_dt"])
        self.route_lookahead_m: float | None = config["action_head"].get("route_lookahead_m")
        self.route_points = int(config["action_head"].get("route_points", 1))
        self.waypoint_frame: str = config["action_head"].get("waypoint_frame", "ego")
        self.image_token = processor.image_token
        # Removed from instructions so that text from a topic cannot add image placeholders or control tokens.
        self._reserved_strings = sorted(set(processor.tokenizer.all_special_tokens) | {self.image_token}, key=len,
                                        reverse=True)

    @staticmethod
    def check_prompt_template(template: str) -> None:
        """ValueError unless `template` has one {images} and one {instruction} field and formats cleanly. It may use
        {speed} (m/s) and {yaw_rate} (deg/s, left positive), the ego state from odometry."""
        for field_name in ("{images}", "{instruction}"):
            if template.count(field_name) != 1:
                raise ValueError(f"prompt template must contain {field_name} exactly once: {template!r}")
        try:
            formatted = template.format(images="", instruction="", speed=0.0, yaw_rate=0.0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt template does not format with images, instruction, speed, yaw_rate: {exc}"
                             ) from None
        if "<image>" in formatted:
            raise ValueError("prompt template must not contain '<image>' itself; use {images}")

    @property
    def visual_tokens_per_image(self) -> int:
        """Visual tokens one camera view adds to the decoder's input (196 for the 224 px / 16 px tiny model)."""
        vision = self.model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if self.model.config.vision_feature_select_strategy == "full" else 0)

    def to(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> VLAPolicy:
        """Move the model to `device` in `dtype` (fp16 / bf16 only on CUDA); the head stays float32."""
        device = torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        if dtype not in _ALLOWED_DTYPES:
            raise ValueError(f"dtype must be one of {_ALLOWED_DTYPES}, got {dtype}")
        if device.type == "cpu" and dtype != torch.float32:
            raise ValueError(f"dtype {dtype} is only supported on cuda; use torch.float32 on cpu")
        self.model.to(device=device, dtype=dtype)
        self.head.to(device=device, dtype=torch.float32)
        self.device, self.dtype = device, dtype
        return self

    def clean_instruction(self, instruction: str) -> str:
        """The instruction on one line, without special-token strings, cut to the configured length."""
        if not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        for reserved in self._reserved_strings:
            instruction = instruction.replace(reserved, " ")
        return " ".join(instruction.split())[: self._max_instruction_chars]

    def build_prompt(self, num_images: int, instruction: str, speed_mps: float, yaw_rate_rps: float = 0.0) -> str:
        """The prompt text with one <image> placeholder per view, in view order; the template's {yaw_rate} is in
        degrees per second (a few integer tokens rather than a small fraction)."""
        images = "\n".join([self.image_token] * num_images)
        return self._template.format(images=images, instruction=instruction, speed=speed_mps,
                                     yaw_rate=math.degrees(yaw_rate_rps))

    def prepare_inputs(self, images: list[np.ndarray], instruction: str, speed_mps: float,
                       yaw_rate_rps: float = 0.0) -> BatchFeature:
        """Processor outputs (input_ids, attention_mask, pixel_values) on the policy's device, for inputs that
        `act` has already validated."""
        prompt = self.build_prompt(len(images), instruction, speed_mps, yaw_rate_rps)
        inputs = self.processor(images=images, text=prompt, return_tensors="pt", input_data_format="channels_last")
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _encode(self, images: list[np.ndarray], instruction: str, speed_mps: float,
                timings: dict[str, float] | None = None, pruning: PruningPolicy | None = None,
                yaw_rate_rps: float = 0.0) -> tuple[torch.Tensor, PrefillStats]:
        """Final-norm decoder hidden state of the last prompt token, shape (hidden,), and the prefill statistics.

        Runs the base LLaVA model only (no LM head, no per-layer hidden states, no KV cache), with visual tokens
        pruned by `pruning` (default: none). Writes the preprocessing time into `timings['preprocess']`.
        """
        start = time.perf_counter()
        inputs = self.prepare_inputs(images, instruction, speed_mps, yaw_rate_rps)
        if timings is not None:
            timings["preprocess"] = _elapsed_ms(start)
        compact = self.config.get("pruning", {}).get("compact_positions")
        with PruningSession(self.model, pruning or NoPrune(), inputs["input_ids"],
                            compact_positions=compact) as session:
            outputs = self.model.model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                pixel_values=inputs["pixel_values"],
                use_cache=False,
            )
        return outputs.last_hidden_state[0, -1], session.stats()

    @property
    def uses_route(self) -> bool:
        """Whether the action head reads route points (the config's action_head.route_lookahead_m is set)."""
        return self.route_lookahead_m is not None

    def route_input(self, route: np.ndarray | None) -> tuple[torch.Tensor | None, np.ndarray | None]:
        """(the head's route features, the route points (P, 2) they encode) for a route given in the ego frame
        ((K, 2), x forward, y left; None: no route); (None, None) for a model without a route input."""
        if route is not None:
            route = np.asarray(route, dtype=np.float64)
            if route.ndim != 2 or route.shape[1] != 2:
                raise ValueError(f"route must be a (K, 2) array of ego-frame points, got shape {route.shape}")
        if self.route_lookahead_m is None:
            return None, None
        target = route_targets(route, self.route_lookahead_m, self.route_points)
        features = torch.from_numpy(route_features(target, self.route_lookahead_m, self.route_points)).to(self.device)
        return features, target

    def act(self, images: Sequence[np.ndarray], instruction: str, speed_mps: float, dt: float = 0.1,
            pruning: PruningPolicy | None = None, yaw_rate_rps: float = 0.0,
            route: np.ndarray | None = None) -> PolicyOutput:
        """One control step: HxWx3 uint8 RGB views (in prompt order), the instruction, ego speed (m/s), the
        control period `dt` (s), the ego yaw rate (rad/s, left positive; read by prompt templates with a
        {yaw_rate} field) and the route ahead in the ego frame ((K, 2) metres, x forward, y left; read by models
        with a route input, which drive from the camera alone without it) -> a clipped Action. `pruning` prunes
        the visual tokens of this frame's prefill.

        Raises ValueError for malformed inputs and RuntimeError if the model produces non-finite outputs (the
        controller state is then left untouched).
        """
        views = _check_images(images)
        speed = _check_finite("speed_mps", speed_mps)
        yaw_rate = _check_finite("yaw_rate_rps", yaw_rate_rps)
        dt = _check_finite("dt", dt)
        if dt <= 0.0:
            raise ValueError(f"dt must be > 0 s, got {dt}")
        text = self.clean_instruction(instruction)
        route_in, target = self.route_input(route)

        timings: dict[str, float] = {}
        start = time.perf_counter()
        with torch.inference_mode():
            hidden, prefill_stats = self._encode(views, text, speed, timings=timings, pruning=pruning,
                                                     yaw_rate_rps=yaw_rate)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # kernels are asynchronous: close the model's time here
            head_start = time.perf_counter()
            waypoints_t, speed_t = self.head(hidden.to(torch.float32), route_in)
            if self.waypoint_frame == "route":
                line = route_line(route)
                waypoints_t = along_route(waypoints_t, None if line is None else torch.from_numpy(line))
            waypoints = waypoints_t.cpu().numpy()
            target_speed = float(speed_t)
        encode_ms = (head_start - start) * 1e3
        timings.setdefault("preprocess", 0.0)
        timings["model"] = encode_ms - timings["preprocess"]
        if not (np.isfinite(waypoints).all() and math.isfinite(target_speed)):
            raise RuntimeError("the model produced non-finite waypoints or target speed")
        target_speed = min(target_speed, self.max_speed)
        steer, throttle, brake = self.controller.command(waypoints, target_speed, speed, dt)
        action = Action(steer, throttle, brake, target_speed, waypoints).clipped()
        timings["head_and_control"] = _elapsed_ms(head_start)
        return PolicyOutput(action, len(views) * self.visual_tokens_per_image, timings, prefill_stats, target)

    def reset(self) -> None:
        """Reset the controller state (new episode / route)."""
        self.controller.reset()

    def warmup(self, n: int = 2, image_shape: tuple[int, int, int] = (480, 640, 3), num_views: int = 1) -> None:
        """Run `n` dummy frames so first-call allocations are not paid by a real frame; then `reset()`."""
        image = np.full(image_shape, 127, dtype=np.uint8)
        for _ in range(n):
            self.act([image] * num_views, "follow the lane", 0.0)
        self.reset()
