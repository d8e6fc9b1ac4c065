"""Video mode (-v): caption a camera, a video file or a stream; show, save and print the captions.

Two ways to run, chosen by the source (see README "Video and webcam"):

* Files are exact: frame k is captioned when its video time reaches the next multiple of
  ``interval`` (every frame with ``sync``) and that caption is drawn on every frame until the next
  caption frame. The model runs in a worker thread while the main thread reads, draws and writes the
  frames around it, but frames leave in order and each waits for its caption, so the output is the
  same as a one-thread loop's, on any machine.
* Live sources (cameras, streams, a file with ``live``) never wait for the model: each frame is shown
  at once with the newest finished caption while a background worker captions the most recent frame
  (utils/video/live.py). ``sync`` gives the demo's loop instead: caption, then show, frame by frame.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from utils.captioner import Captioner, CaptionerOptions, CaptionResult
from utils.decoding.options import DecodingOptions
from utils.drawing import draw_caption
from utils.video.live import CaptionEvent, CaptionFn, LatestFrameWorker, caption_frame
from utils.video.source import Frame, VideoSource, open_source
from utils.video.window import Window, display_available
from utils.video.writer import CODECS, VideoFileWriter, plan_video_output

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0  # seconds of video time between captions of a file
FRAME_BUFFER_BYTES = 256 * 2**20  # frames a file may be read ahead of the one being captioned
WAITING = "(captioning...)"  # the caption line of the HUD before the first caption

End = Literal["end", "quit", "interrupted", "disconnected"]


@dataclass(frozen=True)
class VideoJob:
    source: str  # camera index, file, URL or pipeline
    savepath: Path | None = None  # annotated video (.mp4, .m4v, .mov: mp4v; .avi, .mkv: MJPG)
    json: bool = False
    interval: float | None = None  # files: video seconds between captions (None: 1.0); live: minimum spacing
    sync: bool = False  # caption every frame (files) / caption each frame before showing it (live)
    live: bool = False  # play a file at its frame rate as a live source
    display: bool = True  # False: never open a window
    hud: bool = False  # draw display fps, caption latency and the model under the caption
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    quiet_gui: bool = True  # silence the GUI toolkit's own warnings


@dataclass
class VideoStats:
    end: End = "end"
    frames_shown: int = 0  # frames passed to the window / writer / observer
    frames_on_time: int = 0  # of those, shown within one frame period of their arrival (live sources)
    dropped: int = 0  # frames a real-time file skipped because the loop was late
    captions: int = 0
    latency_ms: list[float] = field(default_factory=list)  # live: frame captured -> its caption shown
    compute_ms: list[float] = field(default_factory=list)  # model time per caption
    first_shown: float | None = None
    last_shown: float | None = None
    last_frame: Frame | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def shown_fps(self) -> float:
        if self.first_shown is None or self.last_shown is None or self.frames_shown < 2:
            return 0.0
        return (self.frames_shown - 1) / max(1e-9, self.last_shown - self.first_shown)


Observer = Callable[[Frame, CaptionEvent | None, np.ndarray], None]


def format_time(seconds: float) -> str:
    """00:00:01.000"""
    ms = int(round(max(0.0, seconds) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


class StopRequest(threading.Event):
    """Set by the first SIGINT/SIGTERM; remembers which."""

    signum: int = 0


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """While active, the first Ctrl-C (or SIGTERM) asks the loops to stop after the current frame, so
    the video is closed properly; a second one raises KeyboardInterrupt at once."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class CaptionSchedule:
    """Which frames of a file are captioned: the first at or after each multiple of ``interval``."""

    def __init__(self, interval: float, every_frame: bool) -> None:
        self.interval = interval
        self.every_frame = every_frame
        self._next = 0.0

    def due(self, t: float) -> bool:
        if self.every_frame:
            return True
        if t + 1e-6 < self._next:
            return False
        self._next = (math.floor((t + 1e-6) / self.interval) + 1) * self.interval
        return True


class _Stopped(Exception):
    pass


