"""--resume: a captions file (JSON Lines, CSV or TSV) that grows record by record and that a later run
goes on with (docs/large-runs.md#resume).

A run with --resume reads the file first (``read_resumable``): the inputs recorded there with a caption
and no error are done, and are neither read nor captioned again; the others are. Then, before the
first new record, the file is locked against other runs and repaired (``appending``): what follows the
last complete record (a line cut short by a crash or a full disk) is cut off, and so are the failed
records of the inputs this run tries again. Each record is then appended as its input finishes, flushed
at once (a killed run loses at most the records in flight) and made durable (fsync) in batches. Records
are in input order within a run; a resumed file holds one run's records after another's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from utils.errors import CaptionError, UsageError
from utils.files.atomic import create_temp_beside, replace_durably, sync_folder
from utils.files.checks import check_output_slot
from utils.output.formats import CsvWriter, ResultWriter, make_writer
from utils.records import CaptionRecord, RunSummary
from utils.text import printable

logger = logging.getLogger(__name__)

OPTION = "--captions-file"
RESUMABLE = ("json", "csv", "tsv")  # formats read back record by record (text, vtt and srt are not)
# Durable in batches: an fsync per record would cost a disk flush per photo; power lost between two
# leaves the records since the last one to caption again, a crash of the program loses none.
FSYNC_RECORDS = 64
FSYNC_SECONDS = 5.0
# No record of ours comes near this (a path, a caption, an n-best list, a description kept); a longer
# line is some other file's, and is not read whole into memory.
MAX_RECORD_BYTES = 4 << 20
SHOWN_LINE_CHARS = 80
COPY_CHUNK = 1 << 20
_OPEN_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class Resumable:
    """What a captions file already holds."""

    path: Path
    format: str  # json, csv or tsv
    done: frozenset[str]  # inputs recorded with a caption (or kept) and no error
    failed: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # input -> its records' byte ranges
    end: int = 0  # where the last complete line ends
    size: int = 0  # the file's size (more than ``end``: a torn last line)
    identity: tuple[int, int] | None = None  # (device, inode) of the file read; None: there was none


# One line of the file: the input it records (None for the header or a blank line), whether that input
# is done, and the line's byte range.
Line = tuple[str | None, bool, int, int]


def read_resumable(path: Path, format_name: str) -> Resumable:
    """The records ``path`` holds (nothing if it does not exist yet); UsageError, changing nothing, for a
    file that is not this program's captions file in this format; CaptionError for a link, a pipe, or a
    file another run is writing."""
    if format_name not in RESUMABLE:
        raise UsageError(f"--resume cannot go on with {path}: use .jsonl, .json, .csv or .tsv")
    check_output_slot(path)  # never through a link, never a pipe
    try:  # without blocking and without following a link: what is there is checked as opened
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _OPEN_FLAGS)
    except FileNotFoundError:
        return Resumable(path, format_name, frozenset())
    except OSError as exc:
        raise CaptionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with open(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CaptionError(f"cannot write {path}: it is a pipe, device or socket, not a file; choose another path")
        if not _locked(fd, shared=True):
            raise CaptionError(_busy(path))
        lines = _json_lines(file, path) if format_name == "json" else _table_lines(file, path, format_name)
        done: set[str] = set()
        failed: dict[str, list[tuple[int, int]]] = {}
        end = 0
        for name, ok, start, stop in lines:
            end = stop
            if name is not None:
                (done.add(name) if ok else failed.setdefault(name, []).append((start, stop)))
    return Resumable(path, format_name, frozenset(done), {k: v for k, v in failed.items() if k not in done},
                     end, st.st_size, (st.st_dev, st.st_ino))


def _json_lines(file: IO[bytes], path: Path) -> Iterator[Line]:
    at = 0
    for number, line in enumerate(iter(lambda: file.readline(MAX_RECORD_BYTES + 1), b""), start=1):
        if len(line) > MAX_RECORD_BYTES:
            raise _not_ours(path, number, line[:SHOWN_LINE_CHARS])
        start, at = at, at + len(line)
        if not line.endswith(b"\n"):
            return  # torn: cut off when the file is opened for appending
        if not line.strip():
            yield None, False, start, at
            continue
        try:
            record = json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("input"), str) or "caption" not in record:
            raise _not_ours(path, number, line)
        yield record["input"], _json_done(record), start, at


def _json_done(record: dict[str, Any]) -> bool:
    """No error: neither the record's own (no caption) nor a step's (a section with an error)."""
    if record.get("error") is not None:
        return False
    return not any(isinstance(v, dict) and v.get("error") is not None for v in record.values())


def _table_lines(file: IO[bytes], path: Path, format_name: str) -> Iterator[Line]:
    """CSV/TSV rows with their byte ranges: the csv module reads a quoted field across lines, so the
    lines it is given are counted as it takes them."""
    header = list(CsvWriter.header(images=True))
    position = {"taken": 0, "ended": False, "last_complete": True}

    def lines() -> Iterator[str]:
        for line in iter(lambda: file.readline(MAX_RECORD_BYTES + 1), b""):
            if len(line) > MAX_RECORD_BYTES:
                raise _not_ours(path, 0, line[:SHOWN_LINE_CHARS])
            position["taken"] += len(line)
            position["last_complete"] = line.endswith(b"\n")
            yield line.decode("utf-8", "surrogateescape")
        position["ended"] = True

    dialect = csv.excel_tab if format_name == "tsv" else csv.excel
    reader = csv.reader(lines(), dialect=dialect, strict=True)
    at, number = 0, 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            if position["ended"]:
                return  # a quoted field the file ends in: torn
            raise _not_ours(path, number + 1, b"") from None
        number += 1
        if not position["last_complete"]:
            return  # torn
        start, at = at, position["taken"]
        if number == 1:
            if row != header:
                sep = "\t" if format_name == "tsv" else ","
                raise UsageError(f"{OPTION} {path}: its first line is not this program's header "
                                 f"({sep.join(header)}); choose another file, or remove it to start again")
            yield None, False, start, at
            continue
        if not row:
            yield None, False, start, at
            continue
        if len(row) != len(header):
            raise _not_ours(path, number, "\t".join(row).encode("utf-8", "surrogateescape"))
        yield row[0], row[-1] == "", start, at


def _not_ours(path: Path, number: int, line: bytes) -> UsageError:
    shown = printable(line.decode("utf-8", "replace").strip())
    shown = shown if len(shown) <= SHOWN_LINE_CHARS else shown[:SHOWN_LINE_CHARS] + "…"
    where = f"line {number}" if number else "a line"
    return UsageError(f"{OPTION} {path}: {where} is not one of this program's records"
                      f"{f' ({shown!r})' if shown else ''}; choose another file, or remove it to start again")


def _busy(path: Path) -> str:
    return f"{OPTION} {path} is being written by another run of this program; let it finish, or choose another file"


def _locked(fd: int, shared: bool) -> bool:
    """Take an advisory lock on ``fd`` without waiting: shared to read, exclusive to append. Two runs
    appending to one file would interleave their records; where there is no flock (Windows), nothing
    is locked."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks (some network shares): nothing to guard with
        return True
    return True


