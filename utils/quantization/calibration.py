"""The photos int8 models are calibrated on, and feeding them to a model exactly as inference does.

Calibration sets each activation's int8 range from what the model sees on real photos. They ship
with the project in samples/ (free licences; README.md#licences) so that the int8 file is made
offline, and the same everywhere: the cache record holds each photo's SHA-256.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from utils.engine.model_files import sha256_bytes
from utils.engine.preprocess import preprocess, read_image
from utils.support.errors import CaptionError

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
# Four subjects far apart (animal, still life, portrait, night scene): one photo alone measured a
# feature cosine of 0.995 to fp32, three to eight photos 0.9998 or more.
CALIBRATION_PHOTOS: tuple[str, ...] = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


@dataclass(frozen=True)
class CalibrationPhoto:
    path: Path
    sha256: str

    def as_record(self) -> dict[str, str]:
        return {"name": self.path.name, "sha256": self.sha256}


def calibration_photos(folder: Path = SAMPLES_DIR, names: Sequence[str] = CALIBRATION_PHOTOS) -> list[CalibrationPhoto]:
    """The calibration photos with their checksums; CaptionError if one is missing or unreadable."""
    photos = []
    for name in names:
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CaptionError(f"cannot read the calibration photo {path} ({error.strerror or error}), "
                               "which ships with the program in samples/") from error
        photos.append(CalibrationPhoto(path, sha256_bytes(data)))
    return photos


def model_input_name(model: onnx.ModelProto) -> str:
    """The model's image input: its first graph input that is not a weight (old exporters list weights
    among the inputs too). Read from the model, as the program never assumes a name."""
    weights = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in weights:
            return value.name
    raise CaptionError("the model has no input")


def calibration_feeds(photos: Sequence[CalibrationPhoto], input_name: str) -> list[dict[str, np.ndarray]]:
    """One feed per photo, read and preprocessed by the program's own code: the ranges are those of
    exactly what inference sees (EXIF orientation, 640 px width, ImageNet normalisation)."""
    return [{input_name: preprocess(read_image(photo.path))} for photo in photos]


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol (get_next returns None at the end).

    Duck-typed rather than subclassed so this module does not import onnxruntime.quantization."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)
