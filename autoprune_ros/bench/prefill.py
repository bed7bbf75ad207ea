"""Prefill benchmark: NoPrune, AutoPrune, FastV and PDrop at equal budgets on a LLaVA shape with random weights.

Speedups are measured side by side in one run. The FLOPs-predicted speedup counts the decoder only (the
formula of `prefill_flops`), so it is compared with the measured decoder speedup: prefill time minus the vision
tower and projector time, which pruning does not change.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from autoprune_ros.cli import markdown_table, write_json
from autoprune_ros.pruning.policies import AutoPrune, FastV, NoPrune, PDrop, PruningPolicy
from autoprune_ros.vla.pruned_prefill import prefill

IMAGE_TOKEN = 3


def build_random_llava(shape: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """LlavaForConditionalGeneration with CLIP vision and Llama decoder of the given shape, random weights."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision, text = shape["vision"], shape["text"]
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text, max_position_embeddings=4096),
        image_token_index=IMAGE_TOKEN, vision_feature_layer=shape.get("feature_layer", -2),
        vision_feature_select_strategy="default",
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    model.set_attn_implementation("sdpa")
    return model.eval()


def bench_inputs(model, shape: dict, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """[pre-prompt | 576 image tokens | instruction] with random token ids and a random image."""
    vision = shape["vision"]
    num_visual = (vision["image_size"] // vision["patch_size"]) ** 2
    prompt = shape.get("prompt", {})
    generator = torch.Generator().manual_seed(seed)
    vocab = shape["text"]["vocab_size"]
    pre = torch.randint(10, vocab, (prompt.get("pre_tokens", 35),), generator=generator)
    text = torch.randint(10, vocab, (prompt.get("text_tokens", 40),), generator=generator)
    ids = torch.cat([pre, torch.full((num_visual,), IMAGE_TOKEN), text])[None].to(device)
    pixels = torch.randn(1, 3, vision["image_size"], vision["image_size"], generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(device, dtype)}


class Timer:
    """Milliseconds of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


def policies_for(budgets: list[int], num_layers: int, num_visual: int) -> list[tuple[str, int | None, PruningPolicy]]:
    runs: list[tuple[str, int | None, PruningPolicy]] = [("none", None, NoPrune())]
    for budget in budgets:
        runs += [("autoprune", budget, AutoPrune(budget=budget)),
                 ("fastv", budget, FastV.for_budget(budget, num_layers, num_visual)),
                 ("pdrop", budget, PDrop.for_budget(budget, num_layers, num_visual))]
    return runs


def run_prefill_bench(config: Path, device: str, dtype_name: str, budgets: list[int], reps: int, warmup: int,
                      output_dir: Path) -> int:
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("autoprune-bench prefill: --device cuda but torch sees no CUDA GPU; use --device cpu")
        return 2
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    shape = yaml.safe_load(config.read_text(encoding="utf-8"))
    model = build_random_llava(shape, device, dtype)
    inputs = bench_inputs(model, shape, device, dtype)
    num_layers = shape["text"]["num_hidden_layers"]
    num_visual = int((inputs["input_ids"] == IMAGE_TOKEN).sum())
    timer = Timer(device)
    rows = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs, logits_to_keep=1)
        vision_ms = statistics.median(
            timer(lambda: model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                        vision_feature_layer=shape.get("feature_layer", -2),
                                                        vision_feature_select_strategy="default"))
            for _ in range(reps))
    runs = policies_for(budgets, num_layers, num_visual)
    for name, budget, policy in tqdm(runs, desc="prefill runs", unit="run"):
        for _ in range(warmup):
            prefill(model, inputs, policy)
        times = [timer(lambda p=policy: prefill(model, inputs, p)) for _ in range(reps)]
        profiled = prefill(model, inputs, policy, profile=True).stats
        rows.append({"policy": name, "budget": budget, "median_ms": statistics.median(times), "min_ms": min(times),
                     "mean_visual_tokens": profiled.mean_visual_tokens, "flops_ratio": profiled.flops_ratio,
                     "overhead_ms": profiled.overhead_ms, "config": profiled.policy})
    base = rows[0]["median_ms"]
    for row in rows:
        predicted = 1.0 / row["flops_ratio"]
        decoder = (base - vision_ms) / max(row["median_ms"] - vision_ms, 1e-9)
        row.update(speedup=base / row["median_ms"], decoder_speedup=decoder, predicted_speedup=predicted,
                   speedup_vs_predicted=decoder / predicted, overhead_pct=100 * row["overhead_ms"] / row["median_ms"])
    report = {"config": str(config), "device": device, "dtype": dtype_name, "reps": reps,
              "torch_threads": torch.get_num_threads(), "num_visual": num_visual, "num_layers": num_layers,
              "vision_ms": vision_ms, "runs": rows}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    path = write_json(output_dir / "prefill.json", report)
    table = markdown_table(
        ["policy", "budget", "mean tokens", "median ms", "FLOPs %", "speedup", "decoder speedup", "predicted",
         "measured/predicted", "overhead %"],
        [[r["policy"], r["budget"] or num_visual, f"{r['mean_visual_tokens']:.1f}", f"{r['median_ms']:.1f}",
          f"{100 * r['flops_ratio']:.1f}", f"{r['speedup']:.2f}", f"{r['decoder_speedup']:.2f}",
          f"{r['predicted_speedup']:.2f}", f"{r['speedup_vs_predicted']:.2f}", f"{r['overhead_pct']:.1f}"]
         for r in rows])
    print(table)
    print(f"\n{config.name} on {report.get('gpu', device)} ({dtype_name}); vision tower + projector {vision_ms:.1f} ms "
          f"(not pruned, excluded from the decoder speedup); median of {reps}; results in {path}")
    return 0