@contextmanager
def appending(resumable: Resumable, retried: set[str]) -> Iterator[ResultWriter]:
    """A writer that appends to the captions file, locked against other runs and repaired first: the
    torn end cut off, and the failed records of ``retried`` (the inputs this run captions again) left
    out. The file keeps what was written however the run ends."""
    path = resumable.path
    check_output_slot(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _OPEN_FLAGS, 0o666)
    except OSError as exc:
        raise CaptionError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if not _locked(fd, shared=False):
            raise CaptionError(_busy(path))
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CaptionError(f"cannot write {path}: it is a pipe, device or socket, not a file; choose another path")
        if resumable.identity is None and st.st_size == 0:
            sync_folder(path.parent)  # the new file's name is durable before records are
        elif (st.st_dev, st.st_ino) != resumable.identity or st.st_size != resumable.size:
            raise CaptionError(f"{OPTION} {path} changed while this run started; run it again")
        drop = sorted(r for name in retried for r in resumable.failed.get(name, ()))
        if drop:
            fd = _rewrite_without(resumable, drop, fd)
        elif resumable.size > resumable.end:
            _truncate(resumable, fd)
    except OSError as exc:
        os.close(fd)
        raise CaptionError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    file = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")
    writer = _Appending(make_writer(resumable.format, file, str(path)), fresh=os.fstat(fd).st_size == 0)
    try:
        yield writer
    finally:
        writer.sync()  # however the run ends (Ctrl-C included), what it recorded is made durable
        with contextlib.suppress(OSError):
            file.close()
    if writer.inner.failure is not None:
        raise CaptionError(f"cannot write {path}: {writer.inner.failure}; the records before that are kept "
                           "and --resume goes on from them")


