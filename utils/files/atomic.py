"""Files written so that a reader sees the old content or the new one, never a part."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import IO, Any


def create_temp_beside(dest: Path) -> tuple[int, Path]:
    """A new, exclusively created, dot-prefixed file in ``dest``'s folder: (open fd, path)."""
    # Same folder, so the final os.replace is an atomic rename on one file system. O_EXCL keeps
    # concurrent writers apart; mode 0o666 lets the umask decide, as for any file the user creates
    # (mkstemp would force 0o600 on the model files). The name ends with dest's extension, because
    # writers such as OpenCV's VideoWriter choose the format from it.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}{dest.suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def commit(out: IO[Any], tmp: Path, dest: Path) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()
    os.replace(tmp, dest)
    sync_folder(dest.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; POSIX only (Windows cannot open a folder this way)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(dest: Path, data: bytes) -> None:
    """Replace ``dest`` with ``data`` so that readers see the old content or the new, never a part."""
    fd, tmp = create_temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            commit(out, tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_durably(tmp: Path, target: Path) -> None:
    """Make ``tmp``'s content durable, then rename it over ``target`` and make the rename durable."""
    fd = os.open(tmp, os.O_RDWR if sys.platform == "win32" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    sync_folder(target.parent)
