"""Captioning beside a live source: a background worker fed through a one-slot mailbox.

The display loop posts every frame it shows; a newer frame replaces one the worker has not taken yet,
so the worker always starts on the most recent frame and stale frames never queue up. The display
loop reads the latest finished caption without ever waiting for the model.

ONNX Runtime (and the ailia SDK) release the GIL while a model runs, so a thread is enough.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from utils.engine.captioner import CaptionResult
from utils.support.stopping import StopRequest, join_unless_insisted
from utils.video.source import Frame


@dataclass(frozen=True, eq=False)  # compared by identity: it holds an image
class CaptionEvent:
    """A caption and the frame it describes."""

    frame: Frame
    result: CaptionResult
    started: float  # time.monotonic() when the model started on the frame
    ready: float  # time.monotonic() when the caption was available

    @property
    def compute_ms(self) -> float:
        return 1e3 * (self.ready - self.started)


CaptionFn = Callable[[np.ndarray], CaptionResult]


def caption_frame(caption: CaptionFn, frame: Frame) -> CaptionEvent:
    started = time.monotonic()
    result = caption(frame.image)
    return CaptionEvent(frame, result, started, time.monotonic())


MAX_WAIT_S = 3600.0


class LatestFrameWorker:
    """Captions the most recent posted frame, one at a time, in a background thread.

    ``min_interval`` (seconds) spaces the starts of successive captions, to spend less CPU;
    0 captions continuously."""

    def __init__(self, caption: CaptionFn, min_interval: float = 0.0) -> None:
        self._caption = caption
        self._min_interval = min_interval
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._latest: CaptionEvent | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self.taken = 0  # frames the worker started on
        self.replaced = 0  # posted frames replaced before the worker took them
        self._thread = threading.Thread(target=self._run, name="captioner", daemon=True)

    def start(self) -> LatestFrameWorker:
        self._thread.start()
        return self

    def post(self, frame: Frame) -> None:
        with self._cond:
            if self._slot is not None:
                self.replaced += 1
            self._slot = frame
            self._cond.notify()

    def latest(self) -> CaptionEvent | None:
        """The newest finished caption (None before the first); re-raises the worker's error."""
        with self._cond:
            if self._error is not None:
                raise self._error
            return self._latest

    def stop(self, give_up: StopRequest | None = None) -> None:
        """Ask the worker to finish and wait for it (at most the caption in progress), unless ``give_up``
        insists (a second Ctrl-C)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        join_unless_insisted(self._thread, give_up)

    def _take(self, not_before: float) -> Frame | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._slot is not None and now >= not_before:
                    frame, self._slot = self._slot, None
                    return frame
                # Waits are capped: a huge interval must not overflow the timeout (it only delays).
                self._cond.wait(None if self._slot is None else min(not_before - now, MAX_WAIT_S))
            return None

    def _run(self) -> None:
        # Any failure, in the model or in the worker's own bookkeeping, is handed to the display loop,
        # which ends the run with it: a worker that died quietly would leave the video without captions.
        try:
            self._loop()
        except BaseException as exc:
            with self._cond:
                self._error = exc

    def _loop(self) -> None:
        not_before = 0.0
        while (frame := self._take(not_before)) is not None:
            self.taken += 1
            event = caption_frame(self._caption, frame)
            not_before = event.started + self._min_interval
            with self._cond:
                self._latest = event
