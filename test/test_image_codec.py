"""Image messages decode for every supported encoding and malformed ones are rejected with a reason."""
from __future__ import annotations

import numpy as np
import pytest

from autoprune_ros.ros.image_codec import CHANNELS, ImageDecodeError, from_image_msg, to_image_msg
from autoprune_ros.runtime.synthetic_frames import road_frame

RGB = road_frame(3, 64, 48)


@pytest.mark.parametrize("encoding", sorted(CHANNELS))
def test_round_trip(encoding: str) -> None:
    decoded = from_image_msg(to_image_msg(RGB, encoding))
    assert decoded.shape == RGB.shape and decoded.dtype == np.uint8
    if encoding == "mono8":
        assert np.all(decoded[..., 0] == decoded[..., 1])
    else:
        np.testing.assert_array_equal(decoded, RGB)


def test_padded_rows_are_honoured() -> None:
    msg = to_image_msg(RGB, "rgb8")
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 64 * 3)
    msg.data = np.hstack([rows, np.zeros((48, 8), np.uint8)]).tobytes()
    msg.step = 64 * 3 + 8
    np.testing.assert_array_equal(from_image_msg(msg), RGB)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding"),
    (lambda m: setattr(m, "step", m.step - 1), "shorter than a row"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-10]), "truncated"),
    (lambda m: (setattr(m, "width", 0), setattr(m, "height", 0)), "empty image"),
])
def test_malformed_is_rejected_with_a_reason(mutate, reason: str) -> None:
    msg = to_image_msg(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageDecodeError, match=reason):
        from_image_msg(msg)
