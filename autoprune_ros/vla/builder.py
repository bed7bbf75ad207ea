"""Build the tiny LLaVA driving policy from its YAML config, and save / load it (safetensors only, offline)."""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.activations import ACT2FN

from .action_head import ActionHead
from .controller import WaypointController
from .policy import VLAPolicy
from .route import WAYPOINT_FRAMES, route_feature_size
from .tokenizer import SPECIAL_TOKENS, build_tokenizer

CONFIG_FILE = "vla_config.yaml"
HEAD_FILE = "action_head.safetensors"

_REQUIRED = object()


@dataclass(frozen=True)
class _Key:
    """Type, default and bounds of one config entry."""

    kind: type
    default: Any = _REQUIRED
    positive: bool = False
    minimum: int | None = None
    choices: tuple[str, ...] = ()


def _pos(kind: type = int, default: Any = _REQUIRED) -> _Key:
    return _Key(kind, default, positive=True)


_SCHEMA: dict[str, _Key | dict[str, _Key]] = {
    "name": _Key(str, "tiny-llava-drive"),
    "seed": _Key(int, 0),
    "tokenizer": {"vocab_size": _Key(int, 512, minimum=256 + len(SPECIAL_TOKENS))},
    "vision": {
        "image_size": _pos(),
        "patch_size": _pos(),
        "hidden_size": _pos(),
        "intermediate_size": _pos(),
        "num_hidden_layers": _pos(),
        "num_attention_heads": _pos(),
        "feature_layer": _Key(int, -2),
        "feature_select_strategy": _Key(str, "default", choices=("default", "full")),
    },
    "projector": {"hidden_act": _Key(str, "gelu", choices=tuple(sorted(ACT2FN)))},
    "text": {
        "hidden_size": _pos(),
        "intermediate_size": _pos(),
        "num_hidden_layers": _pos(),
        "num_attention_heads": _pos(),
        "num_key_value_heads": _pos(),
        "max_position_embeddings": _pos(int, 2048),
        "rms_norm_eps": _pos(float, 1e-5),
        "rope_theta": _pos(float, 10000.0),
    },
    "prompt": {
        "template": _Key(str, VLAPolicy.DEFAULT_PROMPT_TEMPLATE),
        "max_instruction_chars": _pos(int, 200),
    },
    "action_head": {
        "num_waypoints": _pos(),
        "waypoint_dt": _pos(float, 0.5),
        "hidden_size": _pos(int, 256),
        "max_speed": _pos(float, 20.0),
        # Route points up to this far along the route are an input of the head (vla/route.py); None: no route.
        "route_lookahead_m": _Key(float, None, positive=True),
        "route_points": _pos(int, 1),  # that many route points, evenly spaced up to route_lookahead_m
        # ego: waypoints are (x, y) in the ego frame; route: (along, left of) the route (vla/route_frame.py).
        "waypoint_frame": _Key(str, "ego", choices=WAYPOINT_FRAMES),
    },
    # How the pruned prefill places the kept tokens: compact positions (renumbered 0..n-1, as the AutoPrune and
    # FastV authors run LLaVA) or the positions they had in the full prompt.
    "pruning": {"compact_positions": _Key(bool, True)},
    # Ranges are checked by WaypointController itself; defaults are its own.
    "controller": {f.name: _Key(float, f.default) for f in fields(WaypointController) if f.init},
}


