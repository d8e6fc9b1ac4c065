"""--resume: a captions file (JSON Lines, CSV or TSV) that grows record by record and that a later run
goes on with (docs/large-runs.md#resume).

A run with --resume reads the file first (``read_resumable``): the inputs recorded there with a caption
and no error are done, and are neither read nor captioned again; the others are. A damaged record is
refused, wherever it is: only a last line without its newline (a crash or a full disk cut it short) is
taken for a torn end. Then, before the first new record, the file is locked against other runs and
repaired (``appending``): the torn end is cut off, and so are the records that a later one of the same
input supersedes and the failed records of the inputs this run tries again, so that the file ends with
one record per input. Each record is then appended as its input finishes, flushed at once (a killed run
loses at most the records in flight) and made durable (fsync) in batches; before each record and at each
fsync the path is checked to still name the file appended to. Records are in input order within a run; a
resumed file holds one run's records after another's.
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

from utils.files.atomic import create_temp_beside, replace_durably, sync_folder
from utils.files.checks import check_output_slot
from utils.output.formats import ResultWriter, image_columns, make_writer
from utils.output.records import CaptionRecord, RunSummary
from utils.support.errors import CaptionError, UsageError
from utils.support.text import printable

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


Span = tuple[int, int]  # a record's byte range in the file


@dataclass(frozen=True)
class Resumable:
    """What a captions file already holds."""

    path: Path
    format: str  # json, csv or tsv
    columns: tuple[str, ...]  # an image table's step columns (formats.ResultWriter): what its header holds
    done: frozenset[str]  # inputs recorded with a caption (or kept) and no error
    failed: dict[str, list[Span]] = field(default_factory=dict)  # input not done -> its last record
    superseded: tuple[Span, ...] = ()  # records that a later one of the same input replaces
    end: int = 0  # where the last complete line ends
    size: int = 0  # the file's size (more than ``end``: a torn last line)
    identity: tuple[int, int] | None = None  # (device, inode) of the file read; None: there was none


# One record of the file: the input it records (None for the header or a blank line), whether that input
# is done, and the record's byte range.
Line = tuple[str | None, bool, int, int]


def read_resumable(path: Path, format_name: str, columns: tuple[str, ...] = ()) -> Resumable:
    """The records ``path`` holds (nothing if it does not exist yet); UsageError, changing nothing, for a
    file that is not this program's captions file in this format or that has a damaged record;
    CaptionError for a link, a pipe, or a file another run is writing. ``columns``: the step columns
    a table of this run has (formats.ResultWriter)."""
    if format_name not in RESUMABLE:
        raise UsageError(f"--resume cannot go on with {path}: use .jsonl, .json, .csv or .tsv")
    check_output_slot(path)  # never through a link, never a pipe
    try:  # without blocking and without following a link: what is there is checked as opened
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _OPEN_FLAGS)
    except FileNotFoundError:
        return Resumable(path, format_name, columns, frozenset())
    except OSError as exc:
        raise CaptionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with open(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CaptionError(f"cannot write {path}: it is a pipe, device or socket, not a file; choose another path")
        if not _locked(fd, shared=True):
            raise CaptionError(_busy(path))
        lines = _json_lines(file, path) if format_name == "json" else _table_lines(file, path, format_name, columns)
        kept: dict[str, tuple[bool, Span]] = {}  # input -> the record that stands for it so far
        superseded: list[Span] = []
        end = 0
        for name, ok, start, stop in lines:
            end = stop
            if name is None:
                continue
            earlier = kept.get(name)
            if earlier is not None and earlier[0] and not ok:
                superseded.append((start, stop))  # a failure after a success: the success stands
                continue
            if earlier is not None:
                superseded.append(earlier[1])  # the last record wins, a done one over any failed one
            kept[name] = (ok, (start, stop))
    done = frozenset(name for name, (ok, _) in kept.items() if ok)
    failed = {name: [span] for name, (ok, span) in kept.items() if not ok}
    return Resumable(path, format_name, columns, done, failed, tuple(sorted(superseded)), end, st.st_size,
                     (st.st_dev, st.st_ino))


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


def _table_lines(file: IO[bytes], path: Path, format_name: str, columns: tuple[str, ...]) -> Iterator[Line]:
    """CSV/TSV records with their byte ranges. Our writer quotes a field that holds a line break, so a
    record may span lines: the csv module reads a quoted field across lines, and the lines it is given
    are counted as it takes them. A record that reaches the end of the file unfinished is a torn end
    only when it is the file's last line alone and that line lacks its newline; one that spans lines (a
    quote that never closes) is damage, refused whether or not the file ends in a newline, since cutting
    it would cut every record after the quote."""
    header = list(image_columns(columns))
    taken = _TakenLines(file, path)
    dialect = csv.excel_tab if format_name == "tsv" else csv.excel
    reader = csv.reader(taken.lines(), dialect=dialect, strict=True)
    at, first = 0, 1  # where the next record starts: byte, line number
    while True:
        taken.record.clear()
        try:
            row: list[str] | None = next(reader)
            problem = ""
        except StopIteration:
            return
        except csv.Error as exc:
            row, problem = None, "a quote that never closes" if taken.ended else str(exc)
        start, at = at, taken.count
        number, first = first, taken.number + 1
        if not taken.newline_at_end:  # the reader reached the end of the file inside this record
            if len(taken.record) == 1:
                return  # torn: cut off when the file is opened for appending
            raise _not_ours(path, number, taken.record[0], problem or "a record cut short across lines")
        if row is None:
            raise _not_ours(path, number, taken.record[0], problem)
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
            raise _not_ours(path, number, taken.record[0], f"{len(row)} fields, not {len(header)}")
        yield row[0], row[-1] == "", start, at


class _TakenLines:
    """The lines of a file as the csv module takes them: how many bytes and lines so far, the lines of
    the record being read, and whether the last line taken ended in a newline."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        self.file, self.path = file, path
        self.count = 0  # bytes
        self.number = 0  # lines
        self.record: list[bytes] = []
        self.newline_at_end = True
        self.ended = False

    def lines(self) -> Iterator[str]:
        for line in iter(lambda: self.file.readline(MAX_RECORD_BYTES + 1), b""):
            self.number += 1
            if len(line) > MAX_RECORD_BYTES:
                raise _not_ours(self.path, self.number, line[:SHOWN_LINE_CHARS])
            self.count += len(line)
            self.newline_at_end = line.endswith(b"\n")
            self.record.append(line)
            yield line.decode("utf-8", "surrogateescape")
        self.ended = True


