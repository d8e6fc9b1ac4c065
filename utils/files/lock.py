"""One lock per folder, shared by every process of this program that uses the folder (the model folder:
downloads, int8 builds, imports): filelock's, an OS lock on a file in the folder (flock on POSIX,
msvcrt on Windows), plus what filelock leaves to its caller, a folder this program cannot write in."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".download.lock"  # the name earlier versions used: runs of both share the lock


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (shared by every process using it) for the block.

    A folder we cannot create the lock file in is read-only to us: nobody can write there through
    this program either, so there is nothing to guard and the block runs unlocked; so does a folder
    that does not exist.
    """
    from filelock import FileLock, Timeout

    path = folder / LOCK_NAME
    if not folder.is_dir():  # filelock would make it: a lock is no reason to make a folder
        logger.debug("running without a lock: %s is not a folder", folder)
        yield
        return
    # Kept on release: earlier versions of this program lock the same file and never remove it.
    lock = FileLock(path, preserve_lock_file=True)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("waiting for another process using %s", folder)
            lock.acquire()
    except OSError as error:
        logger.debug("running without a lock: cannot open %s (%s)", path, error)
        yield
        return
    try:
        yield
    finally:
        lock.release()
