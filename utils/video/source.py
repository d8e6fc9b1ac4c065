"""Video sources for -v: a camera index, a video file, or a URL or pipeline OpenCV opens.

Every source is opened and its first frame decoded before any model is loaded, so a typo, a missing
camera or a corrupt file is reported at once, in one line.

Sources are *live* (camera, network stream, or a file played at its frame rate with ``realtime``)
or *files* (read as fast as the program consumes them, every frame in order).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from utils.engine.preprocess import as_bgr
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

SourceKind = Literal["camera", "file", "stream"]
DEFAULT_FPS = 30.0  # when a source does not report a usable frame rate (many cameras and streams)
_MAX_FPS = 1000.0


@dataclass(frozen=True, eq=False)  # compared by identity: it holds an image
class Frame:
    index: int  # position in the source: frames dropped by a live source leave gaps
    image: np.ndarray  # BGR, 8-bit; never modified once read
    time: float  # seconds from the start of the source (video time for files, capture clock for live)
    captured: float  # time.monotonic() when the frame arrived (its due time for a file played in real time)


def parse_source(spec: str) -> tuple[SourceKind, int | str]:
    """Camera index, local file, or anything else OpenCV may open (URL, pipeline, image sequence)."""
    text = spec.strip()
    if re.fullmatch(r"\d+", text):
        return "camera", int(text)
    if "://" in text or " ! " in text or "%" in text:
        return "stream", text
    return "file", text


def _usable_fps(value: float) -> float | None:
    return value if math.isfinite(value) and 0 < value <= _MAX_FPS else None


class VideoSource:
    """Frames from an opened cv2.VideoCapture, numbered and timed; see ``open_source``."""

    def __init__(self, capture: cv2.VideoCapture, name: str, kind: SourceKind, live: bool,
                 realtime: bool, first: np.ndarray, path: Path | None) -> None:
        self.name = name
        self.kind = kind
        self.live = live  # frames arrive at the source's pace; the program must keep up or drop
        self.realtime = realtime  # a file paced to its frame rate (and dropping frames when late)
        self.path = path
        self._capture = capture
        reported = _usable_fps(capture.get(cv2.CAP_PROP_FPS))
        if reported is None:
            logger.warning("%s does not report its frame rate; assuming %g fps", name, DEFAULT_FPS)
        self.fps = reported or DEFAULT_FPS
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count: int | None = int(count) if math.isfinite(count) and 0 < count < 2**40 else None
        self.height, self.width = first.shape[:2]
        # A file's first frame is frame 0; a live source's first frame is stale by the time the models
        # have loaded, so it only served to prove the source works.
        self._pending: np.ndarray | None = None if live and not realtime else first
        self._next = 0  # index of the next frame the capture gives
        self._start: float | None = None  # monotonic time of frame 0 (live and realtime sources)
        self.received = 0  # frames returned by read()
        self.dropped = 0  # frames a realtime file skipped because the reader was late

    @property
    def frame_period(self) -> float:
        return 1.0 / self.fps

    def read(self, wait: Callable[[float], object] | None = None) -> Frame | None:
        """The next frame, or None at the end of the source (or when a live source stops sending).

        ``wait(seconds)`` is how a realtime file waits for its next frame (default time.sleep); pass a
        stop event's ``wait`` so that a stop request cuts the wait short (it returns True: no frame)."""
        if self.realtime:
            return self._read_realtime(wait or time.sleep)
        image = self._grab_decode()
        if image is None:
            return None
        now = time.monotonic()
        index = self._next - 1
        if self.live:
            if self._start is None:
                self._start = now
            t = now - self._start
        else:
            t = index / self.fps
        return self._frame(index, image, t, now)

    def _read_realtime(self, wait: Callable[[float], object]) -> Frame | None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due_index = int((now - self._start) * self.fps + 1e-6)
        while self._next < due_index:  # late: skip what a camera would have overwritten
            if not self._skip():
                return None
            self.dropped += 1
        due = self._start + self._next / self.fps
        delay = due - time.monotonic()
        if delay > 0 and wait(delay) is True:  # an Event's wait: set means stop
            return None
        image = self._grab_decode()
        if image is None:
            return None
        index = self._next - 1
        return self._frame(index, image, index / self.fps, due)

    def _frame(self, index: int, image: np.ndarray, t: float, captured: float) -> Frame:
        self.received += 1
        return Frame(index, image, t, captured)

    def _skip(self) -> bool:
        if self._pending is not None:
            self._pending = None
            self._next += 1
            return True
        ok = self._capture.grab()
        if ok:
            self._next += 1
        return bool(ok)

    def _grab_decode(self) -> np.ndarray | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._capture.read()
            if not ok or image is None:
                return None
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                image = as_bgr(image)
        self._next += 1
        return image

    def release(self) -> None:
        self._capture.release()


def open_source(spec: str, realtime: bool = False) -> VideoSource:
    """Open ``spec`` and decode its first frame; CaptionError with a one-line reason if that fails.

    ``realtime`` plays a file (or a finite stream) at its frame rate as a live source."""
    kind, target = parse_source(spec)
    path: Path | None = None
    if kind == "camera":
        name = f"camera {target}"
    elif kind == "file":
        path = Path(str(target))
        name = str(target)
        if not path.exists():
            raise CaptionError(f"{name} does not exist")
        if path.is_dir():
            raise CaptionError(f"{name} is a folder, not a video; give a video file, a camera index or a URL")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CaptionError(f"cannot read {name}: {exc.strerror or exc}") from exc
        if size == 0:
            raise CaptionError(f"{name} is an empty file (0 bytes)")
    else:
        name = str(target)
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        if kind == "camera":
            raise CaptionError(f"cannot open camera {target}: no such camera, or another program is using it")
        if kind == "file":
            raise CaptionError(f"{name} is not a video OpenCV can read (corrupt or unsupported format)")
        raise CaptionError(f"cannot open {name}: OpenCV could not connect to it or does not support it")
    ok, first = capture.read()
    if not ok or first is None or first.size == 0:
        capture.release()
        if kind == "camera":
            raise CaptionError(f"camera {target} opened but sends no frames")
        raise CaptionError(f"{name} has no frames OpenCV can decode (corrupt or unsupported format)")
    first = as_bgr(first)
    if kind == "camera":
        live = True
    elif kind == "file":
        live = realtime
    else:  # a URL of a finite video behaves as a file; a broadcast reports no frame count
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        live = realtime or not (math.isfinite(count) and count > 0)
    return VideoSource(capture, name, kind, live, realtime and kind != "camera", first, path)
