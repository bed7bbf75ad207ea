"""Pruned prefill for transformers VLMs, with SDPA/FlashAttention, KV cache and generation intact.

A `PruningSession` installs forward hooks on a model for the duration of a call:
- on the q/k projections of the layers where the policy needs attention rows: their outputs are kept, and only
  the requested rows (instruction tokens, or the last token) are computed from them with the layer's own RoPE
  and causal mask. The layers themselves keep their attention kernel: no eager attention, no full maps;
- after each decoder layer: the policy decides, and the layer's output is gathered to the kept tokens (plus
  recycled tokens) before the next layer;
- before each decoder layer: rotary cos/sin, position ids and an eager mask are cut to the shorter sequence;
  in decoding, layers whose cache is shorter than layer 0's get their own positions (LLaVA, compact positions).
Each layer's KV cache holds exactly the tokens it processed, so `model.generate` works inside a session.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from autoprune_ros.pruning.flops import prefill_flops
from autoprune_ros.pruning.policies import LayerView, Need, NoPrune, PruningPolicy, Rows
from autoprune_ros.vla.families import Family, cls_patch_attention, detect_family


@dataclass
class PrefillStats:
    visual_tokens_per_layer: list[int]  # visual tokens after pruning at each decoder layer
    seq_lens: list[int]  # tokens entering each decoder layer
    num_visual: int
    mutual_information: float | None
    slope: float | None
    flops: int
    flops_unpruned: int
    overhead_ms: float  # time spent scoring, deciding and gathering (synchronised on CUDA when profiling)
    policy: dict = field(default_factory=dict)

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.flops_unpruned if self.flops_unpruned else 1.0

    @property
    def mean_visual_tokens(self) -> float:
        return sum(self.visual_tokens_per_layer) / max(1, len(self.visual_tokens_per_layer))


@dataclass
class PrefillResult:
    logits: torch.Tensor
    past_key_values: object
    stats: PrefillStats


def _rotate_rows(family: Family, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on (1, H, R, d) queries at positions `rows` and (1, Hkv, n, d) keys, with the family's own function."""
    q_rot, _ = family.apply_rotary(q, q, cos[:, rows], sin[:, rows])
    _, k_rot = family.apply_rotary(k, k, cos, sin)
    return q_rot, k_rot