class Presenter:
    """Everything done with a frame once its caption is known: draw, write, show, print."""

    def __init__(self, job: VideoJob, captioner: Captioner, source: VideoSource, writer: VideoFileWriter | None,
                 window: Window | None, out: TextIO, stop: threading.Event, observer: Observer | None) -> None:
        self.job = job
        self.model = f"{captioner.model} ({captioner.backend})"
        self._captioner = captioner
        self.source = source
        self.writer = writer
        self.window = window
        self.out = out
        self.stop = stop
        self.observer = observer
        self.stats = VideoStats()
        self._announced: CaptionEvent | None = None
        self._latency_ms: float | None = None
        self._recent: deque[float] = deque()  # times of the frames shown in the last second
        self._pace_next: float | None = None
        self._out_open = True
        self.stop_reason: End | None = None  # set when the loop must end for a reason of its own

    def present(self, frame: Frame, event: CaptionEvent | None) -> bool:
        """Show one frame with ``event``'s caption; False when the user asked to quit."""
        if self.window is not None and not self.source.live:
            self._pace()
        now = time.monotonic()
        if event is not None and event is not self._announced:
            self._announce(event, now)
        self._recent.append(now)
        while now - self._recent[0] > 1.0:
            self._recent.popleft()
        image = self._draw(frame, event)
        handed = time.monotonic()  # the frame goes to the writer and the window now
        if self.writer is not None:
            self.writer.write(image)
        keep = self.window.show(image) if self.window is not None else self.stop_reason is None
        if self.observer is not None:
            self.observer(frame, event, image)
        s = self.stats
        s.frames_shown += 1
        s.first_shown = s.first_shown if s.first_shown is not None else now
        s.last_shown = now
        s.last_frame = frame
        if handed - frame.captured <= self.source.frame_period:
            s.frames_on_time += 1
        return keep

    def _pace(self) -> None:
        """A file shown in a window plays no faster than its frame rate."""
        now = time.monotonic()
        if self._pace_next is None or self._pace_next < now - self.source.frame_period:
            self._pace_next = now  # first frame, or late: do not rush to catch up
        elif self._pace_next > now:
            self.stop.wait(self._pace_next - now)
        self._pace_next += self.source.frame_period

    def _announce(self, event: CaptionEvent, shown: float) -> None:
        self._announced = event
        s = self.stats
        s.captions += 1
        s.compute_ms.append(event.compute_ms)
        latency = 1e3 * (shown - event.frame.captured) if self.source.live else event.compute_ms
        if self.source.live:
            s.latency_ms.append(latency)
        self._latency_ms = latency
        result = event.result
        if self.job.json:
            record: dict[str, Any] = {
                "time": round(event.frame.time, 3),
                "frame": event.frame.index,
                "caption": result.caption,
                "confidence": result.confidence,
                "model": self._captioner.model,
                "backend": self._captioner.backend,
                "timings": {k: round(v, 3) for k, v in result.timings.items()},
            }
            if self.source.live:
                record["latency_ms"] = round(latency, 1)
            line = json.dumps(record, ensure_ascii=False)
        else:
            line = f"{format_time(event.frame.time)} {result.caption}"
        if self._out_open:
            try:
                print(line, file=self.out, flush=True)
            except BrokenPipeError:  # e.g. piped into `head`: whoever read the captions is gone
                self._out_open = False
                _silence(self.out)
                if self.window is None:
                    self.stop_reason = "quit"

    def _hud(self) -> list[str]:
        n = len(self._recent)
        fps = (n - 1) / (self._recent[-1] - self._recent[0]) if n > 1 and self._recent[-1] > self._recent[0] else 0.0
        latency = "-" if self._latency_ms is None else f"{self._latency_ms:.0f} ms"
        return [f"display {fps:.1f} fps", f"caption latency {latency}", f"model {self.model}"]

    def _draw(self, frame: Frame, event: CaptionEvent | None) -> np.ndarray:
        if not self.job.hud:
            return frame.image if event is None else draw_caption(frame.image, event.result.caption)
        return draw_caption(frame.image, WAITING if event is None else event.result.caption, self._hud())