def _truncate(resumable: Resumable, fd: int) -> None:
    """Cut the file back to its last complete line: one call, which a crash cannot leave half done."""
    logger.warning("%s ended in a cut-off line (a run was stopped while writing it); it was removed and that "
                   "input is captioned again", printable(str(resumable.path)))
    os.ftruncate(fd, resumable.end)
    os.fsync(fd)


def _rewrite_without(resumable: Resumable, drop: list[tuple[int, int]], fd: int) -> int:
    """A copy of the file without the byte ranges ``drop`` and without its torn end, renamed over it:
    a crash leaves the old file or the new one. The copy is locked before it takes the file's name, so
    no other run finds it unlocked; returns it, open for appending, and closes ``fd``."""
    path = resumable.path
    new, tmp = create_temp_beside(path)
    try:
        if not _locked(new, shared=False):
            raise CaptionError(_busy(path))
        with contextlib.suppress(OSError):  # the file's own permission bits, not the umask's
            os.chmod(tmp, stat.S_IMODE(os.fstat(fd).st_mode))
        with open(path, "rb") as source, open(new, "wb", closefd=False) as out:
            at = 0
            for start, stop in [*drop, (resumable.end, resumable.end)]:
                _copy(source, out, at, start - at)
                at = stop
        check_output_slot(path)
        replace_durably(tmp, path)
    except BaseException:
        os.close(new)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    with contextlib.suppress(AttributeError, OSError):  # POSIX: appends land at the end whatever else moves
        import fcntl

        fcntl.fcntl(new, fcntl.F_SETFL, fcntl.fcntl(new, fcntl.F_GETFL) | os.O_APPEND)
    return new


def _copy(source: IO[bytes], out: IO[bytes], start: int, length: int) -> None:
    source.seek(start)
    while length > 0 and (chunk := source.read(min(COPY_CHUNK, length))):
        out.write(chunk)
        length -= len(chunk)


class _Appending(ResultWriter):
    """The format's own writer on the appended file: its header only in a new file, an fsync every
    ``FSYNC_RECORDS`` records or ``FSYNC_SECONDS`` seconds."""

    name = "appending"

    def __init__(self, inner: ResultWriter, fresh: bool) -> None:
        super().__init__(None, inner.destination)
        self.inner = inner
        self.inner.quiet = True  # problems with the records are reported once, by the stdout writer
        self._fresh = fresh
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def begin(self, inputs: int | None = None) -> None:
        out = self.inner.out
        if not self._fresh:
            self.inner.out = None  # the header is in the file already: only the writer's own state is set
        self.inner.begin(inputs)
        self.inner.out = out

    def write(self, record: CaptionRecord) -> None:
        self.inner.write(record)
        self.reader_gone = self.inner.reader_gone
        self._unsynced += 1
        if self._unsynced >= FSYNC_RECORDS or time.monotonic() - self._synced_at >= FSYNC_SECONDS:
            self.sync()

    def end(self, summary: RunSummary) -> None:
        self.inner.end(summary)

    def sync(self) -> None:
        out = self.inner.out
        if out is None or self.inner.failure is not None:
            return
        try:
            out.flush()
            os.fsync(out.fileno())
        except (OSError, ValueError, io.UnsupportedOperation) as exc:
            self.inner.failure = getattr(exc, "strerror", None) or str(exc)
        self._unsynced, self._synced_at = 0, time.monotonic()
