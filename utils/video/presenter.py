"""Everything done with a frame once its caption is known, one job per class: ``Pacer`` keeps a file in
a window at its frame rate, ``Hud`` measures what the overlay shows, ``Presenter`` draws the frame and
hands it to the video file, the window, the result writer and an observer, and counts."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

from utils.engine.captioner import Captioner
from utils.output.formats import ResultWriter
from utils.output.records import CaptionRecord, VideoPosition
from utils.support.drawing import draw_caption
from utils.support.stopping import StopRequest
from utils.video.job import End, VideoJob, VideoStats
from utils.video.live import CaptionEvent
from utils.video.source import Frame, VideoSource
from utils.video.video_file import VideoFileWriter
from utils.video.window import Window

WAITING = "(captioning...)"  # the caption line of the HUD before the first caption

Observer = Callable[[Frame, CaptionEvent | None, np.ndarray], None]


class Pacer:
    """A file shown in a window plays no faster than its frame rate; a late frame does not make the
    next ones rush to catch up."""

    def __init__(self, frame_period: float, stop: StopRequest) -> None:
        self.frame_period = frame_period
        self.stop = stop
        self._next: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        if self._next is None or self._next < now - self.frame_period:
            self._next = now
        elif self._next > now:
            self.stop.wait(self._next - now)
        self._next += self.frame_period


class Hud:
    """The overlay's measurements: frames shown in the last second, the latest caption's latency."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.latency_ms: float | None = None
        self._recent: deque[float] = deque()

    def frame_shown(self, now: float) -> None:
        self._recent.append(now)
        while now - self._recent[0] > 1.0:
            self._recent.popleft()

    def lines(self) -> list[str]:
        n = len(self._recent)
        span = self._recent[-1] - self._recent[0] if n > 1 else 0.0
        fps = (n - 1) / span if span > 0 else 0.0
        latency = "-" if self.latency_ms is None else f"{self.latency_ms:.0f} ms"
        return [f"display {fps:.1f} fps", f"caption latency {latency}", f"model {self.model}"]


class Presenter:
    """Shows one frame with its caption everywhere it goes, and keeps the run's statistics."""

    def __init__(self, job: VideoJob, captioner: Captioner, source: VideoSource, video_out: VideoFileWriter | None,
                 window: Window | None, results: ResultWriter, stop: StopRequest,
                 observer: Observer | None) -> None:
        self.job = job
        self.source = source
        self.video_out = video_out
        self.window = window
        self.results = results
        self.observer = observer
        self.stats = VideoStats()
        self.hud = Hud(f"{captioner.model} ({captioner.backend})")
        self._pacer = Pacer(source.frame_period, stop) if window is not None and not source.live else None
        self._announced: CaptionEvent | None = None
        self.stop_reason: End | None = None  # set when the loop must end for a reason of its own

    def present(self, frame: Frame, event: CaptionEvent | None) -> bool:
        """Show one frame with ``event``'s caption; False when the user asked to quit."""
        if self._pacer is not None:
            self._pacer.wait()
        now = time.monotonic()
        if event is not None and event is not self._announced:
            self._announce(event, now)
        self.hud.frame_shown(now)
        image = self._draw(frame, event)
        handed = time.monotonic()  # the frame goes to the writer and the window now
        if self.video_out is not None:
            self.video_out.write(image)
        keep = self.window.show(image) if self.window is not None else self.stop_reason is None
        if self.observer is not None:
            self.observer(frame, event, image)
        self._count(frame, now, handed)
        return keep

    def _count(self, frame: Frame, now: float, handed: float) -> None:
        s = self.stats
        s.frames_shown += 1
        s.first_shown = s.first_shown if s.first_shown is not None else now
        s.last_shown = now
        s.last_frame = frame
        if handed - frame.captured <= self.source.frame_period:
            s.frames_on_time += 1

    def _announce(self, event: CaptionEvent, shown: float) -> None:
        """A new caption: count it and hand it to the result writer."""
        self._announced = event
        s = self.stats
        s.captions += 1
        s.compute_ms.append(event.compute_ms)
        live = self.source.live
        latency = 1e3 * (shown - event.frame.captured) if live else event.compute_ms
        if live:
            s.latency_ms.append(latency)
        self.hud.latency_ms = latency
        self.results.write(CaptionRecord(
            input=self.source.name,
            result=event.result,
            video=VideoPosition(event.frame.time, event.frame.index, latency if live else None),
        ))
        if self.results.reader_gone and self.window is None:
            self.stop_reason = "quit"  # e.g. piped into `head`: whoever read the captions is gone

    def _draw(self, frame: Frame, event: CaptionEvent | None) -> np.ndarray:
        if not self.job.hud:
            return frame.image if event is None else draw_caption(frame.image, event.result.caption)
        return draw_caption(frame.image, WAITING if event is None else event.result.caption, self.hud.lines())
