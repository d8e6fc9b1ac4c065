"""Limits read by libraries when they load, kept apart so the command line can set them before any
heavy import (docs/limits.md)."""

from __future__ import annotations

import os

# The most pixels an image file may decode to: OpenCV refuses larger images after reading their
# header, before allocating anything. OpenCV reads the limit from this variable once, when it loads.
MAX_IMAGE_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
MAX_IMAGE_PIXELS = 2**27  # 134 megapixels: 400 MB as 8-bit BGR; larger than any camera's photos
OPENCV_DEFAULT_MAX_IMAGE_PIXELS = 2**30


def apply_decoding_limit() -> None:
    """Before OpenCV is imported: this program's limit, unless the user set one."""
    os.environ.setdefault(MAX_IMAGE_PIXELS_ENV, str(MAX_IMAGE_PIXELS))


def decoding_limit() -> int:
    """The limit OpenCV applies in this process (set here, by the user, or OpenCV's own)."""
    try:
        return int(os.environ.get(MAX_IMAGE_PIXELS_ENV, OPENCV_DEFAULT_MAX_IMAGE_PIXELS))
    except ValueError:
        return OPENCV_DEFAULT_MAX_IMAGE_PIXELS
