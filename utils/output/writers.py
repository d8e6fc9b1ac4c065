"""Output formats: one small class per format behind one interface, chosen by ``--format``.

A writer is given records as they are made (``write``), so a pipe sees each caption at once, and a
summary when the run ends (``end``). Adding a format means adding a ``ResultWriter`` subclass and its
entry in ``FORMATS``; image mode and video mode need no change.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from typing import ClassVar, Literal, TextIO

from tqdm import tqdm

from utils.errors import CaptionError
from utils.output.records import CaptionRecord, RunSummary, as_json

logger = logging.getLogger("image_captioning_pytorch")

Mode = Literal["images", "video"]


class ResultWriter:
    """Writes records of one format to a text stream; a reader that goes away ends writing quietly."""

    name: ClassVar[str]
    modes: ClassVar[frozenset[Mode]] = frozenset({"images", "video"})  # what the format can describe

    def __init__(self, out: TextIO | None) -> None:
        self.out = out  # None: closed before the start (`>&-` leaves Python no sys.stdout); nothing is written
        self.reader_gone = False  # set when the stream's reader left (piped into `head`): stop if nothing else


    def begin(self, inputs: int | None = None) -> None:
        """Called once before the first record; ``inputs``: how many images (None for video)."""

    def write(self, record: CaptionRecord) -> None:
        raise NotImplementedError

    def end(self, summary: RunSummary) -> None:
        """Called once after the last record."""

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
            _silence(self.out)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CaptionError(f"cannot write the captions to {_stream_name(self.out)}: {reason}") from None


def _stream_name(out: TextIO) -> str:
    name = getattr(out, "name", None)
    return "standard output" if name in (None, "<stdout>") or not isinstance(name, str) else name


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


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a file name) written as \\xNN escapes."""
    return text.translate(_CONTROL)


class TextWriter(ResultWriter):
    """For people: the caption (prefixed by the image's name when there are several, by the time in
    video), its n-best list, a benchmark table at the end. Failed images go to the log (stderr)."""

    name = "text"

    def begin(self, inputs: int | None = None) -> None:
        self._names = inputs != 1

    def write(self, record: CaptionRecord) -> None:
        if record.result is None:
            logger.error("%s", printable(record.error or ""))
            return
        caption = printable(record.result.caption)
        if record.video is not None:
            line = f"{format_time(record.video.time)} {caption}"
        else:
            line = f"{printable(record.input)}: {caption}" if self._names else caption
        for rank, ranked in enumerate(record.result.nbest or [], start=1):
            line += f"\n  {rank}. {ranked.score:.4f}  {printable(ranked.caption)}"
        self._emit(line)

    def end(self, summary: RunSummary) -> None:
        if summary.benchmark_runs and summary.benchmark:
            self._emit(benchmark_table(summary))


def benchmark_table(summary: RunSummary) -> str:
    lines = [
        f"benchmark: {summary.model} on {summary.backend}, {summary.benchmark_runs} runs x {summary.images} "
        "images (ms)",
        f"{'stage':<12}{'min':>10}{'median':>10}{'max':>10}",
        f"{'load':<12}{summary.load_ms:>10.1f}",
    ]
    for stage, values in summary.benchmark.items():
        lines.append(f"{stage:<12}{min(values):>10.1f}{statistics.median(values):>10.1f}{max(values):>10.1f}")
    return "\n".join(lines)


class JsonWriter(ResultWriter):
    """For programs: one JSON object per record (JSON Lines), failed inputs included."""

    name = "json"

    def write(self, record: CaptionRecord) -> None:
        self._emit(json.dumps(as_json(record), ensure_ascii=False))


FORMATS: dict[str, type[ResultWriter]] = {cls.name: cls for cls in (TextWriter, JsonWriter)}


def make_writer(format_name: str, out: TextIO | None) -> ResultWriter:
    return FORMATS[format_name](out)
