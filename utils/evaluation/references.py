"""Reference captions: COCO captions JSON, Karpathy's dataset JSON, or a CSV/TSV table, told apart by content.

- COCO captions (``captions_val2014.json``): ``images[].id/file_name``, ``annotations[].image_id/caption``.
- Karpathy's split file (``dataset_coco.json``, also Flickr8k/30k): ``images[].filename``,
  ``images[].sentences[].raw``, ``images[].split``, and for COCO ``images[].cocoid``.
- A table with a header naming the columns ``image`` and ``caption`` (others are ignored), one row per
  reference, several rows per image; tab-separated when its header holds a tab.

Images are known by their file name (the part after the last "/"), which is how inputs find them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from utils.errors import CaptionError
from utils.evaluation.files import caption_problem, file_name, read_limited, shown

FORMATS = {"coco": "COCO captions JSON", "karpathy": "Karpathy's dataset JSON", "csv": "CSV", "tsv": "TSV"}
EXPECTED = ("expected COCO captions JSON (images, annotations), Karpathy's dataset JSON (images with "
            "sentences) or a CSV/TSV table with a header image,caption")


@dataclass(frozen=True)
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
    source = shown(str(path), 200)
    data = read_limited(path, "references file")
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's CSV may start with a byte order mark
    except UnicodeDecodeError as exc:
        raise CaptionError(f"{source} is not UTF-8 text (byte {exc.start}); {EXPECTED}") from None
    head = text.lstrip()[:1]
    if head in ("{", "["):
        return _from_json(source, text, split)
    table = _from_table(source, text)
    if split is not None:
        raise CaptionError(f"--split is for Karpathy's dataset JSON; {source} is {FORMATS[table.format]}")
    return table


def _from_json(source: str, text: str, split: str | None) -> References:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CaptionError(f"{source} is not a references file: JSON nested too deeply") from None
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
            raise CaptionError(f"{source}: images[{i}]: two images are named {shown(name)}, with ids "
                               f"{ids[name]} and {image_id}; references are matched by file name")
        if names.setdefault(image_id, name) != name:
            raise CaptionError(f"{source}: images[{i}]: id {image_id} is both {shown(names[image_id])} and "
                               f"{shown(name)}")
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
    return References(source, "coco", None, {
        name: ReferenceImage(tuple(captions[image_id]), image_id)
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
            raise CaptionError(f"{source}: images[{i}] has the file name {shown(name)} of images[{where_named[name]}]; "
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
        present = ", ".join(shown(s, 40) for s in sorted(splits)[:20]) or "none"
        raise CaptionError(f"{source} has no split {shown(split, 40)!r}; its splits are: {present}")
    return References(source, "karpathy", split, kept)


def _from_table(source: str, text: str) -> References:
    first_line = text.split("\n", 1)[0].rstrip("\r")
    kind = "tsv" if "\t" in first_line else "csv"
    reader = csv.reader(io.StringIO(text, newline=""), dialect=csv.excel_tab if kind == "tsv" else csv.excel)
    images: dict[str, list[str]] = {}
    try:
        header = [field.strip().lower() for field in next(reader, [])]
        if "image" not in header or "caption" not in header:
            raise CaptionError(f"{source} is not a references file: {EXPECTED}; its first line is "
                               f"{shown(first_line)!r}")
        image_at, caption_at = header.index("image"), header.index("caption")
        for row in reader:
            if not row or row == [""]:
                continue  # a blank line
            where = f"line {reader.line_num}"
            if len(row) <= max(image_at, caption_at):
                raise CaptionError(f"{source}: {where} has {len(row)} fields, not the image and its caption")
            name = _name(source, where, row[image_at].strip(), "image")
            images.setdefault(name, []).append(_caption(source, where, row[caption_at]))
    except csv.Error as exc:
        raise CaptionError(f"{source}: line {reader.line_num}: {exc}") from None
    return References(source, kind, None, {name: ReferenceImage(tuple(c)) for name, c in images.items()})
