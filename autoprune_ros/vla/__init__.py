"""Vision-language-action driving policy: model building and loading, action head, controller, `VLAPolicy`,
and the pruned prefill (`prefill`, `generate`) for LLaVA and Qwen2-VL models.

Names are imported lazily, so `from autoprune_ros.vla.action import Action` (numpy only) does not pay for
importing torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Action": "action",
    "ActionHead": "action_head",
    "WaypointController": "controller",
    "PolicyOutput": "policy",
    "VLAPolicy": "policy",
    "build_tokenizer": "tokenizer",
    "build_tiny_vla": "builder",
    "load_model_config": "builder",
    "validate_model_config": "builder",
    "save_vla": "builder",
    "load_vla": "builder",
    "prefill": "pruned_prefill",
    "generate": "pruned_prefill",
    "PrefillResult": "pruned_prefill",
    "PrefillStats": "pruned_prefill",
    "PruningSession": "pruned_prefill",
}

__all__ = [
    "Action",
    "ActionHead",
    "PolicyOutput",
    "VLAPolicy",
    "WaypointController",
    "PrefillResult",
    "PrefillStats",
    "PruningSession",
    "build_tiny_vla",
    "build_tokenizer",
    "generate",
    "load_model_config",
    "load_vla",
    "prefill",
    "save_vla",
    "validate_model_config",
]

if TYPE_CHECKING:
    from .action import Action
    from .action_head import ActionHead
    from .builder import build_tiny_vla, load_model_config, load_vla, save_vla, validate_model_config
    from .controller import WaypointController
    from .policy import PolicyOutput, VLAPolicy
    from .pruned_prefill import PrefillResult, PrefillStats, PruningSession, generate, prefill
    from .tokenizer import build_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