def _silence(out: TextIO) -> None:
    """Point a closed stdout at /dev/null so that the interpreter's final flush does not complain."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _wait_for(future: Future[CaptionEvent], stop: threading.Event) -> CaptionEvent:
    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            if stop.is_set():
                raise _Stopped from None


def _run_file(job: VideoJob, caption: CaptionFn, source: VideoSource, presenter: Presenter,
              stop: threading.Event) -> End:
    schedule = CaptionSchedule(job.interval or DEFAULT_INTERVAL, job.sync)
    frame_bytes = max(1, source.width * source.height * 3)
    limit = max(8, min(1024, FRAME_BUFFER_BYTES // frame_bytes))
    pending: deque[tuple[Frame, Future[CaptionEvent]]] = deque()
    current: Future[CaptionEvent] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner") as executor:
        try:
            while not stop.is_set():
                frame = source.read()
                if frame is None:
                    break
                if schedule.due(frame.time) or current is None:
                    current = executor.submit(caption_frame, caption, frame)
                pending.append((frame, current))
                # Frames leave in order, each once its caption is ready; reading runs ahead meanwhile.
                while pending and (pending[0][1].done() or len(pending) >= limit):
                    frame, future = pending.popleft()
                    if not presenter.present(frame, _wait_for(future, stop)):
                        return "quit"
            while pending and not stop.is_set():
                frame, future = pending.popleft()
                if not presenter.present(frame, _wait_for(future, stop)):
                    return "quit"
        except _Stopped:
            pass
        finally:
            for _, future in pending:
                future.cancel()
    return "interrupted" if stop.is_set() else "end"


def _run_live(job: VideoJob, caption: CaptionFn, source: VideoSource, presenter: Presenter,
              stop: threading.Event) -> End:
    worker = None if job.sync else LatestFrameWorker(caption, job.interval or 0.0).start()
    current: CaptionEvent | None = None
    try:
        while not stop.is_set():
            frame = source.read(wait=stop.wait)
            if frame is None:
                break
            if worker is None:
                current = caption_frame(caption, frame)  # the demo's loop: the video waits for the model
            else:
                worker.post(frame)
                current = worker.latest()
            if not presenter.present(frame, current):
                return "quit"
    finally:
        if worker is not None:
            worker.stop()
    if stop.is_set():
        return "interrupted"
    return "end" if source.realtime else "disconnected"


def process_video(job: VideoJob, captioner: Captioner, source: VideoSource, writer: VideoFileWriter | None = None,
                  window: Window | None = None, out: TextIO = sys.stdout, stop: threading.Event | None = None,
                  observer: Observer | None = None) -> VideoStats:
    """Run the loop for ``source`` until it ends, the user quits or ``stop`` is set."""
    stop = stop or threading.Event()
    presenter = Presenter(job, captioner, source, writer, window, out, stop, observer)

    def caption(image: np.ndarray) -> CaptionResult:
        return captioner.caption(image, job.decoding)

    wall, cpu = time.perf_counter(), time.process_time()
    run = _run_live if source.live else _run_file
    presenter.stats.end = run(job, caption, source, presenter, stop)
    presenter.stats.dropped = source.dropped
    presenter.stats.wall_s = time.perf_counter() - wall
    presenter.stats.cpu_s = time.process_time() - cpu
    return presenter.stats


def video_captioner_options(options: CaptionerOptions) -> CaptionerOptions:
    """Video mode's runtime settings: ONNX Runtime's threads sleep between operators instead of spinning,
    leaving CPU to the frame loop beside them (bench/bench_video.py measures both)."""
    return replace(options, runtime=replace(options.runtime, spin_wait=False))


def _default_name(source: VideoSource) -> str:
    if source.path is not None:
        return source.path.name if source.path.suffix.lower() in CODECS else source.path.stem + ".mp4"
    return source.name.replace(" ", "_") + ".mp4" if source.kind == "camera" else "stream.mp4"


def _open_window(job: VideoJob, source: VideoSource) -> Window | None:
    available, why = display_available()
    if not available:
        # No display at all is the normal case on a server; a display that does not work is worth a word.
        (logger.warning if "does not answer" in why or "Wayland" in why else logger.debug)(
            "cannot show a window (%s); running headless", why)
        return None
    try:
        return Window(f"image_captioning_pytorch - {source.name}", quiet=job.quiet_gui)
    except OSError as exc:
        logger.warning("%s; running headless", exc)
        return None


def run_video(job: VideoJob, load: Callable[[], Captioner], out: TextIO = sys.stdout) -> int:
    """Caption a video source; return the exit status."""
    # Source and output are checked before the models load: a typo costs no download.
    source = open_source(job.source, realtime=job.live)
    writer: VideoFileWriter | None = None
    window: Window | None = None
    try:
        if job.savepath is not None:
            dest = plan_video_output(job.savepath, _default_name(source), source.path)
            writer = VideoFileWriter(dest, source.fps, source.width, source.height)
        captioner = load()
        if job.display:
            window = _open_window(job, source)
        with graceful_stop() as stop:
            stats = process_video(job, captioner, source, writer, window, out, stop)
    except KeyboardInterrupt:
        # A second Ctrl-C: stop at once, but what was written is still a complete video.
        if writer is not None:
            writer.finish()
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        source.release()
        if window is not None:
            window.close()
    saved = writer.finish() if writer is not None else False
    return _report_end(stats, source, writer, saved, stop.signum)


def _report_end(stats: VideoStats, source: VideoSource, writer: VideoFileWriter | None, saved: bool,
                signum: int) -> int:
    where = stats.last_frame
    at = f"at {format_time(where.time)} (frame {where.index})" if where is not None else "before the first frame"
    note = ""
    if writer is not None:
        note = f"; saved {writer.frames} frames to {writer.dest}" if saved else f"; nothing saved to {writer.dest}"
    if stats.end == "interrupted":
        logger.warning("interrupted %s%s", at, note)
        return 128 + signum
    if stats.end == "disconnected":
        logger.error("%s stopped sending frames %s%s", source.name, at, note)
        return 1
    if writer is not None and not saved:
        logger.warning("no frames were shown%s", note)
    return 0
