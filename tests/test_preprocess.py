"""Preprocessing must equal the demo's arithmetic bit for bit (docs/models.md §3), for every image kind."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.reference import demo_preprocess, demo_read_rgb
from utils.engine.preprocess import as_bgr, preprocess, read_image
from utils.support.errors import CaptionError


@pytest.mark.parametrize("shape", [(480, 640), (3, 3), (300, 200), (479, 639), (1000, 1500), (4000, 6000)])
def test_matches_demo_bit_for_bit(shape: tuple[int, int]) -> None:
    bgr = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = demo_preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    got = preprocess(bgr)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, expected)


def test_width_rule() -> None:
    assert preprocess(np.zeros((100, 639, 3), np.uint8)).shape == (3, 100, 639)
    assert preprocess(np.zeros((100, 640, 3), np.uint8)).shape == (3, 100, 640)
    assert preprocess(np.zeros((3000, 1280, 3), np.uint8)).shape == (3, 1500, 640)
    # Sides under 3 px are enlarged: the ResNet-101 cannot take them (see test_tiny_images_*).
    assert preprocess(np.zeros((1, 5000, 3), np.uint8)).shape == (3, 3, 640)
    assert preprocess(np.zeros((1, 1, 3), np.uint8)).shape == (3, 3, 3)
    assert preprocess(np.zeros((2, 5, 3), np.uint8)).shape == (3, 3, 5)
    pixel = np.array([[[10, 20, 30]]], np.uint8)
    assert np.array_equal(preprocess(pixel), demo_preprocess(np.full((3, 3, 3), [30, 20, 10], np.uint8)))


@pytest.mark.parametrize("kind", ["grey", "bgr", "bgra"])
def test_files_read_as_demo(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    channels = {"grey": (), "bgr": (3,), "bgra": (4,)}[kind]
    pixels = rng.integers(0, 256, (50, 70, *channels), dtype=np.uint8)
    path = tmp_path / f"{kind}.png"
    cv2.imwrite(str(path), pixels)
    assert np.array_equal(preprocess(read_image(path)), demo_preprocess(demo_read_rgb(path)))


def test_sixteen_bit_scaled_to_eight(tmp_path: Path) -> None:
    eight = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), eight.astype(np.uint16) * 257)
    image = read_image(path)
    assert image.dtype == np.uint16
    assert np.array_equal(preprocess(image), preprocess(eight))


def test_float_and_grey_alpha_arrays() -> None:
    grey = np.random.default_rng(3).integers(0, 256, (20, 20), dtype=np.uint8)
    assert np.array_equal(as_bgr(grey), np.stack([grey] * 3, axis=2))
    assert np.array_equal(as_bgr(np.stack([grey, grey], axis=2)), np.stack([grey] * 3, axis=2))
    assert np.array_equal(as_bgr(grey.astype(np.float32) / 255.0), np.stack([grey] * 3, axis=2))


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF block (one Orientation tag) after the JPEG's SOI marker."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = 255  # left half white: after a 90° clockwise turn it is the top half
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(jpeg.tobytes(), 6))
    upright = read_image(path)
    assert upright.shape[:2] == (80, 40)
    assert upright[:30].mean() > 200 and upright[50:].mean() < 50


def test_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CaptionError, match="empty file"):
        read_image(empty)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    with pytest.raises(CaptionError, match="not an image"):
        read_image(corrupt)
    with pytest.raises(CaptionError, match="cannot read"):
        read_image(tmp_path / "missing.jpg")
