"""Checks made before writing a file, so that a problem is found before any work and said in one line:
what is at the path, whether its folder takes files, and that no output replaces an input."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from utils.support.errors import CaptionError


def check_output_slot(path: Path) -> None:
    """Refuse to write at ``path`` when something other than a regular file is there. A symbolic link is
    never written through (its target would be replaced by our output) nor replaced; a pipe, device or
    socket is not a file to replace either."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CaptionError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(mode):
        raise CaptionError(f"cannot write {path}: it is a symbolic link, and this program never writes through "
                           "one; remove the link or choose another path")
    if stat.S_ISDIR(mode):
        raise CaptionError(f"cannot write {path}: it is a folder")
    if not stat.S_ISREG(mode):
        raise CaptionError(f"cannot write {path}: it is a pipe, device or socket, not a file; choose another path")


def device_folder(folder: Path) -> bool:
    """Whether ``folder`` is on the file system of /dev, where only devices belong (root may create files
    there: ``--captions-file /dev/stdout.csv`` would)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.stat(folder).st_dev == os.stat("/dev").st_dev
    except OSError:
        return False


def check_writable_folder(folder: Path, option: str = "--savepath") -> None:
    if not folder.exists():
        raise CaptionError(f"cannot save into {folder}: the folder does not exist")
    if not folder.is_dir():
        raise CaptionError(f"cannot save into {folder}: it is not a folder")
    if device_folder(folder):
        raise CaptionError(f"cannot save into {folder}: it holds the system's devices, not files; choose another "
                           f"{option}")
    if read_only_file_system(folder):
        raise CaptionError(f"cannot save into {folder}: it is on a read-only file system; choose another {option}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CaptionError(f"cannot save into {folder}: permission denied; choose another {option}")


def read_only_file_system(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def never_an_input(outputs: list[Path], inputs: list[Path], option: str = "--savepath") -> None:
    """The one rule for every output this program writes: it never replaces one of its inputs
    (compared after resolving links and relative paths)."""
    resolved_inputs = {p.resolve(): p for p in inputs}
    for out in outputs:
        if (source := resolved_inputs.get(out.resolve())) is not None:
            raise CaptionError(f"{option} would overwrite the input {source}; choose another path")
