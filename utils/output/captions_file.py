"""--captions-file: the records also written to a file, in the format its extension names, atomically.

stdout keeps ``--format``; the file gets the format of its extension (``EXTENSIONS``). The file is
written to a hidden temporary file beside it and renamed when the run ends (the end of the input, q,
the first Ctrl-C); an error or a second Ctrl-C removes the temporary file and leaves nothing. With
--resume it is appended to as each input finishes instead (utils/output/resume.py); while a --resume
run appends to a file, a run without --resume is refused that file, at its start and at its rename.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

from utils.files.atomic import commit, create_temp_beside
from utils.files.checks import check_output_slot, check_writable_folder, never_an_input
from utils.output.formats import FORMATS, Mode, ResultWriter, Tee, make_writer, require_pyarrow
from utils.output.resume import Resumable, appending, appending_kept_out
from utils.support.errors import CaptionError

OPTION = "--captions-file"
EXTENSIONS = {".vtt": "vtt", ".srt": "srt", ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json",
              ".txt": "text", ".parquet": "parquet"}


def file_format(path: Path) -> str | None:
    """The format a captions file's extension names (any letter case), or None."""
    return EXTENSIONS.get(path.suffix.lower())


def captions_file_usage_error(path: Path | None, mode: Mode) -> str | None:
    if path is None:
        return None
    name = file_format(path)
    if name is None:
        known = " ".join(EXTENSIONS)
        return f"{OPTION} {path}: unknown extension {path.suffix or '(none)'!r}; use one of {known}"
    modes = FORMATS[name].modes
    if mode in modes:
        return None
    return f"{OPTION} {path}: {path.suffix} ({name}) is for {' and '.join(sorted(modes))}, not {mode}"


def check_captions_file(path: Path, inputs: list[Path]) -> None:
    """Before any model loads: what its format needs installed; a folder that exists and takes files; at
    the path nothing but a regular file (never a folder, link, pipe or device) that no --resume run is
    appending to, and never an input."""
    if file_format(path) == "parquet":
        require_pyarrow(OPTION)
    check_output_slot(path)
    check_writable_folder(path.parent, OPTION)
    never_an_input([path], inputs, OPTION)
    with appending_kept_out(path, shared=True):
        pass


@contextmanager
def open_writers(format_name: str, out: TextIO | None, captions_file: Path | None,
                 resumable: Resumable | None = None, retried: set[str] | None = None,
                 columns: tuple[str, ...] = ()) -> Iterator[ResultWriter]:
    """The writer for stdout in ``format_name`` (``out`` None: nothing on stdout), and with
    ``captions_file`` also one for that file (in its extension's format), together; the file is
    committed when the block ends normally, removed otherwise. With ``resumable`` (--resume) the file is
    appended to instead, record by record, and kept however the block ends (utils/output/resume.py);
    ``retried``: the inputs whose failed records it drops. ``columns``: an image table's step columns
    (formats.ResultWriter)."""
    stdout = make_writer(format_name, out, columns=columns)
    if captions_file is None:
        yield stdout
        return
    if resumable is not None:
        with appending(resumable, retried or set(), echoed=out is not None) as copy:
            yield Tee([stdout, copy])
        return
    name = file_format(captions_file)
    if name is None:
        raise CaptionError(f"{OPTION} {captions_file}: unknown extension")
    try:
        fd, tmp = create_temp_beside(captions_file)
    except OSError as exc:
        raise CaptionError(f"cannot write {captions_file}: {exc.strerror or exc}") from exc
    binary = FORMATS[name].binary
    file: IO[Any] = (os.fdopen(fd, "wb") if binary
                     else os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline=""))
    copy = make_writer(name, file, str(captions_file), columns)
    copy.quiet = True  # problems with the records are reported once, by the stdout writer
    try:
        yield Tee([stdout, copy])
        if copy.failure is not None:
            raise CaptionError(f"cannot write {captions_file}: {copy.failure}; it was not written")
        check_output_slot(captions_file)  # something put there while the run went on is not replaced
        try:
            file.flush()
            os.fsync(file.fileno())  # the slow part done first: the file at the path is held for a rename only
            with appending_kept_out(captions_file, shared=False):  # a --resume run that began since
                commit(file, tmp, captions_file)
        except CaptionError as exc:
            raise CaptionError(f"{exc}; it was not replaced, and this run's records are on standard output "
                               "only") from None
        except OSError as exc:
            raise CaptionError(f"cannot write {captions_file}: {exc.strerror or exc}; it was not written") from exc
    except BaseException:
        copy.abandon()
        with contextlib.suppress(OSError):  # what is still buffered may not fit either: it is dropped anyway
            file.close()
        tmp.unlink(missing_ok=True)
        raise
