"""Image reading and the exact preprocessing the feature model was used with (docs/models.md §3)."""

from __future__ import annotations

import io
import math
import os
import stat
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from utils.engine.limits import decoding_limit
from utils.support.errors import CaptionError

INPUT_WIDTH = 640
# The most pixels the feature model is given. The demo's rule only narrows images wider than 640 px, so
# a tall narrow one (600 x 40000) reached the model whole and took gigabytes; past this bound an image
# is shrunk further, keeping its shape. Every photo of ordinary proportions (640 wide and up to ~3200
# tall after the demo's rule) is untouched, so its input stays exactly the demo's.
MAX_MODEL_PIXELS = 2**21
# The ResNet-101's 7x7/2 stem and un-padded ceil-mode max-pool leave nothing of an input with a
# side under 3 px, and ONNX Runtime then fails or even dies (SIGFPE); such images are enlarged.
MIN_SIDE = 3
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_BAND_ROWS = 256

# A file larger than an image within the decoding limit can be is refused by its size, before it is read
# (a 40 GB sparse file, a disk image named .jpg): no layout OpenCV decodes takes more than 16-bit RGBA.
MAX_BYTES_PER_PIXEL = 8
METADATA_ROOM_BYTES = 64 << 20
# A file over this size must start like an image before it is read whole, so a large non-image costs a
# few bytes of reading instead of its size in memory. Smaller files go straight to OpenCV, which knows
# more formats than the list below and says itself what it cannot decode.
SIGNATURE_CHECK_BYTES = 16 << 20
SIGNATURE_BYTES = 16
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",  # TIFF, BigTIFF
    b"GIF87a", b"GIF89a",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ",  # JPEG 2000: file, codestream
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"PF", b"Pf",  # PNM, PAM, PFM
    b"\x59\xa6\x6a\x95",  # Sun raster
    b"v/1\x01",  # OpenEXR
    b"#?RADIANCE", b"#?RGBE",  # Radiance HDR
)

# ANYCOLOR|ANYDEPTH keeps grey and 16-bit data as stored, drops alpha (as the demo does) and,
# unlike IMREAD_UNCHANGED, applies the EXIF orientation so the model sees the photo upright.
_READ_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to a BGR (or grey) array, 8- or 16-bit, EXIF orientation applied. Safe to
    call from several threads at once. libpng's warnings about harmless defects reach stderr unless the
    caller silences them (utils/support/stderr.py)."""
    return decode_image_bytes(read_image_bytes(path), str(path))


def decode_image_bytes(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """Decode an image held in memory (a file's bytes read by someone else: an upload, Ray Data; uint8,
    one dimension) as ``read_image`` decodes a file, with the same bounds: its size, its first bytes when
    it is large, the decoding limit. ``name`` stands for it in the messages."""
    if not isinstance(data, np.ndarray):
        data = np.frombuffer(data, np.uint8)
    if (problem := size_problem(name, data.size)) is not None:
        raise CaptionError(problem)
    if data.size > SIGNATURE_CHECK_BYTES and not looks_like_image(data[:SIGNATURE_BYTES].tobytes()):
        raise CaptionError(_not_an_image(name, data.size))
    try:
        image = cv2.imdecode(data, _READ_FLAGS)
    except cv2.error as exc:
        raise CaptionError(_decode_failure(name, exc)) from None
    if image is None:
        raise CaptionError(f"{name} is not an image OpenCV can decode (corrupt or unsupported format)")
    return image


def max_image_file_bytes() -> int:
    """The largest file an image within the decoding limit can need: every pixel stored uncompressed at
    16-bit RGBA, plus room for metadata (embedded previews, colour profiles)."""
    return decoding_limit() * MAX_BYTES_PER_PIXEL + METADATA_ROOM_BYTES


def read_image_bytes(path: Path) -> np.ndarray:
    """The whole file at ``path``, read only once it is known to be a regular file of a size an image can
    have; a large file must also start like one. The file is opened without blocking and checked as
    opened, so a pipe put in an image's place after the folder was listed is refused, not waited for."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CaptionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        size = _checked_size(path, os.fstat(fd))
        if size > SIGNATURE_CHECK_BYTES and not looks_like_image(os.pread(fd, SIGNATURE_BYTES, 0)):
            raise CaptionError(_not_an_image(str(path), size))
        data = np.empty(size, np.uint8)
        with open(fd, "rb", buffering=0, closefd=False) as file:
            filled = _read_into(file, data.data)
    except OSError as exc:
        raise CaptionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return data[:filled]


def _read_into(file: io.RawIOBase, view: memoryview) -> int:
    """Fill ``view`` from ``file``; fewer bytes when the file shrank meanwhile (OpenCV then says what it
    makes of a truncated image). A file that grew is read only as far as its size when it was opened."""
    filled = 0
    while filled < len(view) and (got := file.readinto(view[filled:])):
        filled += got
    return filled


