"""Where annotated images go, and writing them so that nothing half-written is ever left."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

import cv2
import numpy as np

from utils.atomic import write_atomic
from utils.errors import CaptionError


def save_image(path: Path, image: np.ndarray) -> None:
    check_output_slot(path)  # again: the plan was checked before the models loaded, and folders change
    try:
        ok, encoded = cv2.imencode(path.suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise CaptionError(f"cannot encode an image as {path.suffix} for {path}")
    try:
        write_atomic(path, encoded.tobytes())
    except OSError as exc:
        raise CaptionError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_output_slot(path: Path) -> None:
    """Refuse to write at ``path`` when something other than a regular file is there. A symbolic link is
    never written through (its target would be replaced by our output) nor replaced; a pipe, device or
    socket is not a file to replace either."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CaptionError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(mode):
        raise CaptionError(f"cannot write {path}: it is a symbolic link, and this program never writes through "
                           "one; remove the link or choose another path")
    if stat.S_ISDIR(mode):
        raise CaptionError(f"cannot write {path}: it is a folder")
    if not stat.S_ISREG(mode):
        raise CaptionError(f"cannot write {path}: it is a pipe, device or socket, not a file; choose another path")


def device_folder(folder: Path) -> bool:
    """Whether ``folder`` is on the file system of /dev, where only devices belong (root may create files
    there: ``--captions-file /dev/stdout.csv`` would)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.stat(folder).st_dev == os.stat("/dev").st_dev
    except OSError:
        return False


def check_writable_folder(folder: Path, option: str = "--savepath") -> None:
    if not folder.exists():
        raise CaptionError(f"cannot save into {folder}: the folder does not exist")
    if not folder.is_dir():
        raise CaptionError(f"cannot save into {folder}: it is not a folder")
    if device_folder(folder):
        raise CaptionError(f"cannot save into {folder}: it holds the system's devices, not files; choose another "
                           f"{option}")
    if read_only_file_system(folder):
        raise CaptionError(f"cannot save into {folder}: it is on a read-only file system; choose another {option}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CaptionError(f"cannot save into {folder}: permission denied; choose another {option}")


def read_only_file_system(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def never_an_input(outputs: list[Path], inputs: list[Path], option: str = "--savepath") -> None:
    """The one rule for every output this program writes: it never replaces one of its inputs
    (compared after resolving links and relative paths)."""
    resolved_inputs = {p.resolve(): p for p in inputs}
    for out in outputs:
        if (source := resolved_inputs.get(out.resolve())) is not None:
            raise CaptionError(f"{option} would overwrite the input {source}; choose another path")


def _check_image_suffix(path: Path) -> None:
    if not path.suffix or not cv2.haveImageWriter(str(path)):
        raise CaptionError(
            f"cannot save {path}: {path.suffix or 'no extension'} is not an image format OpenCV writes; "
            "use e.g. .png or .jpg"
        )


def plan_outputs(inputs: list[Path], savepath: Path, many: bool) -> list[Path]:
    """Output path for each input: ``savepath`` itself for one input (or a file of the same name
    inside it if it is a folder), otherwise a file of the input's name inside folder ``savepath``.
    Checked before any work: writable, an image format, never an input, never two inputs to one file."""
    created: list[Path] = []
    if many or savepath.is_dir():
        if savepath.exists() and not savepath.is_dir():
            raise CaptionError(f"--savepath {savepath} is a file; with several inputs it must be a folder")
        created = [p for p in (savepath, *savepath.parents) if not p.exists()]
        try:
            savepath.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptionError(f"cannot create folder {savepath}: {exc.strerror or exc}") from exc
        outputs = [savepath / p.name for p in inputs]
    else:
        outputs = [savepath]
    try:
        _check_plan(inputs, outputs)
    except CaptionError:
        for folder in created:  # a refused plan leaves no trace (the folders are still empty)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return outputs


def _check_plan(inputs: list[Path], outputs: list[Path]) -> None:
    check_writable_folder(outputs[0].parent)
    never_an_input(outputs, inputs)
    seen: dict[Path, Path] = {}
    for src, out in zip(inputs, outputs, strict=True):
        _check_image_suffix(out)
        if len(outputs) == 1:  # with many outputs, one in the way fails only its own image (save_image)
            check_output_slot(out)
        target = out.resolve()
        if target in seen:
            raise CaptionError(f"inputs {seen[target]} and {src} would both be saved as {out}; save them separately")
        seen[target] = src
