"""Pseudo-MI, slope, scoring/selection, DPC-KNN recycling and FLOPs follow the reference (§4, §5, §6, §10)."""
from __future__ import annotations

import math

import pytest
import torch

from autoprune_ros.pruning.complexity import layer0_mi, layer1_mi, pseudo_mutual_information, slope_from_mi
from autoprune_ros.pruning.flops import layer_flops, prefill_flops, sequence_lengths, visual_counts_entering
from autoprune_ros.pruning.recycle import recycle_tokens
from autoprune_ros.pruning.schedule import recycle_sizes, recycled_count
from autoprune_ros.pruning.selection import (
    layer0_scores,
    rank_descending,
    split_kept_pruned,
    text_relevance,
    top_k_in_order,
)

# ---- pseudo mutual information (reference §4.3) -----------------------------------------------------------------


def test_mi_hand_computed() -> None:
    # H=1, Tx=2, V=2, rows not renormalised (row 1 puts 0.8 of its mass on the visual columns, row 2 only 0.2):
    #   a = [[0.6, 0.2], [0.0, 0.2]]  ->  p(t,v) = a/2 = [[0.3, 0.1], [0.0, 0.1]],  p(v) = [0.3, 0.2]
    #   p(v)/Tx = [0.15, 0.1];  ratios p(t,v)/(p(v)/Tx + 1e-6) = [[2 - ~1e-5, 1 - ~1e-5], [0 -> clamp 1e-6, ...]]
    #   MI = 0.3*log2(2) + 0.1*log2(1) + 0*log2(1e-6) + 0.1*log2(1) = 0.3 bits (minus the eps terms below).
    attn = torch.tensor([[[0.6, 0.2], [0.0, 0.2]]])
    expected = 0.3 * math.log2(0.3 / 0.150001) + 2 * 0.1 * math.log2(0.1 / 0.100001)
    mi = pseudo_mutual_information(attn)
    assert mi.shape == (1,) and mi.dtype == torch.float32
    assert mi.item() == pytest.approx(expected, abs=1e-6)
    assert mi.item() == pytest.approx(0.3, abs=1e-4)
    assert layer0_mi(attn) == pytest.approx(expected / 2, abs=1e-6)  # divided by Tx at layer 0
    assert layer1_mi(attn) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("tx", "v", "mass"), [(1, 1, 1.0), (7, 576, 0.4), (40, 160, 0.9)])
def test_mi_uniform_attention_is_zero(tx: int, v: int, mass: float) -> None:
    # a = mass/V everywhere: p(t,v) = p(v)/Tx, so every ratio is p/(p + 1e-6) ~ 1 and MI ~ 0 (slightly negative).
    attn = torch.full((2, tx, v), mass / v)
    p = mass / (v * tx)
    expected = mass * math.log2(p / (p + 1e-6))
    mi = pseudo_mutual_information(attn)
    assert mi.tolist() == pytest.approx([expected, expected], abs=1e-5)
    assert abs(expected) < 0.01


def test_mi_one_to_one_attention_is_log2_n() -> None:
    # Each of n text rows attends to its own visual token: p(t,v) = 1/n on the diagonal, p(v)/Tx = 1/n^2 -> log2 n.
    n = 4
    mi = pseudo_mutual_information(torch.eye(n)[None]).item()
    assert mi == pytest.approx(2 * math.log2(0.25 / (0.0625 + 1e-6)) / 2, abs=1e-5)
    assert mi == pytest.approx(math.log2(n), abs=1e-4)


