"""Benchmark inputs: distinct 640x480 photos cut from the sample photo, the same in every script."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.engine.preprocess import read_image

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


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` of those crops as 640x480 JPEGs in ``folder`` (created if needed), so that reading them
    costs what reading a real photo costs; no metadata, so none has a description."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, photo in enumerate(sample_crops(count)):
        path = folder / f"photo_{i:03d}.jpg"
        cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths
