"""Reference captions: COCO captions JSON, Karpathy's dataset JSON, or a CSV/TSV table, told apart by content.

- COCO captions (``captions_val2014.json``): ``images[].id/file_name``, ``annotations[].image_id/caption``.
- Karpathy's split file (``dataset_coco.json``, also Flickr8k/30k): ``images[].filename``,
  ``images[].sentences[].raw``, ``images[].split``, and for COCO ``images[].cocoid``.
- A table with a header naming the columns ``image`` and ``caption`` (others are ignored), one row per
  reference, several rows per image; tab-separated when its header holds a tab.

Images are known by their file name (the part after the last "/"), which is how inputs find them.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from utils.evaluation.files import (
    MAX_FILE_BYTES,
    READ_BUFFER_BYTES,
    caption_problem,
    file_name,
    open_limited,
    read_rest,
    too_large,
)
from utils.support.errors import CaptionError
from utils.support.text import shortened

FORMATS = {"coco": "COCO captions JSON", "karpathy": "Karpathy's dataset JSON", "csv": "CSV", "tsv": "TSV"}
EXPECTED = ("expected COCO captions JSON (images, annotations), Karpathy's dataset JSON (images with "
            "sentences) or a CSV/TSV table with a header image,caption")

# The only keys of a JSON references file that are read; the others (Karpathy's tokens, above all) are
# dropped as each object is parsed, so that they never take memory all at once.
JSON_KEYS = frozenset({"images", "annotations", "id", "file_name", "filename", "sentences", "split", "cocoid",
                       "image_id", "caption", "raw"})
SHARED_KEYS = frozenset({"caption", "raw", "split"})  # keys whose short values are kept once (see Shared)
SHARED_CHARS = 24  # the longest text kept once: a tag or a few words; a longer caption is rarely repeated
BLANK = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.isspace() finds among ASCII characters
LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)  # no __dict__: 48 bytes an image, not 88, in files of millions
class ReferenceImage:
    captions: tuple[str, ...]
    image_id: int | None = None  # COCO's image id (COCO captions: images[].id; Karpathy: cocoid)


@dataclass(frozen=True)
class References:
    source: str  # the file, as messages name it
    format: str  # a key of FORMATS
    split: str | None  # Karpathy: the split kept, or None for all
    images: dict[str, ReferenceImage]  # by file name, in the file's order; each with at least one caption

    def names_by_id(self) -> dict[int, str]:
        return {image.image_id: name for name, image in self.images.items() if image.image_id is not None}

    @property
    def captions(self) -> int:
        return sum(len(image.captions) for image in self.images.values())


def read_references(path: Path, split: str | None = None) -> References:
    """The references in ``path``; ``split`` keeps one split of Karpathy's file. CaptionError, naming the
    file and the place, for anything else than the three formats."""
    source = shortened(str(path), 200)
    with open_limited(path, "references file") as file:
        if not _starts_like_json(file):
            table = _from_table(source, _Lines(source, file))
            if split is not None:
                raise CaptionError(f"--split is for Karpathy's dataset JSON; {source} is {FORMATS[table.format]}")
            return table
        return _from_json(source, _json_text(source, file), split)


def _starts_like_json(file: io.BufferedReader[io.FileIO]) -> bool:
    """Whether the first character that is not blank opens a JSON object or list, looking no further than
    the file's first READ_BUFFER_BYTES (nothing is consumed)."""
    head = file.peek(READ_BUFFER_BYTES)[:READ_BUFFER_BYTES]
    return head.removeprefix(codecs.BOM_UTF8).lstrip(BLANK)[:1] in (b"{", b"[")


def _not_utf8(source: str, offset: int) -> CaptionError:
    return CaptionError(f"{source} is not UTF-8 text (byte {offset}); {EXPECTED}")


def _json_text(source: str, file: io.BufferedReader[io.FileIO]) -> str:
    """The whole text, for json's parser; its bytes are let go before that parser starts."""
    data = read_rest(file, "references file", source)
    try:
        return data.decode("utf-8-sig")  # a spreadsheet's export may start with a byte order mark
    except UnicodeDecodeError as exc:
        raise _not_utf8(source, exc.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)) from None


class _Lines:
    """A table's text a line at a time, each with its line break ("\\r\\n", "\\r" or "\\n", as csv's reader
    wants them), decoded a block of lines at a time: the whole text is never held, neither as bytes nor
    as a string (which a single character beyond Latin-1 makes 2 or 4 bytes a character)."""

    def __init__(self, source: str, file: io.BufferedReader[io.FileIO]) -> None:
        self._source, self._file = source, file
        self.ended = False  # every line has been given, and one more asked for

    def __iter__(self) -> Iterator[str]:
        offset = 0  # of the block in the file
        while block := self._block(offset):
            start = 3 if offset == 0 and block.startswith(codecs.BOM_UTF8) else 0  # a spreadsheet's export
            try:
                text = block[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(self._source, offset + start + exc.start) from None
            offset += len(block)
            yield from io.StringIO(text, newline="")  # lines end at "\\r\\n", "\\r" or "\\n", kept
        self.ended = True

    def _block(self, offset: int) -> bytes:
        """The next READ_BUFFER_BYTES or so, to the end of a line: a block never ends inside a character or
        between the "\\r" and "\\n" of a line break, as no UTF-8 character holds either byte."""
        block = self._file.read(READ_BUFFER_BYTES)
        if block and not block.endswith(b"\n"):
            block += self._file.readline(MAX_FILE_BYTES + 1 - offset - len(block))
        if offset + len(block) > MAX_FILE_BYTES:  # the file grew while it was read
            raise too_large("references file", self._source)
        return block


class _Shared:
    """Short texts kept once however often they occur (one-word captions, split names), so that a file of
    millions of them costs a pointer each, not a string each. Longer texts are not looked up: they are
    rarely repeated, and remembering each would cost more than it saves."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self._images: dict[str, ReferenceImage] = {}  # by its one caption, a short one

    def __call__(self, text: str) -> str:
        return self._seen.setdefault(text, text) if len(text) <= SHARED_CHARS else text

    def image(self, captions: str | list[str]) -> ReferenceImage:
        """The ReferenceImage of ``captions`` (one, or a list); of one short caption, one for every image
        that has only it (it is immutable)."""
        if isinstance(captions, list):
            return ReferenceImage(tuple(captions))
        if len(captions) > SHARED_CHARS:
            return ReferenceImage((captions,))
        if (image := self._images.get(captions)) is None:
            image = self._images[captions] = ReferenceImage((captions,))
        return image

    def json_object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        """json's object_pairs_hook: the keys that are read (the last of a repeated key, as json keeps),
        their short texts shared."""
        return {key: self(value) if key in SHARED_KEYS and isinstance(value, str) else value
                for key, value in pairs if key in JSON_KEYS}


def _from_json(source: str, text: str, split: str | None) -> References:
    try:
        document = json.loads(text, object_pairs_hook=_Shared().json_object)
    except json.JSONDecodeError as exc:
        raise CaptionError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CaptionError(f"{source} is not a references file: JSON nested too deeply") from None
    del text  # the caller keeps no reference: the text goes before the references are built
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        what = "a list (a COCO results file?)" if isinstance(document, list) else "JSON without an images list"
        raise CaptionError(f"{source} is not a references file: it is {what}; {EXPECTED}")
    if "annotations" in document:
        if split is not None:
            raise CaptionError(f"--split is for Karpathy's dataset JSON; {source} is {FORMATS['coco']}")
        return _from_coco(source, document["images"], document["annotations"])
    return _from_karpathy(source, document["images"], split)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _caption(source: str, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise CaptionError(f"{source}: {where} has no caption")
    if (problem := caption_problem(value)) is not None:
        raise CaptionError(f"{source}: {where}: {problem}")
    return value


def _name(source: str, where: str, value: Any, key: str) -> str:
    name = file_name(value) if isinstance(value, str) else ""
    if not name:
        raise CaptionError(f"{source}: {where} has no {key}")
    return name


def _from_coco(source: str, images: list[Any], annotations: Any) -> References:
    if not isinstance(annotations, list):
        raise CaptionError(f"{source}: annotations is not a list")
    ids: dict[str, int] = {}  # file name -> id
    names: dict[int, str] = {}  # id -> file name
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise CaptionError(f"{source}: images[{i}] is not an object")
        image_id = image.get("id")
        if not _is_int(image_id):
            raise CaptionError(f"{source}: images[{i}] has no integer id")
        name = _name(source, f"images[{i}]", image.get("file_name"), "file_name")
        if ids.setdefault(name, image_id) != image_id:
            raise CaptionError(f"{source}: images[{i}]: two images are named {shortened(name)}, with ids "
                               f"{ids[name]} and {image_id}; references are matched by file name")
        if names.setdefault(image_id, name) != name:
            raise CaptionError(f"{source}: images[{i}]: id {image_id} is both {shortened(names[image_id])} and "
                               f"{shortened(name)}")
    captions: dict[int, list[str]] = {}
    for j, annotation in enumerate(annotations):
        where = f"annotations[{j}]"
        if not isinstance(annotation, dict):
            raise CaptionError(f"{source}: {where} is not an object")
        image_id = annotation.get("image_id")
        if not _is_int(image_id):
            raise CaptionError(f"{source}: {where} has no integer image_id")
        if image_id not in names:
            raise CaptionError(f"{source}: {where}: image_id {image_id} is not among the images")
        captions.setdefault(image_id, []).append(_caption(source, where, annotation.get("caption")))
    return References(source, "coco", None, {  # each list goes as its tuple is made: not both at once
        name: ReferenceImage(tuple(captions.pop(image_id)), image_id)
        for name, image_id in ids.items() if image_id in captions
    })


def _from_karpathy(source: str, images: list[Any], split: str | None) -> References:
    kept: dict[str, ReferenceImage] = {}
    where_named: dict[str, int] = {}
    splits: set[str] = set()
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise CaptionError(f"{source}: images[{i}] is not an object")
        sentences = image.get("sentences")
        if not isinstance(sentences, list):
            raise CaptionError(f"{source}: images[{i}] has no sentences; {EXPECTED}")
        image_split = image.get("split")
        if isinstance(image_split, str):
            splits.add(image_split)
        elif split is not None:
            raise CaptionError(f"{source}: images[{i}] has no split")
        if split is not None and image_split != split:
            continue
        name = _name(source, f"images[{i}]", image.get("filename"), "filename")
        if name in where_named:
            raise CaptionError(f"{source}: images[{i}] has the file name {shortened(name)} of "
                               f"images[{where_named[name]}]; "
                               "references are matched by file name")
        where_named[name] = i
        captions = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            captions.append(_caption(source, f"images[{i}].sentences[{k}]", raw))
        cocoid = image.get("cocoid")
        if captions:
            kept[name] = ReferenceImage(tuple(captions), cocoid if _is_int(cocoid) else None)
    if split is not None and split not in splits:
        present = ", ".join(shortened(s, 40) for s in sorted(splits)[:20]) or "none"
        raise CaptionError(f"{source} has no split {shortened(split, 40)!r}; its splits are: {present}")
    return References(source, "karpathy", split, kept)


def _from_table(source: str, lines: _Lines) -> References:
    rows = iter(lines)
    line = next(rows, None)
    first_line = "" if line is None else line.rstrip("\r\n")
    kind = "tsv" if "\t" in first_line else "csv"
    reader = csv.reader(itertools.chain(() if line is None else (line,), rows),
                        dialect=csv.excel_tab if kind == "tsv" else csv.excel)
    images: dict[str, str | list[str]] = {}  # a caption, or a list of two or more
    shared = _Shared()
    end = 0  # the last line of the last row read
    try:
        header = next(reader, [])
        _check_closed(source, lines, reader.line_num, header)
        header = [field.strip().lower() for field in header]
        if "image" not in header or "caption" not in header:
            raise CaptionError(f"{source} is not a references file: {EXPECTED}; its first line is "
                               f"{shortened(first_line)!r}")
        image_at, caption_at = header.index("image"), header.index("caption")
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num  # a row's lines: more than one where a quoted field holds breaks
            _check_closed(source, lines, end, row)
            if not row or row == [""]:
                continue  # a blank line
            where = f"line {start}"
            if len(row) <= max(image_at, caption_at):
                raise CaptionError(f"{source}: {where} has {len(row)} fields, not the image and its caption")
            _add(images, _name(source, where, row[image_at].strip(), "image"),
                 shared(_caption(source, where, row[caption_at])))
    except csv.Error as exc:
        if reader.line_num > end + 1:  # a quoted field ran on over lines: a quote not closed, most likely
            raise CaptionError(f"{source}: line {end + 1}: {exc}, in a quoted field that runs on to line "
                               f"{reader.line_num}; is its closing quote missing?") from None
        raise CaptionError(f"{source}: line {reader.line_num}: {exc}") from None
    built: dict[str, Any] = images  # each value is replaced by its ReferenceImage in place: one table, not two
    for name, captions in images.items():
        built[name] = shared.image(captions)
    return References(source, kind, None, built)


def _add(images: dict[str, str | list[str]], name: str, caption: str) -> None:
    """Adds ``caption`` to ``name``'s. An image's first caption is kept alone, not in a list: a table of
    millions of images with one caption each would take a list each (about 100 bytes) for nothing."""
    captions = images.get(name)
    if captions is None:
        images[name] = caption
    elif isinstance(captions, str):
        images[name] = [captions, caption]
    else:
        captions.append(caption)


def _check_closed(source: str, lines: _Lines, end: int, row: list[str]) -> None:
    """Refuses ``row``, read up to line ``end``, if the file's end closed its last field. csv's reader ends
    a quoted field there as if its quote were closed (unless strict, which would also refuse text after a
    closing quote): the rest of the file would be one caption. Only such a row is read past the end."""
    if row and lines.ended:
        field = row[-1]  # it holds every line break since its quote
        opened = end - len(LINE_BREAK.findall(field)) + (1 if field.endswith(("\n", "\r")) else 0)
        raise CaptionError(f"{source}: line {opened}: the quote that opens a field there is never closed")