def test_mi_per_head_and_sums() -> None:
    heads = torch.stack([torch.eye(4), torch.full((4, 4), 0.25)])
    mi = pseudo_mutual_information(heads)
    assert mi[0].item() == pytest.approx(2.0, abs=1e-4) and abs(mi[1].item()) < 1e-4
    assert layer1_mi(heads) == pytest.approx(mi.sum().item())
    assert layer0_mi(heads) == pytest.approx(mi.sum().item() / 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_mi_is_computed_in_fp32(dtype: torch.dtype) -> None:
    attn = torch.softmax(torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.7
    low = attn.to(dtype)
    mi = pseudo_mutual_information(low)
    assert mi.dtype == torch.float32
    torch.testing.assert_close(mi, pseudo_mutual_information(low.to(torch.float32)), rtol=0, atol=0)


def test_mi_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="heads, text, visual"):
        pseudo_mutual_information(torch.rand(4, 4))
    with pytest.raises(ValueError, match="no text rows"):
        pseudo_mutual_information(torch.rand(2, 0, 4))
    assert pseudo_mutual_information(torch.rand(2, 3, 0)).tolist() == [0.0, 0.0]  # no visual tokens left


def test_slope_from_mi() -> None:
    assert slope_from_mi(0.0) == 0.4
    assert slope_from_mi(1.0) == pytest.approx(0.2)
    assert slope_from_mi(2.0) == 0.0 and slope_from_mi(7.5) == 0.0  # saturates once MI1 >= k0/gamma = 2
    assert slope_from_mi(1.0, k0=1.0, gamma=0.5) == 0.5
    with pytest.raises(ValueError, match="finite"):
        slope_from_mi(math.nan)


# ---- scores and selection (reference §4.5-4.7, §6.2-6.3) -----------------------------------------------------------


def test_text_relevance_and_layer0_scores() -> None:
    attn = torch.tensor([[[0.1, 0.3, 0.0], [0.3, 0.1, 0.2]], [[0.2, 0.2, 0.2], [0.0, 0.0, 0.6]]], dtype=torch.float16)
    relevance = text_relevance(attn)
    assert relevance.dtype == torch.float32
    torch.testing.assert_close(relevance, torch.tensor([0.15, 0.15, 0.25]), atol=1e-3, rtol=0)
    cls = torch.tensor([0.5, 0.0, 0.1])
    torch.testing.assert_close(layer0_scores(cls, attn, mi0=2.0), cls + 0.6 * relevance)
    torch.testing.assert_close(layer0_scores(None, attn, mi0=2.0), 0.6 * relevance)
    torch.testing.assert_close(layer0_scores(None, attn, mi0=2.0, text_weight=1.0), 2.0 * relevance)
    with pytest.raises(ValueError, match="one value per visual token"):
        layer0_scores(torch.zeros(4), attn, mi0=1.0)
    with pytest.raises(ValueError, match="heads, text, visual"):
        text_relevance(torch.zeros(3, 3))


def test_top_k_in_order() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0, 0.5])
    assert top_k_in_order(scores, 3).tolist() == [1, 2, 3]  # tie 0.5 at 2 and 5: lower index wins
    assert top_k_in_order(scores, 0).tolist() == [] and top_k_in_order(scores, -2).tolist() == []
    assert top_k_in_order(scores, 99).tolist() == list(range(6))
    assert top_k_in_order(torch.tensor([float("nan"), 1.0, -5.0]), 2).tolist() == [1, 2]  # NaN ranks last
    assert top_k_in_order(scores, 3).dtype == torch.long


def test_split_kept_pruned() -> None:
    scores = torch.tensor([0.3, 0.7, 0.1, 0.7, 0.2, 0.9], dtype=torch.float16)
    kept, pruned = split_kept_pruned(scores, 3)
    assert kept.tolist() == [1, 3, 5]
    assert pruned.tolist() == [0, 4, 2]  # best to worst
    kept, pruned = split_kept_pruned(scores, 4)
    assert kept.tolist() == [0, 1, 3, 5] and pruned.tolist() == [4, 2]
    assert rank_descending(scores).tolist() == [5, 1, 3, 0, 4, 2]


def test_selection_is_a_partition() -> None:
    scores = torch.rand(200, generator=torch.Generator().manual_seed(3))
    for k in (0, 1, 50, 199, 200):
        kept, pruned = split_kept_pruned(scores, k)
        assert sorted(kept.tolist() + pruned.tolist()) == list(range(200)) and len(kept) == k
        if 0 < k < 200:
            assert scores[kept].min() >= scores[pruned].max()
            assert torch.all(scores[pruned][:-1] >= scores[pruned][1:])


