"""What the pruned prefill needs to know about each supported transformers VLM family.

- LLaVA (LlavaForConditionalGeneration with a Llama decoder): positions are compacted after every pruning step
  (0..n-1, as AutoPrune's authors do) and each layer decodes at its own cache length.
- Qwen2-VL / Qwen2.5-VL: multimodal RoPE gives every visual token a (time, row, column) position. Compacting
  would destroy that layout, so kept tokens keep their original positions, a merged token takes the position of
  its cluster centre, and decoding uses the stock positions (layer 0's full length plus the rope deltas), which
  then stay correct for every layer.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rotary
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb as qwen2_vl_rotary

SUPPORTED = ("llava", "qwen2_vl", "qwen2_5_vl")


@dataclass
class Family:
    name: str
    layers: nn.ModuleList  # decoder layers of the language model
    rotary_emb: nn.Module  # language model rotary embedding: (x, position_ids) -> (cos, sin)
    apply_rotary: Callable  # (q, k, cos, sin) -> (q, k), the family's own RoPE application
    image_token_id: int
    compact_positions: bool
    hidden_size: int
    intermediate_size: int
    vision_cls_attention: nn.Module | None = None  # vision attention module whose [CLS] row scores patches
    vision_keeps_cls: bool = False  # the 'full' feature strategy passes the [CLS] token to the decoder too

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def detect_family(model: nn.Module) -> Family:
    """Describe `model` for pruning, or raise ValueError naming the supported families."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    text = config.text_config
    if model_type == "llava":
        if getattr(text, "model_type", None) not in ("llama", "vicuna"):
            raise ValueError(f"LLaVA with a {text.model_type!r} decoder is not supported; use a Llama decoder")
        vision = model.model.vision_tower
        cls_attention = None
        if getattr(vision.config, "model_type", "") == "clip_vision_model":
            select = config.vision_feature_layer
            select = select[-1] if isinstance(select, (list, tuple)) else select
            layers = vision.encoder.layers
            index = select % (len(layers) + 1) - 1  # hidden_states[i] is the output of layer i-1
            cls_attention = layers[index].self_attn if index >= 0 else None
        return Family("llava", model.model.language_model.layers, model.model.language_model.rotary_emb,
                      llama_rotary, config.image_token_id, True, text.hidden_size, text.intermediate_size,
                      cls_attention, config.vision_feature_select_strategy == "full")
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return Family(model_type, model.model.language_model.layers, model.model.language_model.rotary_emb,
                      qwen2_vl_rotary, config.image_token_id, False, text.hidden_size, text.intermediate_size)
    raise ValueError(f"unknown model family {model_type!r}: pruning supports {', '.join(SUPPORTED)}")


def cls_patch_attention(q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float, keep_cls: bool) -> torch.Tensor:
    """Head-averaged attention of each image's [CLS] query over its tokens, from a vision layer's q/k projections
    (images, tokens, C); patch columns only unless the decoder also receives the [CLS] token. -> (images·V,)"""
    images, tokens, width = k.shape
    head_dim = width // num_heads
    q0 = q[:, 0].reshape(images, num_heads, 1, head_dim).float()
    keys = k.reshape(images, tokens, num_heads, head_dim).transpose(1, 2).float()
    probs = torch.softmax((q0 @ keys.transpose(-1, -2)) * scale, dim=-1).mean(dim=1)[:, 0]  # (images, tokens)
    return (probs if keep_cls else probs[:, 1:]).reshape(-1)
