"""The --ray mode's --captions-file: one row per input with four columns, input, caption, confidence and
error (docs/large-runs.md#the-captions-file), as Parquet, JSON Lines, CSV or TSV. Like every file this
program writes, it is written beside its place under a temporary name and renamed there at the end, or
removed if the run fails.

JSON Lines rows are the image records' own shape (docs/output.md#json-output) without what the actors
do not send back (indices, timings): ``{"input", "caption", "confidence"}``, or ``{"input", "caption":
null, "error"}``. CSV and TSV have the four columns; Parquet the same, typed (string, string, double,
string; null where a value is absent).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from utils.errors import CaptionError
from utils.files.atomic import commit, create_temp_beside, replace_durably
from utils.files.checks import check_output_slot

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
COLUMNS = ("input", "caption", "confidence", "error")
PARQUET_ROWS = 4096  # rows per Parquet row group: a few hundred KB held at a time


class RowsFile:
    """``with RowsFile(path) as out: out.write(input, caption, confidence, error)``; committed when the
    block ends normally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = OUTPUT_FORMATS[path.suffix.lower()]
        self.rows = 0
        self._pending: list[tuple[str, str | None, float | None, str | None]] = []
        self._parquet: Any = None  # pyarrow.parquet.ParquetWriter
        self._text: Any = None
        self._csv: Any = None
        self._tmp: Path | None = None

    def __enter__(self) -> RowsFile:
        try:
            fd, self._tmp = create_temp_beside(self.path)
        except OSError as exc:
            raise CaptionError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        if self.format == "parquet":
            os.close(fd)
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(str(self._tmp), _schema())
        else:
            self._text = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")
            if self.format != "json":
                self._csv = csv.writer(self._text, dialect=csv.excel_tab if self.format == "tsv" else csv.excel,
                                       lineterminator="\n")
                self._csv.writerow(COLUMNS)
        return self

    def write(self, name: str, caption: str | None, confidence: float | None, error: str | None) -> None:
        self.rows += 1
        try:
            if self._parquet is not None:
                self._pending.append((name, caption, confidence, error))
                if len(self._pending) >= PARQUET_ROWS:
                    self._flush_parquet()
            elif self._csv is not None:
                self._csv.writerow((name, caption or "", "" if confidence is None else confidence, error or ""))
            else:
                record: dict[str, Any] = {"input": name, "caption": caption}
                record.update({"confidence": confidence} if caption is not None else {"error": error})
                self._text.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise CaptionError(f"cannot write {self.path}: {exc.strerror or exc}; it was not written") from exc

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        rows = [(_utf8(name), caption, confidence, error) for name, caption, confidence, error in self._pending]
        columns = {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}
        self._parquet.write_table(pa.table(columns, schema=_schema()))
        self._pending = []

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        tmp = self._tmp
        assert tmp is not None
        if kind is not None:  # the run failed or was stopped: nothing is left behind
            self._discard(tmp)
            return
        try:
            check_output_slot(self.path)  # something put there while the run went on is not replaced
            if self._parquet is not None:
                if self._pending or self.rows == 0:
                    self._flush_parquet()
                self._parquet.close()
                replace_durably(tmp, self.path)
            else:
                commit(self._text, tmp, self.path)
        except OSError as error:
            self._discard(tmp)
            raise CaptionError(f"cannot write {self.path}: {error.strerror or error}; it was not written") from error
        except BaseException:
            self._discard(tmp)
            raise

    def _discard(self, tmp: Path) -> None:
        with contextlib.suppress(Exception):
            if self._parquet is not None:
                self._parquet.close()
            elif self._text is not None:
                self._text.close()
        tmp.unlink(missing_ok=True)


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("input", pa.string()), ("caption", pa.string()), ("confidence", pa.float64()),
                      ("error", pa.string())])


def _utf8(name: str) -> str:
    """A file name that is not valid UTF-8 (its bytes kept as lone surrogates) in the UTF-8 Parquet requires,
    its stray bytes shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
