"""Turning -i arguments (files, folders, glob patterns) into the list of images to caption."""

from __future__ import annotations

import glob
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


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _folder_images(folder: Path, name: str) -> list[InputItem]:
    try:
        found = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))
    except OSError as exc:
        return [InputItem(name, None, f"cannot list folder {name}: {exc.strerror or exc}")]
    if not found:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        return [InputItem(name, None, f"folder {name} has no images ({kinds})")]
    return [InputItem(str(Path(name) / p.name), p) for p in found]


def _pattern_images(pattern: str) -> list[InputItem]:
    matches = sorted(glob.glob(pattern, recursive=True))
    files = [m for m in matches if Path(m).is_file() and is_image_name(Path(m))]
    if not files:
        return [InputItem(pattern, None, f"no image files match {pattern}")]
    return [InputItem(m, Path(m)) for m in files]


def expand_inputs(specs: list[str]) -> list[InputItem]:
    """Files are taken as given (whatever their name), folders give their images sorted by name,
    and anything else containing * ? or [ is a glob pattern."""
    items: list[InputItem] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            items += _folder_images(path, spec)
        elif path.is_file():
            items.append(InputItem(spec, path))
        elif path.exists():
            # A FIFO with no writer would block the read forever; a device or socket is no image file.
            items.append(InputItem(spec, None, f"{spec} is not a regular file (a pipe, device or socket)"))
        elif glob.has_magic(spec):
            items += _pattern_images(spec)
        else:
            items.append(InputItem(spec, None, f"{spec} does not exist"))
    return items
