"""Reading the evaluation's files: regular files only, bounded in size, named safely in messages."""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils.support.errors import CaptionError
from utils.support.text import shortened

# The largest references or captions file read. The largest published references files are COCO's
# captions_train2014.json (~66 MB) and Karpathy's dataset_coco.json (~140 MB, every split with its
# tokens); 256 MiB leaves them room. Parsing JSON takes about 8 times the file's size in memory
# (measured: 1.2 GB peak for a 152 MB dataset_coco.json), so this bound keeps the peak near 2 GB.
MAX_FILE_BYTES = 256 * 2**20

# The longest caption scored, in characters. pycocoevalcap's ROUGE-L builds a table of (candidate
# tokens + 1) x (reference tokens + 1) Python integers per pair, and a token is at least one character:
# 2,000 characters bound that table to 4 million cells (about 32 MB, a second or two). COCO's
# captions are under 300 characters; this program's are at most 100 words.
MAX_CAPTION_CHARS = 2000

READ_BUFFER_BYTES = 2**16  # what a file is read by, and how far ahead of its first line is looked

def file_name(name: str) -> str:
    """The file name that references are matched by: what follows the last "/" (references name
    images as COCO and Karpathy do, with "/"; this program's records name inputs as they were given)."""
    return posixpath.basename(os.path.basename(name))


def _cannot_read(what: str, name: str, exc: OSError) -> CaptionError:
    return CaptionError(f"cannot read the {what} {name}: {exc.strerror or exc}")


def too_large(what: str, name: str) -> CaptionError:
    """The error for a file over MAX_FILE_BYTES; ``name`` shortened for the message."""
    return CaptionError(f"the {what} {name} is larger than {MAX_FILE_BYTES // 2**20} MB, more than any "
                        "references file published for COCO; it is not read")


@contextmanager
def open_limited(path: Path, what: str) -> Iterator[io.BufferedReader[io.FileIO]]:
    """``path`` open for reading, a regular file of at most MAX_FILE_BYTES; ``what`` names it in messages
    ("references file"). Opened without blocking and checked as opened, so a pipe is refused, not
    waited for; a file over the bound is refused before any of it is read. OSError while the caller
    reads is its error for that file (one line)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    name = shortened(str(path), 200)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _cannot_read(what, name, exc) from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise CaptionError(f"the {what} {name} is a folder, not a file")
        if not stat.S_ISREG(status.st_mode):
            raise CaptionError(f"the {what} {name} is not a regular file (a pipe, device or socket)")
        if status.st_size > MAX_FILE_BYTES:
            raise too_large(what, name)
        with io.BufferedReader(io.FileIO(fd, "r", closefd=False), READ_BUFFER_BYTES) as file:
            yield file
    except OSError as exc:
        raise _cannot_read(what, name, exc) from None
    finally:
        os.close(fd)


def read_rest(file: io.BufferedReader[io.FileIO], what: str, name: str) -> bytes:
    """The rest of ``file``, opened by ``open_limited``; ``name`` shortened for the message. Read to the size
    the file has, not to the bound (that would ask for 256 MB for a small file), then on to the bound
    should it have grown meanwhile."""
    room = MAX_FILE_BYTES - file.tell()
    size = os.fstat(file.fileno()).st_size - file.tell()
    data = file.read(min(size, room) + 1)
    if len(data) > size:  # it grows while it is read: read on, but never past the bound
        data += file.read(room + 1 - len(data))
    if len(data) > room:
        raise too_large(what, name)
    return data


def read_limited(path: Path, what: str) -> bytes:
    """The whole of ``path``, a regular file of at most MAX_FILE_BYTES (see ``open_limited``)."""
    with open_limited(path, what) as file:
        return read_rest(file, what, shortened(str(path), 200))


def caption_problem(caption: str) -> str | None:
    """Why ``caption`` cannot be scored, or None."""
    if len(caption) > MAX_CAPTION_CHARS:
        return f"its caption is {len(caption)} characters long, more than the {MAX_CAPTION_CHARS} scored"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8, or a JSON escape such as \ud800
        return "its caption is not valid UTF-8 text"
    return None
