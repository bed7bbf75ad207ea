"""Policy configurations as users write them on the command line (`none`, `<policy>:<tokens>`,
`<policy>:governed`), shared by the closed-loop evaluator and rosbag replay so both mean the same by a name.

`<policy>:<tokens>` holds the governor at that many visual tokens per layer (min = max token budget);
`<policy>:governed` lets the governor choose within the latency budget; `none` runs every visual token.
"""
from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("none", "autoprune", "fastv", "pdrop")
GOVERNED = "governed"


@dataclass(frozen=True)
class PolicyConfig:
    policy: str  # one of POLICIES
    tokens: int | None  # fixed visual tokens per layer; None for `none` and for governed configurations

    @property
    def governed(self) -> bool:
        return self.policy != "none" and self.tokens is None

    @property
    def name(self) -> str:
        if self.policy == "none":
            return "none"
        return f"{self.policy}:{GOVERNED if self.tokens is None else self.tokens}"


def parse_config(text: str) -> PolicyConfig:
    """`none`, `<policy>:<tokens>` or `<policy>:governed` -> PolicyConfig; ValueError naming the fix."""
    policy, _, budget = text.partition(":")
    if policy not in POLICIES or (policy == "none") != (budget == ""):
        raise ValueError(f"bad configuration {text!r}: use none, <policy>:<tokens> or <policy>:{GOVERNED} with "
                         f"policy in {POLICIES[1:]}")
    if policy == "none" or budget == GOVERNED:
        return PolicyConfig(policy, None)
    if not budget.isdigit() or int(budget) < 1:
        raise ValueError(f"bad token budget in {text!r}: a positive integer or '{GOVERNED}'")
    return PolicyConfig(policy, int(budget))


def node_params(config: str | PolicyConfig, latency_budget_ms: float, model: str = "tiny") -> dict:
    """The node parameters that run `config` (use_sim_time on, timeouts relaxed for simulation and replay)."""
    cfg = parse_config(config) if isinstance(config, str) else config
    params = {"pruning_policy": cfg.policy, "model": model, "use_sim_time": True, "camera_timeout_s": 60.0,
              "hard_deadline_ms": 60000.0, "latency_budget_ms": latency_budget_ms}
    if cfg.tokens is not None:
        params.update(min_token_budget=cfg.tokens, max_token_budget=cfg.tokens)
    return params
