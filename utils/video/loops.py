"""The two video loops, chosen by the source (docs/video.md).

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

import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TextIO

import numpy as np

from utils.engine.captioner import Captioner, CaptionResult
from utils.output.captions_file import open_writers
from utils.output.records import RunSummary
from utils.support.stopping import StopRequest
from utils.video.job import DEFAULT_INTERVAL, End, VideoJob, VideoStats
from utils.video.live import CaptionEvent, CaptionFn, LatestFrameWorker, caption_frame
from utils.video.presenter import Observer, Presenter
from utils.video.schedule import CaptionSchedule
from utils.video.source import Frame, VideoSource
from utils.video.video_file import VideoFileWriter
from utils.video.window import Window

FRAME_BUFFER_BYTES = 256 * 2**20  # frames a file may be read ahead of the one being captioned


class _Stopped(Exception):
    pass


def _wait_for(future: Future[CaptionEvent], stop: StopRequest) -> CaptionEvent:
    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            if stop.is_set():
                raise _Stopped from None


def _run_file(job: VideoJob, caption: CaptionFn, source: VideoSource, presenter: Presenter,
              stop: StopRequest) -> End:
    schedule = CaptionSchedule(job.interval or DEFAULT_INTERVAL, job.sync)
    frame_bytes = max(1, source.width * source.height * 3)
    limit = max(8, min(1024, FRAME_BUFFER_BYTES // frame_bytes))
    pending: deque[tuple[Frame, Future[CaptionEvent]]] = deque()
    current: Future[CaptionEvent] | None = None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner")
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
        _shut_down(executor, [future for _, future in pending] + ([current] if current is not None else []), stop)
    return "interrupted" if stop.is_set() else "end"


def _shut_down(executor: ThreadPoolExecutor, futures: list[Future[CaptionEvent]], stop: StopRequest) -> None:
    """Drop the captions not started and wait for the one being made (a model run), unless a second
    Ctrl-C says not to: the program then ends without it (it exits without the interpreter's shutdown)."""
    executor.shutdown(wait=False, cancel_futures=True)
    running = {future for future in futures if not future.cancel()}
    while running and not stop.insisted:
        running = wait(running, timeout=0.05, return_when=FIRST_COMPLETED).not_done
    if not running:
        executor.shutdown(wait=True)  # its thread has no more work: it ends at once


def _run_live(job: VideoJob, caption: CaptionFn, source: VideoSource, presenter: Presenter,
              stop: StopRequest) -> End:
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
            worker.stop(stop)
    if stop.is_set():
        return "interrupted"
    return "end" if source.realtime else "disconnected"


def process_video(job: VideoJob, captioner: Captioner, source: VideoSource,
                  video_out: VideoFileWriter | None = None, window: Window | None = None,
                  out: TextIO = sys.stdout, stop: StopRequest | None = None,
                  observer: Observer | None = None) -> VideoStats:
    """Run the loop for ``source`` until it ends, the user quits or ``stop`` is set; captions go to
    ``out`` in ``job.format``, and to ``job.captions_file`` in its extension's format."""
    stop = stop or StopRequest()
    with open_writers(job.format, out, job.captions_file) as results:
        results.begin()
        presenter = Presenter(job, captioner, source, video_out, window, results, stop, observer)

        def caption(image: np.ndarray) -> CaptionResult:
            return captioner.caption(image, job.decoding)

        wall, cpu = time.perf_counter(), time.process_time()
        run = _run_live if source.live else _run_file
        presenter.stats.end = run(job, caption, source, presenter, stop)
        presenter.stats.dropped = source.dropped
        presenter.stats.wall_s = time.perf_counter() - wall
        presenter.stats.cpu_s = time.process_time() - cpu
        last = presenter.stats.last_frame
        # Every way the loop ends (end of source, q, the first Ctrl-C) comes here: the last cue is closed.
        results.end(RunSummary(model=captioner.model, backend=captioner.backend,
                               end_time=None if last is None else last.time + source.frame_period))
    return presenter.stats


