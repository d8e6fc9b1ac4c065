"""Turning -i arguments (files, folders, glob patterns) into the list of images to caption."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class InputItem:
    name: str  # the path as the user gave it (or as found in a folder or by a pattern)
    path: Path | None
    error: str | None = None

    def naming(self, message: str) -> str:
        """``message``, prefixed with this input's name unless it already says which input it is about
        (the listing's own errors always do): one rule for every message about an input."""
        return message if self.name in message or self.path is None else f"{self.name}: {message}"


def is_image_name(path: str | Path) -> bool:
    # splitext, not Path.suffix: a folder's names are tested as strings, without a Path for each.
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(folder: Path, name: str) -> Iterator[InputItem]:
    # Names, not Paths, while sorting: a folder of a million photos is listed in a tenth of the memory.
    try:
        with os.scandir(folder) as entries:
            found = sorted(entry.name for entry in entries if entry.is_file() and is_image_name(entry.name))
    except OSError as exc:
        yield InputItem(name, None, f"cannot list folder {name}: {exc.strerror or exc}")
        return
    if not found:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        yield InputItem(name, None, f"folder {name} has no images ({kinds})")
        return
    prefix = str(Path(name))  # as Path joins it: without "./", a trailing slash or doubled ones
    for found_name in found:
        yield InputItem(found_name if prefix == "." else os.path.join(prefix, found_name), folder / found_name)


def _pattern_images(pattern: str) -> Iterator[InputItem]:
    matches = sorted(glob.glob(pattern, recursive=True))
    files = [m for m in matches if Path(m).is_file() and is_image_name(m)]
    if not files:
        yield InputItem(pattern, None, f"no image files match {pattern}")
    for m in files:
        yield InputItem(m, Path(m))


def iter_inputs(specs: list[str]) -> Iterator[InputItem]:
    """Files are taken as given (whatever their name), folders give their images sorted by name,
    and anything else containing * ? or [ is a glob pattern. Listed as they are asked for: one folder's
    or pattern's names at a time are in memory."""
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            yield from _folder_images(path, spec)
        elif path.is_file():
            yield InputItem(spec, path)
        elif path.exists():
            # A FIFO with no writer would block the read forever; a device or socket is no image file.
            yield InputItem(spec, None, f"{spec} is not a regular file (a pipe, device or socket)")
        elif glob.has_magic(spec):
            yield from _pattern_images(spec)
        else:
            yield InputItem(spec, None, f"{spec} does not exist")


def expand_inputs(specs: list[str]) -> list[InputItem]:
    """Every input of ``specs`` (iter_inputs), listed at once."""
    return list(iter_inputs(specs))
