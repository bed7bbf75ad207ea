"""A synthetic forward-camera road scene, for demos, tests and transport benchmarks (no simulator needed)."""
from __future__ import annotations

import numpy as np


def road_frame(seq: int, width: int = 640, height: int = 480, rate_hz: float = 10.0) -> np.ndarray:
    """An RGB uint8 frame of a straight road with dashed lane marks that move with `seq`, gently curving.

    Deterministic in (seq, width, height, rate_hz), so a receiver can regenerate and compare what it got.
    """
    if width < 8 or height < 8:
        raise ValueError(f"frame too small: {width}x{height}")
    t = seq / rate_hz
    horizon = height // 2
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:horizon] = (135, 180, 225)  # sky
    frame[horizon:] = (70, 110, 60)  # grass
    rows = np.arange(horizon, height)
    depth = (rows - horizon + 1) / (height - horizon)  # 0 at the horizon, 1 at the bottom
    centre = width / 2 + 0.15 * width * np.sin(0.3 * t) * (1 - depth) ** 2
    half = 0.05 * width + 0.45 * width * depth
    cols = np.arange(width)
    road = np.abs(cols[None, :] - centre[:, None]) < half[:, None]
    frame[horizon:][road] = (90, 90, 95)
    dash_phase = (1.0 / depth + 8.0 * t) % 2.0 < 1.0  # dashes scroll towards the camera
    for side in (-1.0, 0.0, 1.0):
        x = centre + side * 0.9 * half
        mark = np.abs(cols[None, :] - x[:, None]) < (1 + 4 * depth)[:, None]
        if side == 0.0:
            mark &= dash_phase[:, None]
        frame[horizon:][mark] = (235, 235, 235)
    return frame
