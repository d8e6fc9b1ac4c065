"""Stopping a video run cleanly: the first Ctrl-C (or SIGTERM) asks, a second one insists."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


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
