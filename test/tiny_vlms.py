"""Tiny LLaVA and Qwen2-VL models built from config with seeded random weights, and inputs for them."""
from __future__ import annotations

import numpy as np
import torch

from autoprune_ros.paths import config_path
from autoprune_ros.runtime.synthetic_frames import road_frame
from autoprune_ros.vla.builder import build_tiny_vla, load_model_config

QWEN_IMAGE, QWEN_START, QWEN_END = 250, 252, 253


def tiny_llava(num_layers: int = 8, attn: str = "sdpa", seed: int = 0):
    """(model, inputs): the driving policy's LLaVA (CLIP with [CLS], 196 visual tokens) with `num_layers` decoder
    layers, and processor inputs for one synthetic road frame and an instruction."""
    cfg = load_model_config(config_path("models", "tiny_llava.yaml"))
    cfg["text"]["num_hidden_layers"] = num_layers
    policy = build_tiny_vla(cfg, seed=seed)
    model = policy.model
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    inputs = dict(policy.prepare_inputs([road_frame(5, 320, 240)], "turn left at the next intersection", 4.0))
    return model, inputs


def tiny_qwen2_vl(num_layers: int = 6, attn: str = "sdpa", seed: int = 0, grid: tuple[int, int, int] = (1, 12, 12),
                  variant: str = "qwen2_vl"):
    """(model, inputs): a Qwen2-VL (or, with variant="qwen2_5_vl", Qwen2.5-VL) with multimodal RoPE and
    (grid_h·grid_w)/4 visual tokens; inputs are built by hand because Qwen's processors need torchvision."""
    import transformers

    text = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if variant == "qwen2_vl":
        config_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **common)
    else:
        config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=56,
                      fullatt_block_indexes=[1], **common)
    cfg = config_cls(text_config=text, vision_config=vision, image_token_id=QWEN_IMAGE, video_token_id=251,
                     vision_start_token_id=QWEN_START, vision_end_token_id=QWEN_END)
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    thw = torch.tensor([grid])
    visual = int(thw.prod()) // 4
    rng = np.random.default_rng(seed)
    text = rng.integers(5, 240, size=12).tolist()
    ids = torch.tensor([[1, 5, 6, QWEN_START] + [QWEN_IMAGE] * visual + [QWEN_END] + text])
    pixels = torch.from_numpy(rng.standard_normal((int(thw.prod()), 3 * 2 * 14 * 14)).astype(np.float32))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
              "image_grid_thw": thw, "mm_token_type_ids": (ids == QWEN_IMAGE).long()}
    return model, inputs


def tiny_qwen2_5_vl(**kwargs):
    """Qwen2.5-VL: windowed vision attention, the same multimodal RoPE decoder."""
    return tiny_qwen2_vl(variant="qwen2_5_vl", **kwargs)
