"""Uploads decoded and preprocessed off the event loop, in two lanes, so that no upload's decoding holds
up another's (docs/service.md#limits).

A photo within the decoding limit can still be a decompression bomb: a 1 MB PNG of 134 megapixels at
16-bit RGBA takes seconds of one core to decode. The image's header says how many pixels it has before
anything is decoded, so each upload goes to a lane by that: ordinary photos (up to ``LARGE_IMAGE_PIXELS``)
to threads of their own, larger ones, and anything whose header Pillow cannot read, to one thread that
decodes one at a time. However many large images arrive, an ordinary photo waits for none of them, and
large ones use at most one core and one decoded image's memory between them.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from utils.engine.preprocess import decode_image_bytes, preprocess

logger = logging.getLogger(__name__)

# A 24-megapixel camera's photos (6000x4000) are ordinary; above this, an image decodes in the large lane.
LARGE_IMAGE_PIXELS = 25_000_000


@dataclass(frozen=True)
class Decoded:
    """An upload as the feature model takes it, and what that cost (milliseconds, as CaptionResult.timings)."""

    chw: np.ndarray
    timings: dict[str, float]


def header_pixels(data: bytes) -> int | None:
    """The pixels an image's header declares (nothing is decoded), or None where Pillow cannot tell."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return None
    return width * height


def decode(data: bytes, name: str) -> Decoded:
    """Decode and preprocess an upload as image mode does a file (CaptionError when it cannot be)."""
    t0 = time.perf_counter()
    image = decode_image_bytes(data, name)
    t1 = time.perf_counter()
    chw = preprocess(image)
    return Decoded(chw, {"read": 1e3 * (t1 - t0), "preprocess": 1e3 * (time.perf_counter() - t1)})


class DecodeLanes:
    """Two thread pools, and the choice between them (see the module docstring)."""

    def __init__(self, ordinary_threads: int) -> None:
        from PIL import Image

        # Pillow only reads headers here, and OpenCV applies the program's own pixel limit when decoding:
        # Pillow's warning about large images would be noise on stderr.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        self._ordinary = ThreadPoolExecutor(ordinary_threads, thread_name_prefix="decode")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="decode-large")

    def submit(self, data: bytes, work: Callable[[], None]) -> None:
        """Run ``work`` (which decodes ``data``) in the lane that ``data``'s header chooses. Even reading
        the header is kept off the caller's thread (the event loop)."""
        self._ordinary.submit(self._route, data, work)

    def _route(self, data: bytes, work: Callable[[], None]) -> None:
        pixels = header_pixels(data)
        if pixels is None or pixels > LARGE_IMAGE_PIXELS:
            logger.debug("an upload of %s pixels decodes in the large lane", pixels or "unknown")
            self._large.submit(work)
        else:
            work()

    def close(self) -> None:
        """Start no more decoding; what is waiting is dropped (its requests are answered by the caller)."""
        self._ordinary.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)
