"""The pruned prefill on tiny LLaVA and Qwen2-VL models: faithful to stock transformers where nothing is pruned,
exact kept counts, attention rows equal to eager attention, and a KV cache that decodes correctly."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from autoprune_ros.pruning.policies import (
    AutoPrune,
    Decision,
    FastV,
    LayerView,
    Need,
    NoPrune,
    PDrop,
    PruningPolicy,
    Rows,
)
from autoprune_ros.pruning.schedule import plan_token_counts
from autoprune_ros.vla import PruningSession, generate, prefill
from autoprune_ros.vla.families import detect_family

from tiny_vlms import tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl

FAMILIES = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl}


class RecordRows(PruningPolicy):
    """Asks for the instruction rows at every layer, keeps everything, remembers the rows."""

    name = "record"

    def begin(self, num_layers: int, num_visual: int) -> None:
        super().begin(num_layers, num_visual)
        self.rows: dict[int, torch.Tensor] = {}

    def wants(self, layer: int) -> Need:
        return Need(Rows.TEXT)

    def decide(self, view: LayerView) -> None:
        self.rows[view.layer] = view.visual_attention
        return None


class Replay(PruningPolicy):
    """Applies fixed keep sets, layer by layer (indices into the current visual tokens)."""

    name = "replay"

    def __init__(self, keeps: dict[int, torch.Tensor]):
        self.keeps = keeps

    def wants(self, layer: int) -> Need | None:
        return Need(Rows.LAST) if layer in self.keeps else None

    def decide(self, view: LayerView) -> Decision:
        return Decision(self.keeps[view.layer])


def _stock_logits(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs, use_cache=True, logits_to_keep=1).logits


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_noprune_and_hooks_that_prune_nothing_equal_stock_logits(family: str, attn: str) -> None:
    model, inputs = FAMILIES[family](attn=attn)
    stock = _stock_logits(model, inputs)
    assert torch.equal(prefill(model, inputs, NoPrune()).logits, stock)
    recorded = prefill(model, inputs, RecordRows())
    assert torch.equal(recorded.logits, stock), "hooks that keep every token must not change the logits"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rows_from_q_and_k_equal_eager_attention(family: str) -> None:
    model, inputs = FAMILIES[family](attn="eager")
    with torch.inference_mode():
        eager = model(**inputs, output_attentions=True, logits_to_keep=1).attentions
    policy = RecordRows()
    prefill(model, inputs, policy)
    ids = inputs["input_ids"][0]
    visual = (ids == detect_family(model).image_token_id).nonzero().flatten()
    text = torch.arange(int(visual[-1]) + 1, len(ids))
    assert len(policy.rows) == len(eager)
    for layer, attn in enumerate(eager):
        expected = attn[0][:, text][:, :, visual].float()
        torch.testing.assert_close(policy.rows[layer], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("family", "budget"), [("llava", 64), ("llava", 22), ("qwen2_vl", 12), ("qwen2_5_vl", 12)])
def test_autoprune_keeps_exactly_the_planned_counts(family: str, budget: int) -> None:
    model, inputs = FAMILIES[family]()
    result = prefill(model, inputs, AutoPrune(budget=budget))
    stats = result.stats
    layers = detect_family(model).num_layers
    assert stats.slope is not None and stats.slope >= 0
    assert stats.visual_tokens_per_layer == plan_token_counts(layers, stats.num_visual, budget, stats.slope)
    assert abs(stats.mean_visual_tokens - budget) <= 1.0
    other = stats.seq_lens[0] - stats.num_visual
    assert stats.seq_lens[1:] == [other + c for c in stats.visual_tokens_per_layer[:-1]]
    cache = result.past_key_values
    assert [cache.get_seq_length(i) for i in range(layers)] == stats.seq_lens
    assert stats.flops < stats.flops_unpruned
    assert torch.isfinite(result.logits).all()


def test_vision_cls_scores_equal_eager_clip_attention() -> None:
    """Layer 0's hybrid score uses the [CLS] row of the vision layer LLaVA takes its features from."""
    model, inputs = tiny_llava(attn="eager")
    family = detect_family(model)
    with torch.inference_mode(), PruningSession(model, RecordRows(), inputs["input_ids"]) as session:
        model(**inputs, logits_to_keep=1)
        vision = model.model.vision_tower(inputs["pixel_values"], output_attentions=True)
    layer = list(model.model.vision_tower.encoder.layers).index(
        next(m for m in model.model.vision_tower.encoder.layers if m.self_attn is family.vision_cls_attention))
    assert layer == len(vision.attentions) - 2  # vision_feature_layer = -2
    expected = vision.attentions[layer][0, :, 0, 1:].mean(dim=0)
    torch.testing.assert_close(session.cls_attention, expected, atol=1e-6, rtol=0)


