"""One lock per folder, shared by every process of this program that uses the folder (the model folder:
downloads, int8 builds, imports)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".download.lock"  # the name earlier versions used: runs of both share the lock


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_for_lock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # gives up after 10 s, hence the loop
                return
            except OSError:
                continue
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (shared by every process using it) for the block.

    A folder we cannot create the lock file in is read-only to us: nobody can write there through
    this program either, so there is nothing to guard and the block runs unlocked.
    """
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        logger.debug("running without a lock: cannot open %s (%s)", path, error)
        yield
        return
    try:
        if not _try_lock(fd):
            logger.info("waiting for another process using %s", folder)
            _wait_for_lock(fd)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
