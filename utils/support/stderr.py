"""Keeping C libraries' chatter off the terminal without losing the program's own messages.

libpng and libtiff print warnings about harmless defects (a bad CRC in a text chunk, an odd colour
profile) straight to file descriptor 2, past OpenCV's logging; the image decodes all the same, and a
failure is reported by this program in its own words. Images are decoded in several threads at once,
so descriptor 2 cannot be silenced around each decode without silencing whatever another thread prints
meanwhile. Instead the program's own writes (logging, progress bars, Python's error reports) go to a
duplicate of descriptor 2 (``own_stderr``), and descriptor 2 itself points at /dev/null for as long as
the libraries are at work (``library_output_silenced``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def own_stderr() -> None:
    """Point ``sys.stderr`` at a duplicate of descriptor 2, before anything keeps a reference to it."""
    if sys.stderr is None:
        return
    try:
        fd = os.dup(2)
    except OSError:  # no stderr at all
        return
    sys.stderr.flush()
    sys.stderr = open(fd, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",  # noqa: SIM115
                      closefd=True)


@contextlib.contextmanager
def library_output_silenced() -> Iterator[None]:
    """Descriptor 2 goes to /dev/null meanwhile (only the C libraries still write to it, after ``own_stderr``)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
