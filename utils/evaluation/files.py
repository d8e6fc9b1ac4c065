"""Reading the evaluation's files: regular files only, bounded in size, named safely in messages."""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from utils.errors import CaptionError
from utils.text import printable

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

NAME_SHOWN_CHARS = 80  # a name from a file, in a message: at most this many characters


def shown(text: str, limit: int = NAME_SHOWN_CHARS) -> str:
    """``text`` as a message may show it: on one line (control characters escaped), at most ``limit``
    characters."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def file_name(name: str) -> str:
    """The file name that references are matched by: what follows the last "/" (references name
    images as COCO and Karpathy do, with "/"; this program's records name inputs as they were given)."""
    return posixpath.basename(os.path.basename(name))


def read_limited(path: Path, what: str) -> bytes:
    """The whole of ``path``, a regular file of at most MAX_FILE_BYTES; ``what`` names it in messages
    ("references file"). Opened without blocking and checked as opened, so a pipe is refused, not
    waited for."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    name = shown(str(path), 200)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CaptionError(f"cannot read the {what} {name}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise CaptionError(f"the {what} {name} is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise CaptionError(f"the {what} {name} is not a regular file (a pipe, device or socket)")
        with open(fd, "rb", buffering=0, closefd=False) as file:
            data = file.read(MAX_FILE_BYTES + 1)  # a file that grows while it is read stops here too
    except OSError as exc:
        raise CaptionError(f"cannot read the {what} {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise CaptionError(f"the {what} {name} is larger than {MAX_FILE_BYTES // 2**20} MB, more than any "
                           "references file published for COCO; it is not read")
    return data


def caption_problem(caption: str) -> str | None:
    """Why ``caption`` cannot be scored, or None."""
    if len(caption) > MAX_CAPTION_CHARS:
        return f"its caption is {len(caption)} characters long, more than the {MAX_CAPTION_CHARS} scored"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8, or a JSON escape such as \ud800
        return "its caption is not valid UTF-8 text"
    return None