def _not_ours(path: Path, number: int, line: bytes, problem: str = "") -> UsageError:
    shown = printable(line.decode("utf-8", "replace").strip())
    shown = shown if len(shown) <= SHOWN_LINE_CHARS else shown[:SHOWN_LINE_CHARS] + "…"
    quoted = f"{shown!r}" if shown else ""
    detail = ": ".join(part for part in (problem, quoted) if part)
    if number > 1:  # after a record or header of ours: our file, damaged; mended, it keeps every other record
        advice = "mend or remove that line, or choose another file"
    else:
        advice = "choose another file, or remove it to start again"
    return UsageError(f"{OPTION} {path}: line {number} is not one of this program's records"
                      f"{f' ({detail})' if detail else ''}; {advice}")


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
def appending_kept_out(path: Path, shared: bool) -> Iterator[None]:
    """The block runs while no --resume run appends to the file now at ``path``: holding its lock, shared
    (to look) or exclusive (to rename another file over it); CaptionError when a --resume run holds it.
    A file renamed over one a run appends to would leave that run's records in a file no path names."""
    try:
        fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _OPEN_FLAGS)
    except OSError:  # nothing there to hold, or nothing we may open: the writing itself says what is wrong
        fd = None
    try:
        if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode) and not _locked(fd, shared):
            raise CaptionError(_busy(path))
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and the lock with it


@contextmanager
def appending(resumable: Resumable, retried: set[str], echoed: bool) -> Iterator[ResultWriter]:
    """A writer that appends to the captions file, locked against other runs and repaired first: the
    torn end cut off, and left out the records a later one supersedes and the failed records of
    ``retried`` (the inputs this run captions again). The file keeps what was written however the run
    ends; a file that the path no longer names by then (replaced or removed) is a CaptionError, which
    says whether this run's records are on standard output too (``echoed``)."""
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
        drop = sorted([*resumable.superseded, *(r for name in retried for r in resumable.failed.get(name, ()))])
        if resumable.superseded:
            logger.warning("%s recorded some inputs more than once: %d records were removed, and each input keeps "
                           "its last record with a caption (or else its last)", printable(str(path)),
                           len(resumable.superseded))
        if resumable.size > resumable.end:
            logger.warning("%s ended in a cut-off line (a run was stopped while writing it); it was removed "
                           "and that input is captioned again", printable(str(path)))
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
    writer = _Appending(make_writer(resumable.format, file, str(path), resumable.columns), path,
                        fresh=os.fstat(fd).st_size == 0)
    finished = False
    try:
        yield writer
        finished = True
    finally:
        writer.sync()  # however the run ends (Ctrl-C included), what it recorded is made durable
        with contextlib.suppress(OSError):
            file.close()
        if writer.lost and not finished:  # said now: the interruption's own message would leave it unsaid
            logger.error("%s", printable(_lost(path, echoed)))
    if writer.lost:
        raise CaptionError(_lost(path, echoed))
    if writer.inner.failure is not None:
        raise CaptionError(f"cannot write {path}: {writer.inner.failure}; the records before that are kept "
                           "and --resume goes on from them")


def _lost(path: Path, echoed: bool) -> str:
    where = " (they are on standard output)" if echoed else ""
    return (f"{OPTION} {path} was replaced or removed while this run appended to it, so it lacks some of this "
            f"run's records{where}; run again with --resume to caption what it lacks")


def _truncate(resumable: Resumable, fd: int) -> None:
    """Cut the file back to its last complete line: one call, which a crash cannot leave half done."""
    os.ftruncate(fd, resumable.end)
    os.fsync(fd)


def _rewrite_without(resumable: Resumable, drop: list[Span], fd: int) -> int:
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
    ``FSYNC_RECORDS`` records or ``FSYNC_SECONDS`` seconds. Before each record and after each fsync the
    path is checked to still name the open file: one renamed over it (a copy, another run's file) or
    removed would take the records on the open file out of sight, while every write still succeeds."""

    name = "appending"

    def __init__(self, inner: ResultWriter, path: Path, fresh: bool) -> None:
        super().__init__(None, inner.destination)
        self.inner = inner
        self.inner.quiet = True  # problems with the records are reported once, by the stdout writer
        self.path = path
        self.lost = False  # the path no longer names the open file: nothing more is written to it
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
        self._check_ours()
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
        self._check_ours()

    def _check_ours(self) -> None:
        """Stop writing, for good, once the path names another file or none."""
        out = self.inner.out
        if self.lost or out is None or self.inner.failure is not None:
            return
        try:
            here, ours = os.lstat(self.path), os.fstat(out.fileno())
            same = (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)
        except (OSError, ValueError):  # removed (or its folder); a closed file
            same = False
        if not same:
            self.lost = True
            self.inner.failure, self.inner.reader_gone = "replaced or removed", True
