"""CUDA paths: fp16/bf16 pruned prefill, FlashAttention when installed, CUDA-event timing. Skipped without a GPU
(CPU CI); run on a GPU machine with `pytest test/test_cuda.py`."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from autoprune_ros.bench.prefill import Timer
from autoprune_ros.pruning import AutoPrune, FastV, NoPrune
from autoprune_ros.pruning.schedule import plan_token_counts
from autoprune_ros.vla import generate, prefill

from tiny_vlms import tiny_llava, tiny_qwen2_vl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_cuda(model, inputs, dtype):
    model.to("cuda", dtype)
    moved = {k: v.to("cuda") for k, v in inputs.items()}
    if "pixel_values" in moved:
        moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return model, moved


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [tiny_llava, tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_pruned_prefill_in_half_precision(make, dtype) -> None:
    model, inputs = _on_cuda(*make(), dtype)
    with torch.inference_mode():
        stock = model(**inputs, use_cache=True, logits_to_keep=1).logits
    assert torch.equal(prefill(model, inputs, NoPrune()).logits, stock)
    budget = 22 if make is tiny_llava else 12
    result = prefill(model, inputs, AutoPrune(budget=budget))
    stats = result.stats
    assert stats.visual_tokens_per_layer == plan_token_counts(len(stats.seq_lens), stats.num_visual, budget,
                                                              stats.slope)
    assert torch.isfinite(result.logits.float()).all()
    ids, _ = generate(model, inputs, FastV(layer=2, keep=stats.num_visual // 4), max_new_tokens=3, do_sample=False)
    assert ids.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_flash_attention_keeps_planned_counts() -> None:
    model, inputs = _on_cuda(*tiny_llava(), torch.float16)
    model.set_attn_implementation("flash_attention_2")
    result = prefill(model, inputs, AutoPrune(budget=22))
    stats = result.stats
    assert stats.visual_tokens_per_layer == plan_token_counts(len(stats.seq_lens), stats.num_visual, 22, stats.slope)


def test_cuda_event_timer_measures_gpu_work() -> None:
    x = torch.randn(2048, 2048, device="cuda")
    assert Timer("cuda")(lambda: x @ x) > 0.0
