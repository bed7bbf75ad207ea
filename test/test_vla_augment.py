"""Training augmentation: a mirrored sample is the same road seen left-right swapped (image, lateral targets and the
instruction's sides), the mirror draw is reproducible and order-independent, the frame stride covers the data,
instruction-balanced weights and visual-token dropout do what they say."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune_ros.vla.augment import (
    Mirrored,
    drop_visual_tokens,
    instruction_weights,
    mirror_instruction,
    mirror_sample,
    stride_lengths,
    stride_subset,
)
from autoprune_ros.vla.dataset import Sample


def _sample(i: int = 0) -> Sample:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    waypoints = torch.tensor([[2.0, 0.5], [4.0, 1.5], [6.0, -0.25]])
    return Sample(image, "turn left at the next intersection", 5.0, 0.3, waypoints, 6.0)


@pytest.mark.parametrize(("text", "mirrored"), [
    ("turn left at the next intersection", "turn right at the next intersection"),
    ("Merge into the Right lane", "Merge into the Left lane"),
    ("LEFT or right", "RIGHT or left"),
    ("follow the lane", "follow the lane"),
    ("brightly lit, leftover cones", "brightly lit, leftover cones"),
])
def test_mirror_instruction_swaps_sides(text: str, mirrored: str) -> None:
    assert mirror_instruction(text) == mirrored
    assert mirror_instruction(mirrored) == text


def test_mirror_sample() -> None:
    image, text, speed, yaw_rate, waypoints, target, route, line = sample = _sample()
    m_image, m_text, m_speed, m_yaw_rate, m_waypoints, m_target, m_route, m_line = mirror_sample(sample)
    assert route is None is m_route and line is None is m_line
    assert m_image.flags["C_CONTIGUOUS"] and np.array_equal(m_image[:, 0], image[:, -1])
    assert np.array_equal(m_image[:, ::-1], image)
    assert torch.equal(m_waypoints[:, 0], waypoints[:, 0]) and torch.equal(m_waypoints[:, 1], -waypoints[:, 1])
    assert m_text == "turn right at the next intersection" and (m_speed, m_target) == (speed, target)
    assert m_yaw_rate == -yaw_rate  # a left turn seen in a mirror is a right turn
    assert waypoints[0, 1] == 0.5  # the original targets are untouched
    again = mirror_sample(mirror_sample(sample))
    assert np.array_equal(again.image, image) and torch.equal(again.waypoints, waypoints)
    assert (again.instruction, again.yaw_rate) == (text, yaw_rate)


def test_mirrored_dataset_is_reproducible_and_order_independent() -> None:
    data = [_sample(i) for i in range(400)]
    a, b = Mirrored(data, 0.5, seed=3), Mirrored(data, 0.5, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    forward = [a.mirrored(i) for i in range(len(data))]
    backward = [b.mirrored(i) for i in reversed(range(len(data)))][::-1]
    assert forward == backward
    assert 0.4 < np.mean(forward) < 0.6
    a.set_epoch(2)
    assert [a.mirrored(i) for i in range(len(data))] != forward
    for i in range(5):
        image = a[i][0]
        assert np.array_equal(image, data[i][0][:, ::-1] if a.mirrored(i) else data[i][0])
    never, always = Mirrored(data, 0.0, seed=3), Mirrored(data, 1.0, seed=3)
    assert not any(never.mirrored(i) for i in range(50)) and all(always.mirrored(i) for i in range(50))
    with pytest.raises(ValueError, match="mirror probability"):
        Mirrored(data, 1.5, seed=0)


def test_frame_stride_partitions_the_data_over_epochs() -> None:
    data = list(range(10))
    assert stride_subset(data, 1, 3) is data
    epochs = [list(stride_subset(data, 3, e)) for e in (1, 2, 3, 4)]
    assert epochs[0] == [0, 3, 6, 9] and epochs[1] == [1, 4, 7] and epochs[2] == [2, 5, 8]
    assert epochs[3] == epochs[0]
    assert sorted(sum(epochs[:3], [])) == data
    assert stride_lengths(10, 3, 4) == [4, 3, 3, 4] and stride_lengths(10, 1, 2) == [10, 10]
    with pytest.raises(ValueError, match="frame stride"):
        stride_subset(data, 0, 1)


def test_instruction_weights() -> None:
    texts = ["follow"] * 6 + ["turn"] * 2 + ["stop"]
    share = {alpha: {t: instruction_weights(texts, alpha)[np.array(texts) == t].sum() for t in set(texts)}
             for alpha in (0.0, 0.5, 1.0)}
    assert share[0.0] == pytest.approx({"follow": 6 / 9, "turn": 2 / 9, "stop": 1 / 9})
    assert share[1.0] == pytest.approx({"follow": 1 / 3, "turn": 1 / 3, "stop": 1 / 3})
    root = {"follow": 6 ** 0.5, "turn": 2 ** 0.5, "stop": 1.0}  # count * count ** -0.5
    assert share[0.5] == pytest.approx({t: v / sum(root.values()) for t, v in root.items()})
    assert instruction_weights([], 0.5).size == 0
    with pytest.raises(ValueError, match="balance"):
        instruction_weights(texts, 1.5)


def test_drop_visual_tokens() -> None:
    image = 7
    ids = torch.tensor([[1, 2] + [image] * 20 + [3, 4, 5, 0], [1, 2] + [image] * 20 + [3, 4, 5, 6]])
    mask = torch.ones_like(ids)
    mask[0, -1] = 0  # padding stays padding
    visual = ids == image

    def dropped(probability: float, keep_min: float, seed: int = 0) -> torch.Tensor:
        return drop_visual_tokens(ids, mask, image, probability, keep_min, torch.Generator().manual_seed(seed))

    assert torch.equal(dropped(0.0, 0.1), mask) and torch.equal(dropped(1.0, 1.0), mask)
    before = mask.clone()
    out = dropped(1.0, 0.5)
    assert torch.equal(out[~visual], mask[~visual]) and torch.equal(mask, before)  # text kept, input untouched
    kept = out[visual].view(2, 20).sum(dim=1)
    assert ((kept >= 10) & (kept <= 20)).all() and (kept < 20).any()
    assert torch.equal(out, dropped(1.0, 0.5)) and not torch.equal(out, dropped(1.0, 0.5, seed=1))
    assert (dropped(1.0, 0.01)[visual].view(2, 20).sum(dim=1) >= 1).all()
    hits = [int((dropped(0.5, 0.1, seed)[visual] == 0).any()) for seed in range(40)]
    assert 5 < sum(hits) < 40  # about half the batches have a sample hit
    for probability, keep_min in ((1.5, 0.5), (0.5, 0.0)):
        with pytest.raises(ValueError):
            dropped(probability, keep_min)
