"""Small videos made with OpenCV for the video-mode tests, and reading them back."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import SAMPLE
from tests.reference import imread

SCENE_FRAMES = 15  # frames per scene: the picture changes this often, so captions change too


def scene(k: int, size: tuple[int, int]) -> np.ndarray:
    """Frame k: the sample photo, changed every SCENE_FRAMES frames (original, inverted, dark, bright) so
    that the test models caption each scene differently."""
    base = _sample_at(size)
    n = (k // SCENE_FRAMES) % 4
    if n == 1:
        return 255 - base
    if n == 2:
        return base // 3
    if n == 3:
        return cv2.add(base, np.full_like(base, 80))
    return base.copy()


@functools.lru_cache(maxsize=8)
def _sample_at(size: tuple[int, int]) -> np.ndarray:
    """The sample photo at ``size``, decoded once (a long video would otherwise decode it per frame)."""
    return cv2.resize(imread(SAMPLE), size, interpolation=cv2.INTER_AREA)


def make_video(path: Path, frames: int, fps: float = 10.0, size: tuple[int, int] = (160, 120)) -> Path:
    """An MJPG .avi (every frame a JPEG: exact frame counts, no codec surprises)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for k in range(frames):
        writer.write(scene(k, size))
    writer.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video; fails if OpenCV cannot open it."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"cannot open {path}"
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def video_info(path: Path) -> tuple[float, int, tuple[int, int]]:
    """(fps, frame count as the container reports it, (width, height))."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"cannot open {path}"
    info = (capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))))
    capture.release()
    return info


def has_caption_bar(frame: np.ndarray) -> bool:
    """The white bar at the top with dark text on it."""
    top = frame[:2]
    bar = frame[: max(8, frame.shape[0] // 12)]
    return bool((top > 200).mean() > 0.9 and (bar < 90).any())