# ---- recycling (reference §6.4) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [*range(0, 70), 129, 416, 575, 1000])
def test_recycle_counts_match_schedule(d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    hidden, scores = torch.randn(d, 6, generator=gen), torch.rand(d, generator=gen)
    merged, centres = recycle_tokens(hidden, scores, generator=gen)
    m, c = recycle_sizes(d)
    assert merged.shape == (recycled_count(d), 6) and centres.shape == (c,)
    assert c == (0 if d == 0 else min(m // 10 + 1, m)) and m == (0 if d == 0 else int(0.3 * d) + 1)
    # Centres are distinct rows among the top-m pruned tokens by score, listed by ascending row.
    top_m = set(torch.sort(scores, descending=True).indices[:m].tolist())
    assert set(centres.tolist()) <= top_m and len(set(centres.tolist())) == c
    assert centres.tolist() == sorted(centres.tolist())


def test_two_blobs_merge_into_their_means() -> None:
    # d = 30 pruned tokens -> m = 10 recycled -> c = 2 clusters. The 10 best-scored tokens form two tight, far-apart
    # blobs (5 each); the other 20 score lower and are ignored even though they sit elsewhere.
    gen = torch.Generator().manual_seed(0)
    channels = 16
    centre_a, centre_b = torch.zeros(channels), torch.full((channels,), 10.0)
    blob_a = centre_a + 0.01 * torch.randn(5, channels, generator=gen)
    blob_b = centre_b + 0.01 * torch.randn(5, channels, generator=gen)
    others = 100 + torch.randn(20, channels, generator=gen)
    hidden = torch.cat([others[:7], blob_b, others[7:12], blob_a, others[12:]])  # blob_b rows 7-11, blob_a 17-21
    scores = torch.cat([torch.full((7,), 0.1), torch.full((5,), 0.9), torch.full((5,), 0.1), torch.full((5,), 0.8),
                        torch.full((8,), 0.1)])
    merged, centres = recycle_tokens(hidden, scores, generator=torch.Generator().manual_seed(0))
    assert merged.shape == (2, channels)
    assert 7 <= centres[0] <= 11 and 17 <= centres[1] <= 21  # ordered by row: blob_b's centre first
    torch.testing.assert_close(merged[0], blob_b.mean(0))
    torch.testing.assert_close(merged[1], blob_a.mean(0))
    merged_rank, centres_rank = recycle_tokens(hidden, scores, generator=torch.Generator().manual_seed(0),
                                               order="rank")
    assert sorted(centres_rank.tolist()) == centres.tolist()  # same noise, same centres, other order
    assert torch.equal(merged_rank[torch.argsort(centres_rank)], merged)


def test_merged_tokens_are_nearest_centre_means() -> None:
    gen = torch.Generator().manual_seed(5)
    hidden, scores = torch.randn(300, 8, generator=gen), torch.rand(300, generator=gen)
    merged, centres = recycle_tokens(hidden, scores, generator=torch.Generator().manual_seed(1))
    m, c = recycle_sizes(300)
    chosen = torch.sort(scores, descending=True, stable=True).indices[:m]
    assert set(centres.tolist()) <= set(chosen.tolist()) and len(centres) == c == 10
    points = hidden[chosen]
    assignment = torch.cdist(points, hidden[centres]).argmin(dim=1)
    for j, centre in enumerate(centres.tolist()):
        assignment[chosen == centre] = j
    expected = torch.stack([points[assignment == j].mean(0) for j in range(c)])
    torch.testing.assert_close(merged, expected)


def test_recycle_is_deterministic_with_a_seed() -> None:
    gen = torch.Generator().manual_seed(11)
    hidden, scores = torch.randn(500, 32, generator=gen), torch.rand(500, generator=gen)
    first = recycle_tokens(hidden, scores, generator=torch.Generator().manual_seed(42))
    second = recycle_tokens(hidden, scores, generator=torch.Generator().manual_seed(42))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_recycle_preserves_dtype(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(64, 12, generator=gen).to(dtype)
    merged, centres = recycle_tokens(hidden, torch.rand(64, generator=gen).to(dtype), generator=gen)
    assert merged.dtype == dtype and centres.dtype == torch.long and merged.shape == (3, 12)


def test_recycle_single_cluster_cases() -> None:
    hidden = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    merged, centres = recycle_tokens(hidden[:1], torch.tensor([0.3]))  # d = 1: m = c = 1
    assert torch.equal(merged, hidden[:1]) and centres.tolist() == [0]
    merged, centres = recycle_tokens(hidden, torch.tensor([0.1, 0.5, 0.2]))  # d = 3: m = 1, only the best
    assert torch.equal(merged, hidden[1:2]) and centres.tolist() == [1]
    # d = 10: m = 4, c = 1 -> the mean of the four best tokens.
    big = torch.arange(20.0).reshape(10, 2)
    merged, centres = recycle_tokens(big, torch.arange(10.0))
    torch.testing.assert_close(merged, big[6:].mean(0, keepdim=True))
    assert 6 <= centres.item() <= 9


def test_recycle_validates() -> None:
    with pytest.raises(ValueError, match="pruned tokens, channels"):
        recycle_tokens(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="scores has shape"):
        recycle_tokens(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="fraction"):
        recycle_tokens(torch.zeros(3, 2), torch.zeros(3), fraction=1.5)


# ---- FLOPs (reference §10) ---------------------------------------------------------------------------------------


def test_layer_flops_by_hand() -> None:
    # n=2, d=3, m=5: 4*2*9 + 2*4*3 + 3*2*3*5 = 72 + 24 + 90
    assert layer_flops(2, 3, 5) == 186
    assert prefill_flops([2, 1, 0], 3, 5) == 186 + (36 + 6 + 45)


def test_unpruned_llava_7b() -> None:
    flops = prefill_flops([664] * 32, 4096, 11008)
    assert isinstance(flops, int) and round(flops / 1e12, 2) == 4.42


def test_flops_use_python_ints() -> None:
    n, d, m = 10**7, 8192, 28672
    assert prefill_flops([n] * 80, d, m) == 80 * (4 * n * d * d + 2 * n * n * d + 3 * n * d * m)


def test_sequence_lengths() -> None:
    entering = visual_counts_entering(576, [160, 126, 100])
    assert entering == [576, 160, 126]
    assert sequence_lengths(35, 40, entering) == [651, 235, 201]
    assert visual_counts_entering(576, []) == []
    with pytest.raises(ValueError, match="non-negative"):
        sequence_lengths(-1, 40, entering)
    with pytest.raises(ValueError, match="non-negative"):
        prefill_flops([10, -1], 4096, 11008)
