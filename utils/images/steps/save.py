"""The annotated copy (-s): each image saved with its caption drawn on it, never over an input, never
half-written (a temporary file beside, then a rename)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.files.atomic import write_atomic
from utils.files.checks import check_output_slot, check_writable_folder, never_an_input
from utils.images.inputs import InputItem
from utils.images.steps import CaptionedImage, Step
from utils.output.records import Section
from utils.support.errors import CaptionError

if TYPE_CHECKING:
    import numpy as np

    from utils.images.job import ImageJob


@dataclass(frozen=True)
class SavedImage(Section):
    """Where the annotated copy went (None without -s), and the time it took."""

    key = "output"
    columns = ("output",)

    path: Path | None
    save_ms: float = 0.0

    def json(self) -> Any:
        return None if self.path is None else str(self.path)

    def cells(self) -> tuple[Any, ...]:
        return ("" if self.path is None else str(self.path),)

    @property
    def timings(self) -> dict[str, float]:
        return {"save": self.save_ms}


class SaveImage(Step):
    """Always part of image mode: every record says where its copy went (``output``: null without -s),
    and ``timings`` has a ``save`` stage."""

    section = SavedImage

    def __init__(self, savepath: Path | None, single: bool) -> None:
        self.savepath = savepath
        self.single = single  # one file named on its own: the path is the output file, unless a folder
        self._outputs: dict[InputItem, Path] = {}

    @property
    def needs_image(self) -> bool:
        return self.savepath is not None

    @classmethod
    def from_job(cls, job: ImageJob) -> SaveImage:
        single = len(job.inputs) == 1 and Path(job.inputs[0]).is_file()
        return cls(job.savepath, single)

    def check(self, items: list[InputItem]) -> None:
        todo = [item for item in items if item.path is not None]
        if self.savepath is None or not todo:
            return
        single = self.single and len(items) == 1
        planned = plan_outputs([p for item in todo if (p := item.path) is not None], self.savepath, not single)
        self._outputs = dict(zip(todo, planned, strict=True))

    def skip(self, items: list[InputItem]) -> dict[InputItem, Section] | None:
        return None if self.savepath is None else {}  # without -s it leaves the choice to the other steps

    def run(self, image: CaptionedImage, earlier: list[Section]) -> SavedImage:
        t0 = time.perf_counter()
        path = self._outputs.get(image.item)
        if path is not None and image.image is not None:
            from utils.engine.preprocess import as_bgr
            from utils.support.drawing import draw_caption  # OpenCV is imported when an image is saved, not before

            save_image(path, draw_caption(as_bgr(image.image), image.result.caption))
        return SavedImage(path, 1e3 * (time.perf_counter() - t0))


def save_image(path: Path, image: np.ndarray) -> None:
    import cv2

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


def _check_image_suffix(path: Path) -> None:
    import cv2

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
