"""The one queue every request's image goes through: a long-running ``Captioner.caption_many`` over the
requests as they come, so that concurrent requests share the workers (never more model runs at once than
workers), each with its own decoding options, each result handed back to its request as soon as it is done.

Each upload is decoded and preprocessed in the decoding lanes (utils/service/decode_lanes.py), so that
a decompression bomb delays no ordinary photo, and only then joins the models' queue. Requests are
admitted up to a bound (decoding, waiting and being captioned); past it, ``submit`` refuses at once with
an estimate of when to retry. A request whose caller gave up (its time limit) is dropped wherever it is
waiting: before its decoding, or before its model run.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from utils.decoding.options import DecodingOptions
from utils.engine.captioner import Captioned, Captioner, CaptionItem, CaptionResult, GivenUp, ModelInput
from utils.service.decode_lanes import DecodeLanes, decode
from utils.support.errors import CaptionError
from utils.support.stopping import StopRequest, join_unless_insisted

logger = logging.getLogger(__name__)

_FIRST_GUESS_S = 1.0  # a caption's time before any was measured, for Retry-After


class QueueFull(CaptionError):
    """Too many requests waiting; ``retry_after_s`` estimates when one will have left."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ImageRefused(CaptionError):
    """The upload is not an image this program decodes, or is larger than it decodes (the message is the
    one a file would get)."""


@dataclass
class CaptionJob:
    """One request's image on its way through the lanes and the workers. Its future turns running just
    before the model run: until then, a caller that gives up cancels it and the job is dropped."""

    data: bytes  # the upload; dropped once decoded
    name: str  # what the messages call it: the upload's file name
    options: DecodingOptions
    future: Future[CaptionResult] = field(default_factory=Future)
    decoded: ModelInput | None = None


class CaptionQueue:
    """Requests in, captions out, on one captioner's workers (see the module docstring)."""

    def __init__(self, captioner: Captioner, capacity: int) -> None:
        self.captioner = captioner
        self.capacity = capacity
        self._incoming: queue.SimpleQueue[CaptionJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # admitted, not yet answered
        self._closed = False
        self._caption_s = _FIRST_GUESS_S  # a moving average of one caption's model time
        self._abandon = StopRequest()  # set only to give up on the model runs in progress (a second signal)
        self._lanes = DecodeLanes(max(2, captioner.workers))
        self._results = captioner.caption_many((CaptionItem(job, _decoded, job.options) for job in self._jobs()),
                                               ordered=False, stop=self._abandon)
        self._thread = threading.Thread(target=self._answer, name="caption-queue", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered (waiting, or being captioned)."""
        return self._pending

    @property
    def full(self) -> bool:
        return self._pending >= self.capacity

    def submit(self, data: bytes, name: str, options: DecodingOptions) -> Future[CaptionResult]:
        """Queue an upload; its future gets the caption, or an ImageRefused or other CaptionError. Raises
        QueueFull when ``capacity`` requests are already in, or the queue is closing."""
        job = CaptionJob(data, name, options)
        with self._lock:
            if self._closed:
                raise QueueFull("the service is stopping", self.retry_after_s())
            if self._pending >= self.capacity:
                raise QueueFull(f"{self._pending} requests are already waiting or being captioned, the most "
                                "this service takes (--queue-size); retry later", self.retry_after_s())
            self._pending += 1
        self._lanes.submit(data, lambda: self._decode(job))
        return job.future

    def retry_after_s(self) -> int:
        """Whole seconds until the requests ahead have been captioned, by the recent captions' pace."""
        return max(1, math.ceil(self._pending * self._caption_s / self.captioner.workers))

    def close(self, stop: StopRequest | None = None) -> None:
        """Take no more requests, let those in finish, and end the threads; a stop that insists gives
        up on the model runs in progress instead of waiting for them."""
        with self._lock:
            self._closed = True
        self._lanes.close()
        self._incoming.put(None)
        join_unless_insisted(self._thread, stop)
        if stop is not None and stop.insisted:
            self._abandon.request(stop.signum)
            self._abandon.request(stop.signum)

    def _jobs(self) -> Iterator[CaptionJob]:
        while (job := self._incoming.get()) is not None:
            yield job

    def _decode(self, job: CaptionJob) -> None:
        """In a decoding lane: the upload, ready for the models, into the models' queue; unless its
        request was given up meanwhile, or it is not an image."""
        data, job.data = job.data, b""
        if job.future.cancelled():
            self._release()
            return
        try:
            decoded = decode(data, job.name)
        except CaptionError as exc:
            self._release()
            job.future.set_exception(ImageRefused(str(exc)))
            return
        except BaseException as exc:  # a bug: the request gets an answer all the same
            self._release()
            job.future.set_exception(CaptionError(f"{job.name}: {type(exc).__name__}: {exc}"))
            return
        del data
        job.decoded = ModelInput(decoded.chw, decoded.timings, job.future.set_running_or_notify_cancel)
        self._incoming.put(job)

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def _answer(self) -> None:
        try:
            for done in self._results:
                self._deliver(done)
        except BaseException as exc:  # a bug in a thread: fail what is waiting rather than hang it
            logger.error("the caption queue stopped: %s: %s", type(exc).__name__, exc)
            self._fail_waiting(exc)

    def _deliver(self, done: Captioned[CaptionJob]) -> None:
        job = done.source
        job.decoded = None
        self._release()
        if isinstance(done.error, GivenUp):
            return
        if done.error is not None or done.result is None:
            job.future.set_exception(done.error or CaptionError(f"{job.name}: no caption"))
            return
        timings = done.result.timings
        seconds = (timings.get("features", 0.0) + timings.get("decode", 0.0)) / 1e3
        self._caption_s = 0.8 * self._caption_s + 0.2 * seconds
        job.future.set_result(done.result)

    def _fail_waiting(self, exc: BaseException) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                job = self._incoming.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(CaptionError(f"the caption queue stopped: {type(exc).__name__}"))


def _decoded(job: CaptionJob) -> ModelInput:
    """What the models' queue is given: a job its lane has decoded."""
    if job.decoded is None:
        raise CaptionError(f"{job.name}: not decoded")
    return job.decoded
