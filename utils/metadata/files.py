"""Replacing a photo (or sidecar) with ExifTool's edited copy so that it is either old or new, never damaged."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from utils.files.checks import read_only_file_system
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

# The marker in temporary names: a file left by a killed run is hidden, says what it is, and does not
# end in an image extension, so photo managers and this program's own folder scan never take it for a
# photo. (ExifTool writes the source's format whatever the output's extension, unless that extension
# names a metadata format such as .xmp, which is why sidecars keep theirs.)
TEMP_MARKER = ".captioning-part-"


def temp_beside(target: Path, suffix: str = "") -> Path:
    """A name that does not exist yet, in ``target``'s folder (so the final rename is atomic). ExifTool
    creates the file itself: it refuses to write over one that exists, which keeps two writers apart.
    '%' is left out: ExifTool's -o reads it as a pattern code, with no escape."""
    name = target.name.replace("%", "_")
    while True:
        tmp = target.with_name(f".{name}{TEMP_MARKER}{secrets.token_hex(4)}{suffix}")
        if not os.path.lexists(tmp):
            return tmp


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def check_writable(target: Path, shown: Path, creating: bool = False) -> None:
    """Refuse before any work: a read-only file, folder or file system. Write bits are checked as well as
    os.access, so that a file or folder marked read-only stays so even for root, who passes os.access."""
    folder = target.parent
    if read_only_file_system(folder):
        raise CaptionError(f"cannot write {shown}: it is on a read-only file system")
    if not creating:
        mode = target.stat().st_mode
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(target, os.W_OK):
            raise CaptionError(f"cannot write {shown}: the file is read-only")
    folder_mode = folder.stat().st_mode
    if not folder_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(folder, os.W_OK | os.X_OK):
        # The new file is made in the folder and renamed over the old one: both need a writable folder.
        raise CaptionError(f"cannot write {shown}: its folder {folder} is read-only")


def times_of(path: Path) -> tuple[int, int]:
    """(access, modification) time in nanoseconds."""
    st = path.stat()
    return st.st_atime_ns, st.st_mtime_ns


def keep_attributes(original: Path, tmp: Path, times: tuple[int, int] | None = None) -> None:
    """Give ``tmp`` the original's owner (where allowed), permission bits, flags and extended attributes,
    and ``times`` (the original's, taken before it was read), or the current time when None. Owner
    first: chown clears set-id bits, which copystat then puts back."""
    st = original.stat()
    if hasattr(os, "chown"):
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except OSError:
            try:  # a non-root owner may still keep the group, if they are in it
                os.chown(tmp, -1, st.st_gid)
            except OSError:
                logger.debug("cannot give %s the owner of %s", tmp, original)
    shutil.copystat(original, tmp)
    if times is None:
        os.utime(tmp)
    else:  # copystat gave the original's times after the reads that set its access time
        os.utime(tmp, ns=times)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("cannot remove the temporary file %s: %s", path, exc.strerror or exc)