def test_faithful_defaults() -> None:
    policy = AutoPrune(budget=64)
    assert (policy.x0, policy.k0, policy.gamma, policy.recycle) == (14.9, 0.4, 0.2, True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fastv_and_pdrop_keep_their_configured_counts(family: str) -> None:
    model, inputs = FAMILIES[family]()
    layers = detect_family(model).num_layers
    nv = prefill(model, inputs, NoPrune()).stats.num_visual
    fastv = prefill(model, inputs, FastV(layer=2, keep=nv // 4)).stats.visual_tokens_per_layer
    assert fastv == [nv] + [nv // 4] * (layers - 1)
    stages = (2, 4)
    pdrop = prefill(model, inputs, PDrop(stage_layers=stages, ratio=0.5)).stats.visual_tokens_per_layer
    assert pdrop == PDrop.counts(layers, nv, stages, 0.5)
    assert pdrop == [nv] + [nv // 2] * 2 + [nv // 4] * (layers - 3)


def test_baselines_configured_to_the_same_budget() -> None:
    for budget in (64, 128, 192):
        fastv = FastV.for_budget(budget, 32, 576)
        assert abs((576 + 31 * fastv.keep) / 32 - budget) <= 0.5
        pdrop = PDrop.for_budget(budget, 32, 576)
        assert abs(sum(PDrop.counts(32, 576, pdrop.stage_layers, pdrop.ratio)) / 32 - budget) <= 1.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_with_pruning_starts_with_the_pruned_prefill_token(family: str) -> None:
    model, inputs = FAMILIES[family]()
    budget = 22 if family == "llava" else 12
    first = prefill(model, inputs, AutoPrune(budget=budget)).logits[0, -1].argmax()
    ids, stats = generate(model, inputs, AutoPrune(budget=budget), max_new_tokens=4, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    assert ids.shape[1] == prompt + 4 and ids[0, prompt] == first
    assert stats.mean_visual_tokens == pytest.approx(budget, abs=1.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoding_on_the_pruned_cache_equals_prefilling_the_longer_prompt(family: str) -> None:
    """Same kept tokens, one more text token: decode step on the pruned cache == prefill of prompt + token."""
    model, inputs = FAMILIES[family]()
    nv = prefill(model, inputs, NoPrune()).stats.num_visual
    generator = torch.Generator().manual_seed(1)
    keeps = {0: torch.randperm(nv, generator=generator)[: nv // 2].sort().values,
             2: torch.arange(0, nv // 2, 3)}
    pruned = prefill(model, inputs, Replay(keeps))
    token = pruned.logits[0, -1].argmax().view(1, 1)
    longer = dict(inputs, input_ids=torch.cat([inputs["input_ids"], token], dim=1),
                  attention_mask=torch.ones(1, inputs["input_ids"].shape[1] + 1, dtype=torch.long))
    if "mm_token_type_ids" in inputs:
        longer["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token)], dim=1)
    reference = prefill(model, longer, Replay(keeps)).logits[0, -1]
    steps, _ = generate(model, inputs, Replay(keeps), max_new_tokens=2, do_sample=False, output_logits=True,
                        return_dict_in_generate=True)
    torch.testing.assert_close(steps.logits[1][0], reference, atol=1e-4, rtol=1e-4)


def test_clear_errors() -> None:
    model, inputs = tiny_llava(num_layers=2)
    batch = {key: value.repeat(2, *[1] * (value.ndim - 1)) for key, value in inputs.items()}
    with pytest.raises(ValueError, match="batch size 1"):
        prefill(model, batch, AutoPrune(budget=32))
    with pytest.raises(ValueError, match="above the visual-token count"):
        prefill(model, inputs, AutoPrune(budget=500))
    with pytest.raises(ValueError, match="negative|>= 0"):
        AutoPrune(budget=32, k0=-1.0)
    gpt2_like = SimpleNamespace(config=SimpleNamespace(model_type="gpt2", text_config=None))
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        detect_family(gpt2_like)