def _check_value(key: str, spec: _Key, value: Any) -> Any:
    """`value` converted to `spec.kind`, or ValueError naming `key`; None is allowed where it is the default."""
    if value is None and spec.default is None:
        return None
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and spec.kind is not bool) or not isinstance(value, spec.kind):
        raise ValueError(f"'{key}' must be of type {spec.kind.__name__}, got {value!r}")
    if spec.kind is float and not math.isfinite(value):
        raise ValueError(f"'{key}' must be finite, got {value!r}")
    if spec.positive and value <= 0:
        raise ValueError(f"'{key}' must be > 0, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"'{key}' must be >= {spec.minimum}, got {value!r}")
    if spec.choices and value not in spec.choices:
        shown = spec.choices if len(spec.choices) <= 8 else (*spec.choices[:8], "...")
        raise ValueError(f"'{key}' must be one of {', '.join(shown)}; got {value!r}")
    return value


def _check_section(prefix: str, schema: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """Validate one mapping against `schema` (recursively), filling defaults; unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise ValueError(f"'{prefix.rstrip('.') or '<root>'}' must be a mapping, got {type(data).__name__}")
    unknown = [key for key in data if key not in schema]
    if unknown:
        raise ValueError(f"unknown key '{prefix}{unknown[0]}' (allowed here: {', '.join(schema)})")
    result: dict[str, Any] = {}
    for name, spec in schema.items():
        key = prefix + name
        if isinstance(spec, dict):
            result[name] = _check_section(key + ".", spec, data.get(name, {}))
        elif name in data:
            result[name] = _check_value(key, spec, data[name])
        elif spec.default is _REQUIRED:
            raise ValueError(f"missing required key '{key}'")
        else:
            result[name] = spec.default
    return result


def _check_consistency(cfg: dict[str, Any]) -> None:
    """Cross-key rules that the per-key schema cannot express."""
    vision, text = cfg["vision"], cfg["text"]
    divisible = (
        ("vision.image_size", vision["image_size"], "vision.patch_size", vision["patch_size"]),
        ("vision.hidden_size", vision["hidden_size"], "vision.num_attention_heads", vision["num_attention_heads"]),
        ("text.hidden_size", text["hidden_size"], "text.num_attention_heads", text["num_attention_heads"]),
        ("text.num_attention_heads", text["num_attention_heads"],
         "text.num_key_value_heads", text["num_key_value_heads"]),
    )
    for key, value, divisor_key, divisor in divisible:
        if value % divisor:
            raise ValueError(f"'{key}' ({value}) must be a multiple of '{divisor_key}' ({divisor})")
    layers = vision["num_hidden_layers"]
    if not -(layers + 1) <= vision["feature_layer"] <= layers:
        raise ValueError(
            f"'vision.feature_layer' ({vision['feature_layer']}) must index one of the {layers + 1} vision hidden "
            f"states: in [{-(layers + 1)}, {layers}]"
        )
    head = cfg["action_head"]
    if head["waypoint_frame"] == "route" and head["route_lookahead_m"] is None:
        raise ValueError("'action_head.waypoint_frame' route needs a route input: set 'action_head.route_lookahead_m'")
    VLAPolicy.check_prompt_template(cfg["prompt"]["template"])
    try:
        WaypointController(**cfg["controller"])
    except ValueError as exc:
        raise ValueError(f"'controller': {exc}") from None


def validate_model_config(data: Any, source: str = "model config") -> dict[str, Any]:
    """A validated, defaults-filled deep copy of a model config mapping; ValueError names the bad key."""
    try:
        cfg = _check_section("", _SCHEMA, copy.deepcopy(data))
        _check_consistency(cfg)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return cfg


def load_model_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a model config YAML file (see config/models/tiny_llava.yaml)."""
    path = Path(path)
    with path.open(encoding="utf-8") as stream:
        data = yaml.safe_load(stream)
    return validate_model_config(data, source=str(path))


def _resolve_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, str | Path):
        return load_model_config(config)
    return validate_model_config(config)


def _make_processor(cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> LlavaProcessor:
    """CLIP preprocessing of a whole frame to a square image plus the <image> expansion LLaVA expects."""
    vision = cfg["vision"]
    square = {"height": vision["image_size"], "width": vision["image_size"]}
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size=square, crop_size=square),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        num_additional_image_tokens=1,  # the CLIP [CLS] token
        vision_feature_select_strategy=vision["feature_select_strategy"],
    )


