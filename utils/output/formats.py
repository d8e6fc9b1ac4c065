"""Output formats: one small class per format behind one interface, chosen by ``--format``.

A writer is given records as they are made (``write``), so a pipe sees each caption at once, and a
summary when the run ends (``end``). Every mode writes through these: image mode, video mode, --ray and
--resume. Adding a format means adding a ``ResultWriter`` subclass and its entry in ``FORMATS``; no mode
needs a change.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TextIO

from tqdm import tqdm

from utils.output.records import CaptionRecord, RunSummary, as_json
from utils.support.errors import CaptionError, first_line
from utils.support.text import printable

logger = logging.getLogger(__name__)

Mode = Literal["images", "video"]


class ResultWriter:
    """Writes records of one format to a text stream; a reader that goes away ends writing quietly."""

    name: ClassVar[str]
    modes: ClassVar[frozenset[Mode]] = frozenset({"images", "video"})  # what the format can describe
    binary: ClassVar[bool] = False  # written to a file only (--captions-file), never to standard output

    def __init__(self, out: Any, destination: str = "standard output", columns: tuple[str, ...] = ()) -> None:
        # ``out``: a text stream (a binary file for a binary format); None: closed before the start (`>&-`
        # leaves Python no sys.stdout), and nothing is written.
        self.out = out
        self.destination = destination  # what messages call ``out``
        # An image table's columns between confidence and error: what the per-image steps add (the mode
        # names them: utils/images/steps/registry.py), so that every mode's table has the same header.
        self.columns = columns
        self.reader_gone = False  # set when the stream's reader left (piped into `head`): stop if nothing else
        # A second copy of the records (--captions-file): nothing to the log, and a write error does not
        # end the run (the captions still reach stdout); it is kept here and reported when the run ends.
        self.quiet = False
        self.failure: str | None = None

    def begin(self, inputs: int | None = None) -> None:
        """Called once before the first record; ``inputs``: how many images (None for video)."""

    def write(self, record: CaptionRecord) -> None:
        raise NotImplementedError

    def end(self, summary: RunSummary) -> None:
        """Called once after the last record."""

    def abandon(self) -> None:
        """Called instead of ``end`` when the run fails or is stopped: let go of what the writer holds
        in ``out`` before its owner closes it."""

    def _emit(self, text: str) -> None:
        if self.reader_gone or self.out is None:
            return
        try:
            tqdm.write(text, file=self.out)  # clears and redraws a progress bar instead of breaking it
            self.out.flush()
        except BrokenPipeError:
            self.reader_gone = True
            _silence(self.out)
        except (OSError, ValueError) as exc:  # a full disk or device (ENOSPC, EIO), a closed file object
            self._failed(exc)

    def _failed(self, exc: OSError | ValueError) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if self.quiet:
            self.failure, self.reader_gone = reason, True
            return
        _silence(self.out)
        raise CaptionError(f"cannot write the captions to {self.destination}: {reason}") from None


def _silence(out: TextIO) -> None:
    """Point a closed stream at /dev/null so that the interpreter's final flush does not complain."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def format_time(seconds: float) -> str:
    """00:00:01.000"""
    ms = int(round(max(0.0, seconds) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


class TextWriter(ResultWriter):
    """For people: the caption (prefixed by the image's name when there are several, by the time in
    video), its n-best list and its sections' notes; the steps' reports at the end. Failures go to the
    log (stderr)."""

    name = "text"

    def begin(self, inputs: int | None = None) -> None:
        self._names = inputs != 1

    def write(self, record: CaptionRecord) -> None:
        if record.result is None:
            if record.error is None:  # not captioned, and rightly so (a step skipped it): its notes say why
                self._emit("\n".join(note for section in record.sections if (note := section.note()) is not None))
            elif not self.quiet:
                logger.error("%s", printable(record.error))
            return
        caption = printable(record.result.caption)
        if record.video is not None:
            line = f"{format_time(record.video.time)} {caption}"
        else:
            line = f"{printable(record.input)}: {caption}" if self._names else caption
        for rank, ranked in enumerate(record.result.nbest or [], start=1):
            line += f"\n  {rank}. {ranked.score:.4f}  {printable(ranked.caption)}"
        for section in record.sections:
            if (note := section.note()) is not None:
                line += f"\n  {note}"
        self._emit(line)
        if not self.quiet:
            for section in record.sections:
                if section.error is not None:
                    logger.error("%s", printable(section.error))

    def end(self, summary: RunSummary) -> None:
        for report in summary.reports:
            self._emit(report)


class JsonWriter(ResultWriter):
    """For programs: one JSON object per record (JSON Lines), failed inputs included."""

    name = "json"

    def write(self, record: CaptionRecord) -> None:
        self._emit(json.dumps(as_json(record), ensure_ascii=False))


def cue_text(caption: str) -> str:
    """A caption as the text of one cue: one line (control characters escaped) without surrounding blanks,
    so that no blank line can end the cue early."""
    return printable(caption).strip()


class CueWriter(ResultWriter):
    """Subtitle tracks (video only): one cue per caption change. Equal consecutive captions are merged;
    a cue starts at the time of the frame its caption describes and ends where the next different
    caption starts, or at the end of the video for the last one. A cue is written as soon as its end
    is known; an empty caption ends the previous cue and starts none (a gap)."""

    modes = frozenset({"video"})

    def __init__(self, out: TextIO | None, destination: str = "standard output", columns: tuple[str, ...] = ()) -> None:
        super().__init__(out, destination, columns)
        self._cue: tuple[float, str] | None = None  # the open cue: (start, caption)
        self._cues = 0

    def write(self, record: CaptionRecord) -> None:
        if record.result is None or record.video is None:
            return
        caption = record.result.caption
        if self._cue is not None and self._cue[1] == caption:
            return  # the same caption goes on
        self._close(record.video.time)
        self._cue = (record.video.time, caption)

    def end(self, summary: RunSummary) -> None:
        if self._cue is not None:
            start = self._cue[0]
            self._close(summary.end_time if summary.end_time is not None else start)

    def _close(self, end: float) -> None:
        if self._cue is None:
            return
        start, caption = self._cue
        self._cue = None
        text = cue_text(caption)
        if not text:
            return
        if end <= start:  # a zero-length last cue (no frame after it): make it last one millisecond
            end = start + 0.001
        self._cues += 1
        self._emit(self.cue(self._cues, start, end, text))

    def cue(self, number: int, start: float, end: float, text: str) -> str:
        raise NotImplementedError


class VttWriter(CueWriter):
    """WebVTT (a ``<track>`` for HTML video): the header, then each cue after a blank line."""

    name = "vtt"

    def begin(self, inputs: int | None = None) -> None:
        self._emit("WEBVTT")

    def cue(self, number: int, start: float, end: float, text: str) -> str:
        # Cue text is markup here: character references keep a caption's "&", "<" and ">" (and so "-->",
        # which may not appear in a cue) as text.
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f"\n{format_time(start)} --> {format_time(end)}\n{text}"


class SrtWriter(CueWriter):
    """SubRip: cues numbered from 1, ``HH:MM:SS,mmm`` times, a blank line between cues. The text is
    written as it is: SubRip has no character references, so players would show ``&amp;`` literally."""

    name = "srt"

    def cue(self, number: int, start: float, end: float, text: str) -> str:
        text = text.replace("-->", "->")  # a text line holding the arrow could be read as a timing line
        times = f"{format_time(start).replace('.', ',')} --> {format_time(end).replace('.', ',')}"
        gap = "" if number == 1 else "\n"
        return f"{gap}{number}\n{times}\n{text}"


VIDEO_COLUMNS = ("time", "frame", "caption", "confidence")


def image_columns(step_columns: tuple[str, ...]) -> tuple[str, ...]:
    """An image table's header: input, caption, confidence, the steps' columns, error."""
    return ("input", "caption", "confidence", *step_columns, "error")


class CsvWriter(ResultWriter):
    """For spreadsheets: a header, then one row per image (failed ones with their error) or per video
    caption. Images: input,caption,confidence, each step's columns (output: the annotated copy; metadata:
    what --write-metadata or --metadata-sidecar did), then error; video: time,frame,caption,confidence."""

    name = "csv"
    dialect: ClassVar[type[csv.Dialect]] = csv.excel

    def begin(self, inputs: int | None = None) -> None:
        self._row(image_columns(self.columns) if inputs is not None else VIDEO_COLUMNS)

    def write(self, record: CaptionRecord) -> None:
        result = record.result
        caption = "" if result is None else result.caption
        confidence = "" if result is None or result.confidence is None else result.confidence
        if record.video is not None:
            self._row((round(record.video.time, 3), record.video.frame, caption, confidence))
            return
        self._row((record.input, caption, confidence, *step_cells(record, self.columns).values(),
                   record.failure or ""))

    def _row(self, values: tuple[Any, ...]) -> None:
        # The dialect's own "\r\n" terminator makes the writer quote a field holding a bare "\r" as well as
        # "\n" (it quotes the terminator's characters); the row then ends in "\n" like every line we write.
        line = io.StringIO()
        csv.writer(line, dialect=self.dialect).writerow(values)
        self._emit(line.getvalue().removesuffix(self.dialect.lineterminator))


def step_cells(record: CaptionRecord, columns: tuple[str, ...]) -> dict[str, Any]:
    """The record's value in each step column ("" where its step did nothing)."""
    cells: dict[str, Any] = dict.fromkeys(columns, "")
    for section in record.sections:
        cells.update(zip(section.columns, section.cells(), strict=True))
    return cells


class TsvWriter(CsvWriter):
    """The same rows, tab-separated."""

    name = "tsv"
    dialect = csv.excel_tab


class ParquetWriter(ResultWriter):
    """For data tools (--captions-file only): the CSV table's columns, typed: confidence a double, every
    other column a string, null where a CSV cell is empty. Rows are buffered and written a row group at
    a time, so memory stays bounded however many images there are. Needs pyarrow (require_pyarrow)."""

    name = "parquet"
    modes = frozenset({"images"})
    binary = True
    ROWS_PER_GROUP = 4096  # a few hundred KB held at a time

    def __init__(self, out: Any, destination: str = "standard output", columns: tuple[str, ...] = ()) -> None:
        super().__init__(out, destination, columns)
        self._rows: list[tuple[Any, ...]] = []
        self._file: Any = None  # pyarrow.parquet.ParquetWriter, from ``begin``

    def begin(self, inputs: int | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema([(name, pa.float64() if name == "confidence" else pa.string())
                                  for name in image_columns(self.columns)])
        if self.out is not None:
            try:
                self._file = pq.ParquetWriter(self.out, self._schema)
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def write(self, record: CaptionRecord) -> None:
        result = record.result
        cells = [None if value in ("", None) else str(value) for value in step_cells(record, self.columns).values()]
        self._rows.append((_utf8(record.input), None if result is None else result.caption,
                           None if result is None else result.confidence, *cells, record.failure))
        if len(self._rows) >= self.ROWS_PER_GROUP:
            self._guarded(self._flush)

    def end(self, summary: RunSummary) -> None:
        self._guarded(self._flush)
        if self._file is not None:
            self._guarded(self._file.close)  # the footer; the file itself is committed by its owner

    def abandon(self) -> None:
        # pyarrow's writer would otherwise close itself when collected, writing its footer into a file
        # closed by then.
        self.reader_gone = True
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()

    def _flush(self) -> None:
        if self._file is None or self.reader_gone:
            return
        columns = {name: [row[i] for row in self._rows] for i, name in enumerate(self._schema.names)}
        self._rows = []
        self._file.write_table(self._pa.table(columns, schema=self._schema))

    def _guarded(self, action: Callable[[], Any]) -> None:
        if self.reader_gone:
            return
        try:
            action()
        except (OSError, ValueError) as exc:
            self._failed(exc)


def _utf8(name: str) -> str:
    """A file name that is not valid UTF-8 (its bytes kept as lone surrogates) in the UTF-8 Parquet
    requires, its stray bytes shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


PARQUET_INSTALL = "python3 -m pip install -r requirements-parquet.txt"


def require_pyarrow(option: str) -> None:
    """A one-line CaptionError naming the install command when pyarrow (Parquet) cannot be imported."""
    try:
        import pyarrow.parquet  # noqa: F401  (its import is the check)
    except ImportError as exc:
        raise CaptionError(f"{option} .parquet needs pyarrow, which is not installed ({first_line(exc)}): "
                           f"{PARQUET_INSTALL}") from None


class Tee(ResultWriter):
    """Hands every call on to several writers (stdout and --captions-file); its reader is gone only
    when every writer's is."""

    name = "tee"

    def __init__(self, writers: list[ResultWriter]) -> None:
        super().__init__(None)
        self.writers = writers

    def begin(self, inputs: int | None = None) -> None:
        for w in self.writers:
            w.begin(inputs)
        self._update()

    def write(self, record: CaptionRecord) -> None:
        for w in self.writers:
            w.write(record)
        self._update()

    def end(self, summary: RunSummary) -> None:
        for w in self.writers:
            w.end(summary)
        self._update()

    def _update(self) -> None:
        self.reader_gone = all(w.reader_gone for w in self.writers)


FORMATS: dict[str, type[ResultWriter]] = {
    cls.name: cls for cls in (TextWriter, JsonWriter, VttWriter, SrtWriter, CsvWriter, TsvWriter, ParquetWriter)
}


def stream_formats() -> list[str]:
    """The formats --format may print on standard output."""
    return [name for name, cls in FORMATS.items() if not cls.binary]


def make_writer(format_name: str, out: Any, destination: str = "standard output",
                columns: tuple[str, ...] = ()) -> ResultWriter:
    return FORMATS[format_name](out, destination, columns)