def attention_rows(family: Family, attn: nn.Module, q_rows: torch.Tensor, k_out: torch.Tensor,
                   position_embeddings: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Post-softmax causal attention probabilities (H, R, n) of the query positions `rows`, from a layer's q
    projection at those rows (1, R, H·d) and k projection (1, n, Hkv·d): the numbers eager attention returns."""
    n = k_out.shape[1]
    head_dim = attn.head_dim
    q = q_rows.view(1, len(rows), -1, head_dim).transpose(1, 2)
    k = k_out.view(1, n, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = _rotate_rows(family, q, k, cos, sin, rows)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2))[0] * attn.scaling
    future = torch.arange(n, device=rows.device)[None, :] > rows[:, None]
    return torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)


class PruningSession:
    """Context manager: while active, forward passes of `model` prune visual tokens with `policy` (batch 1)."""

    def __init__(self, model: nn.Module, policy: PruningPolicy, input_ids: torch.Tensor, *, profile: bool = False,
                 compact_positions: bool | None = None):
        """`compact_positions` overrides the family's default (LLaVA compacts, Qwen keeps M-RoPE positions)."""
        self.model, self.policy = model, policy
        self.family = detect_family(model)
        if compact_positions is not None:
            self.family = replace(self.family, compact_positions=compact_positions)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        self.active = not isinstance(policy, NoPrune)
        if self.active and input_ids.shape[0] != 1:
            raise ValueError(f"pruned prefill supports batch size 1 (got {input_ids.shape[0]}): the kept tokens "
                             "differ per sample; run samples one by one or use NoPrune()")
        ids = input_ids[0]
        visual = (ids == self.family.image_token_id).nonzero().flatten()
        if len(visual) == 0:
            raise ValueError("the prompt has no image tokens: nothing to prune (did the processor expand <image>?)")
        self.full_len = len(ids)
        self.num_text = self.full_len - 1 - int(visual[-1])
        if self.active and self.num_text < 1:
            raise ValueError("the prompt has no instruction tokens after the image: AutoPrune needs text rows")
        self.profile = profile
        self._hooks: list = []
        self._reset(visual)

    # ---- bookkeeping
    def _reset(self, visual: torch.Tensor) -> None:
        device = visual.device
        self.is_visual = torch.zeros(self.full_len, dtype=torch.bool, device=device)
        self.is_visual[visual] = True
        self.source = torch.arange(self.full_len, device=device)  # original index of each current token
        self.prefilled = False
        self.in_prefill = False
        self.seq_lens: list[int] = []
        self.counts: list[int] = []
        self.cls_attention: torch.Tensor | None = None
        self.pos_emb: tuple[torch.Tensor, torch.Tensor] | None = None
        self.captured: dict[int, dict[str, torch.Tensor]] = {}
        self.overhead = 0.0
        self.num_visual = len(visual)
        self.policy.begin(self.family.num_layers, self.num_visual)

    def _tic(self) -> float:
        if self.profile and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _toc(self, start: float) -> None:
        self.overhead += self._tic() - start

    # ---- hooks
    def __enter__(self) -> PruningSession:
        if not self.active:
            return self
        fam = self.family
        for index, layer in enumerate(fam.layers):
            self._hooks.append(layer.register_forward_pre_hook(self._make_pre_hook(index), with_kwargs=True))
            self._hooks.append(layer.register_forward_hook(self._make_post_hook(index)))
            need = self.policy.wants(index)
            if need is not None and not need.lookahead:
                for name in ("q_proj", "k_proj"):
                    proj = getattr(layer.self_attn, name)
                    self._hooks.append(proj.register_forward_hook(self._make_capture(index, name)))
        if fam.vision_cls_attention is not None:
            for name in ("q_proj", "k_proj"):
                proj = getattr(fam.vision_cls_attention, name)
                self._hooks.append(proj.register_forward_hook(self._make_capture(-1, name)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.captured.clear()

    def _make_capture(self, index: int, name: str):
        def capture(_module, _args, output):
            if self.in_prefill or (index == -1 and not self.prefilled):
                self.captured.setdefault(index, {})[name] = output
        return capture

    def _make_pre_hook(self, index: int):
        def pre_hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] > 1 and not self.prefilled:
                return self._enter_prefill_layer(index, hidden, args, kwargs)
            if hidden.shape[1] == 1 and self.prefilled:
                return self._enter_decode_layer(index, hidden, args, kwargs)
            return None
        return pre_hook

    def _enter_prefill_layer(self, index: int, hidden: torch.Tensor, args, kwargs):
        if index == 0:
            if hidden.shape[1] != self.full_len:
                raise ValueError(f"prefill of {hidden.shape[1]} tokens does not match the {self.full_len} input ids "
                                 "given to the session (a cached prefix is not supported with pruning)")
            self.in_prefill = True
            self._finish_vision_scores()
        n = hidden.shape[1]
        self.seq_lens.append(n)
        cos, sin = kwargs["position_embeddings"]
        if n != cos.shape[1]:
            start = self._tic()
            index_src = torch.arange(n, device=cos.device) if self.family.compact_positions else self.source
            kwargs["position_embeddings"] = (cos[:, index_src], sin[:, index_src])
            pos = kwargs.get("position_ids")
            if isinstance(pos, torch.Tensor) and pos.shape[-1] != n:
                kwargs["position_ids"] = pos[..., index_src]
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.ndim == 4:
                kwargs["attention_mask"] = mask[..., :n, :n]  # batch 1, no padding: the causal block
            self._toc(start)
        self.pos_emb = kwargs["position_embeddings"]
        return args, kwargs

    def _enter_decode_layer(self, index: int, hidden: torch.Tensor, args, kwargs):
        cache = kwargs.get("past_key_values")
        if cache is None:
            return None
        length = cache.get_seq_length(index)
        if length == cache.get_seq_length(0):
            return None
        if self.family.compact_positions:
            position = torch.tensor([[length]], device=hidden.device)
            kwargs["position_embeddings"] = self.family.rotary_emb(hidden, position_ids=position)
            if isinstance(kwargs.get("position_ids"), torch.Tensor):
                kwargs["position_ids"] = position
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 4:
            kwargs["attention_mask"] = mask[..., -(length + 1):]
        return args, kwargs

    def _finish_vision_scores(self) -> None:
        fam, cap = self.family, self.captured.pop(-1, None)
        if cap and "q_proj" in cap and "k_proj" in cap:
            attn = fam.vision_cls_attention
            scores = cls_patch_attention(cap["q_proj"], cap["k_proj"], attn.num_heads, attn.scale,
                                         fam.vision_keeps_cls)
            if scores.numel() == self.num_visual:
                self.cls_attention = scores

    def _make_post_hook(self, index: int):
        def post_hook(module, _args, output):
            if not self.in_prefill:
                return None
            start = self._tic()
            try:
                result = self._after_layer(index, module, output)
            finally:
                self.captured.pop(index, None)
                self._toc(start)
            if index == self.family.num_layers - 1:
                self.in_prefill, self.prefilled = False, True
            return result
        return post_hook

    def _rows(self, index: int, need: Need, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        n = hidden.shape[1]
        rows = (torch.arange(n - self.num_text, n, device=hidden.device) if need.rows is Rows.TEXT
                else torch.tensor([n - 1], device=hidden.device))
        if need.lookahead:  # PDrop: the next layer's norm and projections on this layer's output
            nxt = self.family.layers[index + 1]
            x = nxt.input_layernorm(hidden)
            attn = nxt.self_attn
            return attention_rows(self.family, attn, attn.q_proj(x[:, rows]), attn.k_proj(x), self.pos_emb, rows)
        cap = self.captured[index]
        return attention_rows(self.family, module.self_attn, cap["q_proj"][:, rows], cap["k_proj"], self.pos_emb,
                              rows)

    def _after_layer(self, index: int, module: nn.Module, hidden: torch.Tensor):
        visual_pos = self.is_visual.nonzero().flatten()
        need = self.policy.wants(index)
        if need is None:
            self.counts.append(self.policy.planned_count(index, len(visual_pos)))
            return None
        probs = self._rows(index, need, module, hidden)
        # The scores only pick tokens (discrete, no gradient); the kept and merged hidden states keep theirs.
        cls = self.cls_attention if index == 0 else None
        view = LayerView(index, self.family.num_layers, probs[..., visual_pos].detach(), hidden[0, visual_pos],
                         None if cls is None else cls.detach())
        decision = self.policy.decide(view)
        if decision is None:
            self.counts.append(len(visual_pos))
            return None
        self.counts.append(decision.count)
        keep_mask = ~self.is_visual.clone()
        keep_mask[visual_pos[decision.keep]] = True
        new_hidden, new_source, new_visual = hidden[:, keep_mask], self.source[keep_mask], self.is_visual[keep_mask]
        if decision.merged is not None and len(decision.merged):
            cut = new_hidden.shape[1] - self.num_text  # merged tokens go after the visual block, before the text
            merged = decision.merged.to(hidden.dtype)[None]
            sources = self.source[visual_pos[decision.merged_sources]]
            new_hidden = torch.cat([new_hidden[:, :cut], merged, new_hidden[:, cut:]], dim=1)
            new_source = torch.cat([new_source[:cut], sources, new_source[cut:]])
            ones = torch.ones(len(sources), dtype=torch.bool, device=hidden.device)
            new_visual = torch.cat([new_visual[:cut], ones, new_visual[cut:]])
        self.source, self.is_visual = new_source, new_visual
        return new_hidden

    # ---- results
    def stats(self) -> PrefillStats:
        fam = self.family
        layers = fam.num_layers
        seq_lens = self.seq_lens if self.active else [self.full_len] * layers
        counts = self.counts if self.active else [self.num_visual] * layers
        extra = getattr(self.policy, "stats", {})
        return PrefillStats(
            visual_tokens_per_layer=list(counts), seq_lens=list(seq_lens), num_visual=self.num_visual,
            mutual_information=extra.get("mutual_information"), slope=extra.get("slope"),
            flops=prefill_flops(seq_lens, fam.hidden_size, fam.intermediate_size),
            flops_unpruned=prefill_flops([self.full_len] * layers, fam.hidden_size, fam.intermediate_size),
            overhead_ms=self.overhead * 1e3, policy=self.policy.describe())


def prefill(model: nn.Module, inputs: dict, policy: PruningPolicy | None = None, *, logits_to_keep: int = 1,
            profile: bool = False) -> PrefillResult:
    """Run the prompt through `model` with `policy` (default NoPrune) and return logits, the per-layer KV cache and
    statistics. `inputs` is what the model's processor returns (input_ids, pixel_values, ...)."""
    policy = policy or NoPrune()
    with torch.inference_mode(), PruningSession(model, policy, inputs["input_ids"], profile=profile) as session:
        out = model(**inputs, use_cache=True, logits_to_keep=logits_to_keep)
    return PrefillResult(out.logits, out.past_key_values, session.stats())


def generate(model: nn.Module, inputs: dict, policy: PruningPolicy | None = None, **generate_kwargs):
    """`model.generate` with the prefill pruned by `policy`; returns (generated ids, PrefillStats)."""
    policy = policy or NoPrune()
    with torch.inference_mode(), PruningSession(model, policy, inputs["input_ids"]) as session:
        ids = model.generate(**inputs, **generate_kwargs)
    return ids, session.stats()

