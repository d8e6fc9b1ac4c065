"""A bounded, ordered, parallel map: the shape of image mode and of ``Captioner.caption_many``.

Reader threads take items in input order and prepare them (decode, preprocess); worker threads, one
per set of model sessions, do the heavy part; the caller's thread gets the results back in input order,
whichever finished first. At most ``ahead`` items exist at once between being taken and being handed
back, so memory depends on ``ahead`` and never on how many items there are. The threads spend their
time in OpenCV and ONNX Runtime, which release the GIL. Unordered, each result is handed back as soon as
it is done (a service's requests, where one slow item must not hold back the others).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from utils.support.errors import CaptionError
from utils.support.stopping import StopRequest, join_unless_insisted

T = TypeVar("T")  # an input item
P = TypeVar("P")  # a prepared item
R = TypeVar("R")  # a worker's result

_POLL_S = 0.1  # how often a thread waiting checks whether the run was stopped


@dataclass(frozen=True)
class Finished(Generic[T, R]):
    index: int
    item: T
    value: R | None  # None when error is set
    error: CaptionError | None = None


@dataclass(frozen=True)
class _Failure:
    """An unexpected exception in a thread: raised in the caller's thread when its item's turn comes."""

    exception: BaseException


def ordered_map(items: Iterable[T], prepare: Callable[[T], P], workers: Sequence[Callable[[P], R]],
                readers: int = 1, ahead: int | None = None,
                stop: StopRequest | None = None, ordered: bool = True) -> Iterator[Finished[T, R]]:
    """Yield ``workers[k](prepare(item))`` for every item, in input order (``ordered=False``: in the
    order they finish; ``Finished.index`` still says which item each is).

    A CaptionError from ``prepare`` or a worker is that item's result (``Finished.error``) and the rest
    go on; any other exception is raised here when its item's turn comes. An item's slot is freed when
    the caller asks for the next one, so whatever the caller keeps of a result until then is bounded
    too. Closing the iterator early (``break``, an exception) stops the threads after their current
    item and waits for that. Once ``stop`` is set (Ctrl-C) the results end early, as after a ``break``
    (the caller tells the two ends apart by ``stop``); if it insists, the threads are not waited for.
    """
    if not workers:
        raise ValueError("ordered_map needs at least one worker")
    run = _Pipeline(items, prepare, workers, max(1, readers), ahead or 2 * len(workers) + max(1, readers), stop,
                    ordered)
    return run.results()


class _Pipeline(Generic[T, P, R]):
    def __init__(self, items: Iterable[T], prepare: Callable[[T], P], workers: Sequence[Callable[[P], R]],
                 readers: int, ahead: int, stop: StopRequest | None, ordered: bool = True) -> None:
        self._source = iter(items)
        self._ordered = ordered
        self._prepare = prepare
        self._workers = list(workers)
        self._slots = threading.Semaphore(ahead)
        self._taken = 0  # items taken from the source so far
        self._take_lock = threading.Lock()
        self._work: queue.SimpleQueue[tuple[int, T, P] | None] = queue.SimpleQueue()
        self._done: dict[int, Finished[T, R] | _Failure] = {}
        self._changed = threading.Condition()
        self._total: int | None = None  # known once the source is exhausted
        self._readers_left = readers
        self._stop = threading.Event()
        self._asked = stop  # the caller's stop request (Ctrl-C), looked at while waiting for a result
        self._threads = [threading.Thread(target=self._read, name=f"reader-{i}", daemon=True)
                         for i in range(readers)]
        self._threads += [threading.Thread(target=self._serve, args=(work,), name=f"worker-{i}", daemon=True)
                          for i, work in enumerate(self._workers)]

    def results(self) -> Iterator[Finished[T, R]]:
        for thread in self._threads:
            thread.start()
        try:
            index = 0
            while (done := self._wait_for(index)) is not None:
                if isinstance(done, _Failure):
                    raise done.exception
                yield done
                del done  # the caller is through with it: its memory and its slot go back
                self._slots.release()
                index += 1
        finally:
            # Stopped early or not, every thread ends before this returns: each finishes at most the item
            # it holds (one model run). A thread left inside ONNX Runtime would have the runtime torn down
            # under it when the interpreter exits, and the process would die with SIGABRT. Only a second
            # Ctrl-C cuts this short: the program then exits without that tear-down.
            self._halt()
            for thread in self._threads:
                join_unless_insisted(thread, self._asked)

    def _wait_for(self, index: int) -> Finished[T, R] | _Failure | None:
        """Item ``index``'s result; unordered, the ``index``-th result to finish (the earliest delivered)."""
        with self._changed:
            while index not in self._done if self._ordered else not self._done:
                if (self._total is not None and index >= self._total) or self._stop_asked():
                    return None
                self._changed.wait(None if self._asked is None else _POLL_S)
            if self._stop_asked():
                return None
            return self._done.pop(index if self._ordered else next(iter(self._done)))

    def _stop_asked(self) -> bool:
        return self._asked is not None and self._asked.is_set()

    def _halt(self) -> None:
        self._stop.set()
        self._end_workers()

    def _end_workers(self) -> None:
        # Queued after every prepared item, so a worker takes all the work before its end marker.
        for _ in self._workers:
            self._work.put(None)

    def _deliver(self, index: int, done: Finished[T, R] | _Failure) -> None:
        with self._changed:
            self._done[index] = done
            self._changed.notify_all()

    def _take(self) -> tuple[int, T] | None:
        """The next item in input order, once there is room for it; None when there are no more."""
        while not self._slots.acquire(timeout=_POLL_S):
            if self._stop.is_set():
                return None
        with self._take_lock:
            if self._total is None and not self._stop.is_set():
                index = self._taken
                try:
                    item = next(self._source)
                except StopIteration:
                    pass
                except BaseException as exc:  # the caller's iterable failed: that is the run's result there
                    self._taken += 1
                    self._deliver(index, _Failure(exc))
                    self._finish_source(index + 1)
                    return None
                else:
                    self._taken += 1
                    return index, item
                self._finish_source(index)
        self._slots.release()
        return None

    def _finish_source(self, total: int) -> None:
        with self._changed:
            self._total = total
            self._changed.notify_all()

    def _read(self) -> None:
        try:
            while (taken := self._take()) is not None:
                index, item = taken
                try:
                    prepared = self._prepare(item)
                except CaptionError as exc:
                    self._deliver(index, Finished(index, item, None, exc))
                except BaseException as exc:
                    self._deliver(index, _Failure(exc))
                else:
                    self._work.put((index, item, prepared))
        finally:
            with self._take_lock:
                self._readers_left -= 1
                last = self._readers_left == 0
            if last:
                self._end_workers()

    def _serve(self, work: Callable[[P], R]) -> None:
        while (job := self._work.get()) is not None:
            index, item, prepared = job
            if self._stop.is_set():
                return
            try:
                value = work(prepared)
            except CaptionError as exc:
                self._deliver(index, Finished(index, item, None, exc))
            except BaseException as exc:
                self._deliver(index, _Failure(exc))
            else:
                self._deliver(index, Finished(index, item, value))
            del job, prepared
