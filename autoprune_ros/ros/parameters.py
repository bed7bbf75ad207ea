"""The autoprune node's parameters: defaults, descriptors with ranges, and validation of run-time changes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from autoprune_ros.ros.qos import RELIABILITY
from autoprune_ros.runtime.pipeline import POLICY_NAMES

CONTROL_INTERFACES = ("carla", "ackermann")


@dataclass(frozen=True)
class Param:
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    def descriptor(self) -> ParameterDescriptor:
        text = self.description + (f" (one of {', '.join(self.choices)})" if self.choices else "")
        descriptor = ParameterDescriptor(description=text, read_only=self.read_only)
        if self.range and isinstance(self.default, bool):
            raise TypeError("a boolean parameter has no range")
        if self.range and isinstance(self.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(self.range[0]), to_value=int(self.range[1]),
                                                     step=1)]
        elif self.range:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.range[0]),
                                                                  to_value=float(self.range[1]), step=0.0)]
        return descriptor


PARAMETERS: dict[str, Param] = {
    "autostart": Param(True, "configure and activate at start (otherwise drive the lifecycle externally)", True),
    "model": Param("tiny", "'tiny' (built from config/models/tiny_llava.yaml, untrained), a bundled "
                   "model name under models/ (tiny_drive: the driving VLA) or a folder written by save_vla "
                   "(safetensors)", True),
    "seed": Param(0, "weight seed for models built from config", True, (0, 2**31 - 1)),
    "device": Param("cpu", "inference device", True, choices=("cpu", "cuda")),
    "dtype": Param("float32", "weights and activations (float16/bfloat16 need cuda)", True,
                   choices=("float32", "float16", "bfloat16")),
    "num_threads": Param(0, "torch CPU threads; 0 keeps torch's default", True, (0, 256)),
    "camera_topics": Param(["/carla/hero/rgb_front/image"], "camera topics, primary first; a topic ending in "
                           "/compressed carries sensor_msgs/CompressedImage", True),
    "camera_sync_tolerance_ms": Param(20.0, "frames within this of the primary's stamp form one set", True,
                                      (0.0, 1000.0)),
    "camera_timeout_s": Param(0.5, "a camera silent this long is missing; the primary's silence commands a safe "
                              "stop", True, (0.01, 60.0)),
    "image_qos_reliability": Param("best_effort", "camera subscription reliability", True, choices=tuple(RELIABILITY)),
    "image_qos_depth": Param(1, "camera subscription depth; 1 = latest frame only", True, (1, 100)),
    "control_interface": Param("carla", "command message type", True, choices=CONTROL_INTERFACES),
    "ego_frame_id": Param("hero", "frame_id of the trajectory (ego frame, x forward, y left)", True),
    "control_rate_hz": Param(10.0, "rate of the safety watchdog and of safe-stop commands", True, (0.1, 1000.0)),
    "calibration_frames": Param(3, "frames per budget run at configure to seed the latency model", True, (0, 100)),
    "route_topic": Param("/carla/hero/waypoints", "nav_msgs/Path of the route ahead (map frame like the odometry, "
                         "or the ego frame), read by models with a route input; '' to drive without one", True),
    "instruction": Param("follow the lane", "instruction used until one arrives on /autoprune/instruction"),
    "pruning_policy": Param("autoprune", "visual-token pruning", choices=POLICY_NAMES),
    "latency_budget_ms": Param(100.0, "per-frame latency budget the governor keeps the model within",
                               range=(1.0, 60000.0)),
    "hard_deadline_ms": Param(300.0, "an answer later than this after the frame arrived is replaced by a safe stop",
                              range=(1.0, 60000.0)),
    "min_token_budget": Param(16, "smallest average visual tokens per layer the governor may choose",
                              range=(1, 100000)),
    "max_token_budget": Param(196, "largest average visual tokens per layer (capped at the model's count)",
                              range=(1, 100000)),
    "complexity_aware": Param(False, "give complex frames (high text-vision mutual information) more tokens and "
                              "easy ones fewer at the same average latency"),
}


def check_change(name: str, value: Any, current: dict[str, Any]) -> str | None:
    """Why a run-time change of `name` to `value` is refused, or None. `current` maps names to present values."""
    spec = PARAMETERS.get(name)
    if spec is None:
        return None  # not ours (use_sim_time, ...)
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {list(spec.choices)}, got {value!r}"
    merged = {**current, name: value}
    if name in ("min_token_budget", "max_token_budget") and merged["min_token_budget"] > merged["max_token_budget"]:
        return (f"min_token_budget ({merged['min_token_budget']}) must not exceed max_token_budget "
                f"({merged['max_token_budget']})")
    if name == "instruction" and not str(value).strip():
        return "instruction must not be empty"
    return None
