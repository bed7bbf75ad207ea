"""The pruning engine: pure torch, no ROS, no model library.

- `schedule`: AutoPrune's layer-0 keep, logistic retention curve and budget solve (`plan_token_counts`);
- `complexity`: pseudo mutual information of text->visual attention and the curve's slope;
- `selection`, `recycle`: token scores, order-keeping top-k, DPC-KNN token recycling;
- `flops`: prefill FLOPs accounting (`prefill_flops`);
- `policies`: NoPrune, AutoPrune, FastV, PDrop, driven layer by layer by a model adapter (autoprune_ros.vla);
- `config`: policies from YAML (config/policies/*.yaml).
"""
from autoprune_ros.pruning.policies import AutoPrune, FastV, NoPrune, PDrop, PruningPolicy

__all__ = ["AutoPrune", "FastV", "NoPrune", "PDrop", "PruningPolicy"]