def _checked_size(path: Path, st: os.stat_result) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise CaptionError(f"{path} is not a regular file (a pipe, device or socket)")
    if (problem := size_problem(str(path), st.st_size)) is not None:
        raise CaptionError(problem)
    return st.st_size


def size_problem(name: str, size: int) -> str | None:
    """Why a file of ``size`` bytes, called ``name``, is not read as an image (empty, or larger than an
    image within the decoding limit can be), or None."""
    if size == 0:
        return f"{name} is an empty file (0 bytes)"
    limit = max_image_file_bytes()
    if size > limit:
        return (f"{name} is {size / 2**30:.1f} GB, more than an image of {decoding_limit() / 1e6:.0f} "
                f"megapixels can take ({limit / 2**30:.1f} GB); it is not read")
    return None


def _not_an_image(name: str, size: int) -> str:
    return f"{name} is not an image: {size / 2**20:.0f} MB that do not start like any image format OpenCV decodes"


def looks_like_image(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like one of the formats OpenCV decodes."""
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp"


def _decode_failure(name: str, exc: cv2.error) -> str:
    if "MAX_IMAGE_PIXELS" in str(exc):
        return (f"{name} is larger than {decoding_limit() / 1e6:.0f} megapixels, the most this program decodes; "
                "shrink it first")
    if "MAX_IMAGE_WIDTH" in str(exc) or "MAX_IMAGE_HEIGHT" in str(exc):
        return f"{name} is wider or taller than OpenCV decodes; shrink it first"
    return f"{name} is not an image OpenCV can decode (corrupt or unsupported format)"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale any integer or float image to 8 bits; the normalisation assumes 0..255 pixels."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # In bands of rows: the float32 copy of a whole 134-megapixel image would take 1.6 GB.
        out = np.empty(image.shape, np.uint8)
        for top in range(0, image.shape[0], _BAND_ROWS):
            band = image[top : top + _BAND_ROWS]
            out[top : top + _BAND_ROWS] = ((band.astype(np.float32) + 128.0) / 257.0).astype(np.uint8)
        return out
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.nan_to_num(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    info = np.iinfo(image.dtype)
    scaled = (image.astype(np.float64) - info.min) * (255.0 / (int(info.max) - int(info.min)))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Any OpenCV image (grey, grey+alpha, BGR, BGRA; any depth) as 8-bit 3-channel BGR."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 2:  # grey + alpha
        image = np.repeat(image[:, :, :1], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.ndim != 3 or image.shape[2] != 3:
        raise CaptionError(f"unsupported image shape {image.shape}; expected grey, BGR or BGRA")
    if image.size == 0:
        raise CaptionError("image has no pixels")
    return to_uint8(np.ascontiguousarray(image))


def resize_for_model(bgr: np.ndarray) -> np.ndarray:
    """Images 640 px wide or wider go to 640 px wide; narrower ones keep their size, except that
    no side may be under MIN_SIDE px and the whole may not pass MAX_MODEL_PIXELS."""
    h, w = bgr.shape[:2]
    if w >= INPUT_WIDTH:
        h, w = int(h * INPUT_WIDTH / w), INPUT_WIDTH
        bgr = cv2.resize(bgr, (w, max(1, h)))
    if h * w > MAX_MODEL_PIXELS:
        scale = math.sqrt(MAX_MODEL_PIXELS / (h * w))
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    if min(h, w) < MIN_SIDE:
        bgr = cv2.resize(bgr, (max(w, MIN_SIDE), max(h, MIN_SIDE)), interpolation=cv2.INTER_NEAREST)
    return bgr


@lru_cache(maxsize=1)
def _lookup_tables() -> np.ndarray:
    """Per-RGB-channel table of the normalised value of each 8-bit level.

    Computed in float64 and then cast, exactly as the demo's whole-image arithmetic is,
    so a table lookup gives bit-identical input at a fraction of the cost.
    """
    levels = np.arange(256, dtype=np.float64)[None, :] / 255.0
    mean = np.asarray(MEAN, dtype=np.float64)[:, None]
    std = np.asarray(STD, dtype=np.float64)[:, None]
    return ((levels - mean) / std).astype(np.float32)


def preprocess(image: np.ndarray) -> np.ndarray:
    """BGR/grey/BGRA image of any depth -> float32 (3, H, W) model input, RGB order."""
    bgr = resize_for_model(as_bgr(image))
    tables = _lookup_tables()
    out = np.empty((3, *bgr.shape[:2]), dtype=np.float32)
    for rgb_channel, bgr_channel in enumerate((2, 1, 0)):
        np.take(tables[rgb_channel], bgr[:, :, bgr_channel], out=out[rgb_channel])
    return out
