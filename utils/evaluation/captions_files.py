"""Captions made earlier (--score-captions), told apart by content:

- this program's JSON Lines (``--json``): ``{"input": ..., "caption": ... or null, ...}`` per line;
- this program's table (``--format csv/tsv``): a header beginning ``input,caption,``;
- a COCO results file: ``[{"image_id": int, "caption": str}, ...]``, matched through the references' ids.

Names that were not UTF-8 were written as their own bytes (surrogateescape), and are read back so.
Records without a caption (inputs that failed) are kept, with caption None, to be counted.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.evaluation.files import caption_problem, file_name, read_limited
from utils.evaluation.references import References
from utils.support.errors import CaptionError
from utils.support.text import shortened

FORMATS = {"jsonl": "JSON Lines", "csv": "CSV", "tsv": "TSV", "coco-results": "COCO results JSON"}
EXPECTED = ("expected this program's --json output (JSON Lines), its --format csv/tsv table (header "
            "input,caption,...) or a COCO results file ([{\"image_id\": ..., \"caption\": ...}])")


@dataclass(frozen=True)
class Candidate:
    """One caption to score."""

    name: str  # how messages name it: the input as it was given, or the image's file name or id (COCO results)
    key: str | None  # the references' file name it is scored against; None: no reference image can be its
    caption: str | None  # None: the input got no caption (its record is a failure)


@dataclass(frozen=True)
class CaptionsFile:
    source: str  # the file, as messages name it
    format: str  # a key of FORMATS
    candidates: list[Candidate]


def candidates_from_records(records: Iterable[tuple[str, str | None]]) -> list[Candidate]:
    """Candidates from (input as given, caption or None) pairs, as image mode makes them."""
    return [Candidate(name, file_name(name), caption) for name, caption in records]


def read_captions(path: Path, references: References) -> CaptionsFile:
    """The captions in ``path``; ``references`` give a COCO results file's ids their file names."""
    source = shortened(str(path), 200)
    text = read_limited(path, "captions file").decode("utf-8-sig", errors="surrogateescape")
    head = text.lstrip()[:1]
    if head == "[":
        return CaptionsFile(source, "coco-results", _from_coco_results(source, text, references))
    if head == "{":
        return CaptionsFile(source, "jsonl", _from_json_lines(source, text))
    return _from_table(source, text)


def _checked(source: str, where: str, caption: Any, optional: bool) -> str | None:
    if caption is None and optional:
        return None
    if not isinstance(caption, str):
        raise CaptionError(f"{source}: {where} has no caption")
    if (problem := caption_problem(caption)) is not None:
        raise CaptionError(f"{source}: {where}: {problem}")
    return caption


def _from_json_lines(source: str, text: str) -> list[Candidate]:
    candidates = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise CaptionError(f"{source}: {where} is not a JSON object; {EXPECTED}") from None
        if not isinstance(record, dict):
            raise CaptionError(f"{source}: {where} is not a JSON object; {EXPECTED}")
        if "input" not in record and "time" in record:
            raise CaptionError(f"{source} holds a video's captions (time, frame); only images can be scored")
        name = record.get("input")
        if not isinstance(name, str) or not file_name(name):
            raise CaptionError(f"{source}: {where} has no input")
        if "caption" not in record:
            raise CaptionError(f"{source}: {where} has no caption")
        caption = _checked(source, where, record["caption"], optional=True)
        candidates.append(Candidate(name, file_name(name), caption))
    return candidates


def _from_table(source: str, text: str) -> CaptionsFile:
    first_line = text.split("\n", 1)[0].rstrip("\r")
    kind = "tsv" if "\t" in first_line else "csv"
    reader = csv.reader(io.StringIO(text, newline=""), dialect=csv.excel_tab if kind == "tsv" else csv.excel)
    candidates = []
    try:
        header = next(reader, [])
        if header[:1] == ["time"]:
            raise CaptionError(f"{source} holds a video's captions (time, frame); only images can be scored")
        if header[:2] != ["input", "caption"]:
            raise CaptionError(f"{source}: {EXPECTED}; its first line is {shortened(first_line)!r}")
        error_at = header.index("error") if "error" in header else None
        for row in reader:
            if not row or row == [""]:
                continue
            where = f"line {reader.line_num}"
            if len(row) < 2 or not file_name(row[0]):
                raise CaptionError(f"{source}: {where} has no input and caption")
            failed = row[1] == "" and error_at is not None and len(row) > error_at and row[error_at] != ""
            caption = None if failed else _checked(source, where, row[1], optional=False)
            candidates.append(Candidate(row[0], file_name(row[0]), caption))
    except csv.Error as exc:
        raise CaptionError(f"{source}: line {reader.line_num}: {exc}") from None
    return CaptionsFile(source, kind, candidates)


def _from_coco_results(source: str, text: str, references: References) -> list[Candidate]:
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CaptionError(f"{source} is not a captions file: JSON nested too deeply") from None
    if not isinstance(results, list):
        raise CaptionError(f"{source}: {EXPECTED}")
    names = references.names_by_id()
    if not names:
        raise CaptionError(f"{source} is a COCO results file, which names images by COCO id, and the references "
                           f"{references.source} give no ids; use COCO captions JSON or Karpathy's dataset_coco.json")
    seen: dict[int, int] = {}
    candidates = []
    for i, result in enumerate(results):
        where = f"[{i}]"
        image_id = result.get("image_id") if isinstance(result, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise CaptionError(f"{source}: {where} has no integer image_id; {EXPECTED}")
        if image_id in seen:
            raise CaptionError(f"{source}: [{seen[image_id]}] and {where} are both captions of image_id {image_id}; "
                               "keep one caption per image")
        seen[image_id] = i
        caption = _checked(source, where, result.get("caption"), optional=False)
        name = names.get(image_id)
        candidates.append(Candidate(name or f"image_id {image_id}", name, caption))
    return candidates
