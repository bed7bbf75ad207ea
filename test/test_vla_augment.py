"""Training augmentation: a mirrored sample is the same road seen left-right swapped (image, lateral targets and the
instruction's sides), the mirror draw is reproducible and order-independent, and the frame stride covers the data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune_ros.vla.augment import Mirrored, mirror_instruction, mirror_sample, stride_lengths, stride_subset


def _sample(i: int = 0) -> tuple:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    waypoints = torch.tensor([[2.0, 0.5], [4.0, 1.5], [6.0, -0.25]])
    return image, "turn left at the next intersection", 5.0, waypoints, 6.0


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
    image, text, speed, waypoints, target = sample = _sample()
    m_image, m_text, m_speed, m_waypoints, m_target = mirror_sample(sample)
    assert m_image.flags["C_CONTIGUOUS"] and np.array_equal(m_image[:, 0], image[:, -1])
    assert np.array_equal(m_image[:, ::-1], image)
    assert torch.equal(m_waypoints[:, 0], waypoints[:, 0]) and torch.equal(m_waypoints[:, 1], -waypoints[:, 1])
    assert m_text == "turn right at the next intersection" and (m_speed, m_target) == (speed, target)
    assert waypoints[0, 1] == 0.5  # the original targets are untouched
    again = mirror_sample(mirror_sample(sample))
    assert np.array_equal(again[0], image) and torch.equal(again[3], waypoints) and again[1] == text


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
