"""Pruning policies from YAML (config/policies/*.yaml) or dicts, validated with errors that name the fix."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from autoprune_ros.pruning.policies import AutoPrune, FastV, NoPrune, PDrop, PruningPolicy

# Allowed keys per policy; budget-based baselines are resolved once the model's shape is known.
KEYS = {
    "none": set(),
    "autoprune": {"budget", "x0", "k0", "gamma", "amplitude", "recycle", "seed"},
    "fastv": {"layer", "keep", "budget"},
    "pdrop": {"stage_layers", "ratio", "budget"},
}


def load_policy_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate a policy config (a YAML path or a mapping); returns a plain dict."""
    if isinstance(source, Mapping):
        data, origin = dict(source), "policy config"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"policy config {path} does not exist (see config/policies/ for examples)")
        data, origin = yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path)
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a mapping with a 'policy' key")
    name = data.get("policy")
    if name not in KEYS:
        raise ValueError(f"{origin}: unknown policy {name!r}; use one of {sorted(KEYS)}")
    unknown = set(data) - KEYS[name] - {"policy"}
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {sorted(unknown)} for policy {name!r}; allowed: "
                         f"{sorted(KEYS[name])}")
    for key, value in data.items():
        if key in ("budget", "x0", "k0", "gamma", "amplitude", "ratio") and not isinstance(value, (int, float)):
            raise ValueError(f"{origin}: {key} must be a number, got {value!r}")
        if key in ("budget", "ratio") and value <= 0:
            raise ValueError(f"{origin}: {key} must be positive, got {value}")
        if key in ("k0", "gamma") and value < 0:
            raise ValueError(f"{origin}: {key} must not be negative (a negative slope inverts the curve), got {value}")
    if name == "fastv" and ("keep" in data) == ("budget" in data):
        raise ValueError(f"{origin}: FastV needs exactly one of 'keep' or 'budget'")
    if name == "pdrop" and ("ratio" in data) == ("budget" in data):
        raise ValueError(f"{origin}: PDrop needs exactly one of 'ratio' or 'budget'")
    if name == "autoprune" and "budget" not in data:
        raise ValueError(f"{origin}: AutoPrune needs a 'budget' (average visual tokens per layer)")
    return data


def build_policy(config: str | Path | Mapping[str, Any], num_layers: int, num_visual: int,
                 budget: float | None = None) -> PruningPolicy:
    """A policy for a decoder of `num_layers` layers and `num_visual` visual tokens; `budget` overrides the
    config's (the latency governor sets it per frame)."""
    data = load_policy_config(config)
    name = data.pop("policy")
    if budget is not None and name != "none":
        data.pop("keep", None)
        data.pop("ratio", None)
        data["budget"] = budget
    if name == "none":
        return NoPrune()
    if "budget" in data and data["budget"] > num_visual:
        raise ValueError(f"budget {data['budget']} is above the visual-token count Nv={num_visual}")
    if name == "autoprune":
        return AutoPrune(**data)
    if name == "fastv":
        layer = data.get("layer", 2)
        return FastV.for_budget(data["budget"], num_layers, num_visual, layer) if "budget" in data else FastV(**data)
    stages = tuple(data["stage_layers"]) if "stage_layers" in data else None
    if "budget" in data:
        return PDrop.for_budget(data["budget"], num_layers, num_visual, stages)
    return PDrop(stage_layers=stages or PDrop.default_stages(num_layers), ratio=data["ratio"])