def _make_llava_config(cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> LlavaConfig:
    vision, text = cfg["vision"], cfg["text"]
    vision_config = CLIPVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text["num_key_value_heads"],
        max_position_embeddings=text["max_position_embeddings"],
        rms_norm_eps=text["rms_norm_eps"],
        rope_theta=text["rope_theta"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        image_seq_length=patches + (1 if vision["feature_select_strategy"] == "full" else 0),
        projector_hidden_act=cfg["projector"]["hidden_act"],
        vision_feature_layer=vision["feature_layer"],
        vision_feature_select_strategy=vision["feature_select_strategy"],
    )


def _make_head(cfg: Mapping[str, Any]) -> ActionHead:
    head = cfg["action_head"]
    route_size = 0 if head["route_lookahead_m"] is None else route_feature_size(head["route_points"])
    return ActionHead(cfg["text"]["hidden_size"], head["num_waypoints"], head["hidden_size"], route_size)


def _assemble(cfg: dict[str, Any], model: LlavaForConditionalGeneration, processor: LlavaProcessor,
              head: ActionHead, device: str | torch.device, dtype: torch.dtype) -> VLAPolicy:
    model.set_attn_implementation("sdpa")
    model.eval()
    head.eval()
    policy = VLAPolicy(model, processor, head, WaypointController(**cfg["controller"]), config=cfg)
    return policy.to(device, dtype)


def build_tiny_vla(config: Mapping[str, Any] | str | Path, seed: int | None = None, *,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VLAPolicy:
    """A VLAPolicy with random weights drawn deterministically from `seed` (default: the config's seed).

    `config` is a config mapping or a YAML path. The global torch RNG state is left as it was.
    """
    cfg = _resolve_config(config)
    if seed is not None:
        cfg["seed"] = _check_value("seed", _SCHEMA["seed"], seed)
    tokenizer = build_tokenizer(cfg["tokenizer"]["vocab_size"])
    processor = _make_processor(cfg, tokenizer)
    llava_config = _make_llava_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = LlavaForConditionalGeneration(llava_config)
        head = _make_head(cfg)
    return _assemble(cfg, model, processor, head, device, dtype)


def save_vla(policy: VLAPolicy, directory: str | Path) -> Path:
    """Write model (safetensors), processor and tokenizer, `action_head.safetensors` and the config YAML."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(directory)  # transformers 5 writes safetensors only
    policy.processor.save_pretrained(directory)
    head_state = {
        name: t.detach().to("cpu", torch.float32).contiguous() for name, t in policy.head.state_dict().items()
    }
    save_file(head_state, str(directory / HEAD_FILE))
    with (directory / CONFIG_FILE).open("w", encoding="utf-8") as stream:
        yaml.safe_dump(policy.config, stream, sort_keys=False)
    return directory


def load_vla(directory: str | Path, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> VLAPolicy:
    """Load a policy written by `save_vla` from local files only (works with HF_HUB_OFFLINE=1; no pickle)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / HEAD_FILE).is_file():
        raise ValueError(f"{directory} is not a saved VLA: expected {CONFIG_FILE} and {HEAD_FILE} in it")
    cfg = load_model_config(directory / CONFIG_FILE)
    model = LlavaForConditionalGeneration.from_pretrained(
        directory, local_files_only=True, use_safetensors=True, dtype=torch.float32, attn_implementation="sdpa"
    )
    processor = LlavaProcessor.from_pretrained(directory, local_files_only=True)
    if not isinstance(processor.image_processor, CLIPImageProcessorPil):
        # With torchvision installed transformers picks its torchvision backend; keep the PIL one the policy was
        # built with so that preprocessing (and so the action) is identical on every machine.
        processor.image_processor = CLIPImageProcessorPil.from_pretrained(directory, local_files_only=True)
    if processor.image_token_id != model.config.image_token_id:
        raise ValueError(
            f"{directory}: tokenizer <image> id {processor.image_token_id} does not match the model's "
            f"image_token_id {model.config.image_token_id}"
        )
    head = _make_head(cfg)
    head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    return _assemble(cfg, model, processor, head, device, dtype)
