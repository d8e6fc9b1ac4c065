"""Ctrl-C (SIGINT) and SIGTERM: how the program stops, whatever it is doing when one arrives.

One handler answers both signals for the whole life of the program, in one of three ways:

* ``exit`` (start-up: importing the libraries, reading the command line): nothing is written yet, so
  the program ends at once with ``ERROR: interrupted``.
* ``raise`` (work that does not look for a stop request: loading or downloading models, importing a
  checkpoint): the first signal raises ``Interrupted`` (a KeyboardInterrupt), whose unwinding removes
  what was half-written; later signals only insist (below), so that the clean-up itself is never cut.
* ``ask`` (the image and video loops, closing their outputs, and everything after the work): a signal
  never raises. The first sets the ``StopRequest``, which the loops look at between photos or frames;
  a second (or third) sets its ``insisted`` flag, which makes every wait for a model run give up, so
  that the program goes at once through the same close path as after the first.

An exception raised by a handler at an arbitrary point can land in a ``finally`` block, a destructor
or between creating a temporary file and the ``try`` that removes it; so at most one is ever raised.
The handler takes no lock: one interrupting code that holds the same lock would wait for ever.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
MESSAGE = "interrupted"  # what the program says, whichever signal stopped it
_POLL_S = 0.02  # how often a wait looks at the stop request

Mode = Literal["exit", "raise", "ask"]


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + signum


class Interrupted(KeyboardInterrupt):
    """Raised (once) for a SIGINT or SIGTERM while the program does work that is not a loop."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def signum_of(exc: BaseException) -> int:
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


class StopRequest:
    """What the signals asked: ``is_set()`` after the first, ``insisted`` after any later one. Set from a
    signal handler, so it is plain flags (see the module docstring); waits poll them."""

    def __init__(self) -> None:
        self.signum = 0
        self._asked = False
        self._insisted = False

    def request(self, signum: int) -> None:
        """A signal came: the first asks, any later one insists."""
        if self._asked:
            self._insisted = True
            return
        self.signum = signum
        self._asked = True

    def is_set(self) -> bool:
        return self._asked

    @property
    def insisted(self) -> bool:
        return self._insisted

    @property
    def status(self) -> int:
        return exit_status(self.signum)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, less if a stop is asked meanwhile; True if it was."""
        deadline = time.monotonic() + timeout
        while not self._asked:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, _POLL_S))
        return True


def join_unless_insisted(thread: threading.Thread, stop: StopRequest | None) -> None:
    """Wait for ``thread`` (a model run, at most), but not past a second Ctrl-C."""
    while thread.is_alive() and not (stop is not None and stop.insisted):
        thread.join(_POLL_S if stop is not None else None)


Handler = Callable[[int, Any], Any] | int | None


class Interrupts:
    """The program's answer to SIGINT and SIGTERM (see the module docstring); ``mode`` says which."""

    def __init__(self, mode: Mode = "exit") -> None:
        self.stop = StopRequest()
        self.mode: Mode = mode
        self._lost: Interrupted | None = None  # raised, but swallowed by a destructor

    def install(self) -> dict[int, Handler]:
        """Answer both signals from now on (main thread only); returns the handlers this replaces."""
        return {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def install_for_program(self) -> None:
        """``install``, for the whole process: also catch an Interrupted that Python could only print."""
        self.install()
        sys.unraisablehook = self._unraisable

    def _handle(self, signum: int, _frame: object) -> None:
        if self.mode == "exit":
            os.write(2, f"ERROR: {MESSAGE}\n".encode())
            os._exit(exit_status(signum))
        if self._lost is not None and self.mode == "raise":
            lost, self._lost = self._lost, None
            raise lost
        first = not self.stop.is_set()
        self.stop.request(signum)
        if first and self.mode == "raise":
            raise Interrupted(signum)

    def _unraisable(self, unraisable: Any) -> None:
        # An Interrupted raised while a destructor ran (a progress bar's __del__) would be printed as an
        # ignored exception, and lost; raised again at the next chance, it stops the program as it should.
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt):
            if self.mode == "raise":
                self._lost = exc if isinstance(exc, Interrupted) else Interrupted()
                signal.raise_signal(signum_of(exc))
            return
        sys.__unraisablehook__(unraisable)

    @contextmanager
    def raising(self) -> Iterator[StopRequest]:
        """The program's work; when it ends (by any way), signals are only noted: the program is then
        reporting and exiting, and a message or a status must not be cut by a traceback."""
        self.mode = "raise"
        try:
            yield self.stop
        finally:
            self.mode = "ask"

    @contextmanager
    def asking(self) -> Iterator[StopRequest]:
        previous, self.mode = self.mode, "ask"
        try:
            yield self.stop
        finally:
            if previous != "exit":
                self.mode = previous


def program_interrupts() -> Interrupts | None:
    """The Interrupts that answer SIGINT in this process, if the program installed one."""
    owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    return owner if isinstance(owner, Interrupts) else None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """While active, SIGINT and SIGTERM never raise: the first sets the request, later ones insist.

    Uses the program's Interrupts where it installed one (the command line); otherwise (the package
    used as a library, in the main thread) installs its own for the block and puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    owner = program_interrupts()
    if owner is not None:
        with owner.asking() as stop:
            yield stop
        return
    own = Interrupts(mode="ask")
    previous = own.install()
    try:
        yield own.stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def program_work() -> Iterator[None]:
    """The command line's work (see ``Interrupts.raising``); without the program's Interrupts (main()
    called from Python), Python's own KeyboardInterrupt does the same for Ctrl-C."""
    owner = program_interrupts()
    if owner is None:
        yield
        return
    with owner.raising():
        yield
