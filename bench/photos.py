"""Benchmark inputs: distinct 640x480 photos cut from the sample photo, the same in every script."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.preprocess import read_image

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "chelsea.png"


def sample_crops(count: int, width: int = 640, height: int = 480) -> list[np.ndarray]:
    """``count`` BGR crops at random zooms, so each photo gives other features (and captions)."""
    base = read_image(SAMPLE)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        scale = rng.uniform(1.0, 1.6) * 1.2
        big = cv2.resize(base, None, fx=scale * width / base.shape[1], fy=scale * height / base.shape[0])
        y, x = rng.integers(0, big.shape[0] - height), rng.integers(0, big.shape[1] - width)
        out.append(big[y : y + height, x : x + width])
    return out
