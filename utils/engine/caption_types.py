"""What the Python API is asked and what it answers: ``CaptionerOptions``, ``CaptionResult``, and the
worker count for this machine. Kept apart from utils/engine/captioner.py, which loads the runtimes, so that the
command line parses its options and reports usage errors without importing them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from models import DEFAULT_DECODER
from utils.engine.compatibility import Combination, check
from utils.engine.runtime import RuntimeOptions
from utils.quantization import PRECISIONS, Precision

MAX_WORKERS = 64  # each worker holds its own sessions: ~0.2 GB at fp32 (docs/performance.md#folders-several-workers)


@dataclass(frozen=True)
class CaptionerOptions:
    model: str = DEFAULT_DECODER
    model_dir: Path | None = None  # None: $IMAGE_CAPTIONING_MODEL_DIR or the project's models/
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    offline: bool = False  # never download; report missing or corrupt files instead
    progress: bool = True  # download progress bars on a terminal; the one-line note while an int8 model is made
    # fp32: the published models, exactly. int8: the feature model quantized for this CPU (made from the
    # fp32 file on first use and cached in the model folder; docs/int8.md); ONNX Runtime only.
    precision: Precision = "fp32"
    # Images captioned at once by caption_many, each by its own sessions with its share of the cores
    # (ONNX Runtime; the ailia SDK runs one). default_workers() is image mode's choice for this machine.
    workers: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, not {self.workers}")
        check(combination(self))  # an OptionConflict is a ValueError


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_workers(cores: int | None = None) -> int:
    """Image mode's worker count: one per two cores, and on machines of two or three cores one per
    core (docs/performance.md#folders-several-workers, has the measurements behind it)."""
    cores = cores or available_cores()
    return max(1, cores // 2) if cores >= 4 else cores


@dataclass(frozen=True)
class CaptionResult:
    caption: str
    indices: list[int]  # vocabulary indices of the emitted words
    confidence: float | None  # mean log-probability of the emitted words
    timings: dict[str, float]  # milliseconds per stage: preprocess, features, decode
    nbest: list[RankedCaption] | None = None  # with DecodingOptions.nbest: the best captions, best first
    model: str = ""  # the decoder that made it
    backend: str = ""  # the runtime that ran it


@dataclass(frozen=True)
class RankedCaption:
    caption: str
    score: float  # see docs/decoding.md
    indices: list[int]


def combination(options: CaptionerOptions, imported: bool = False) -> Combination:
    return Combination(backend=options.runtime.backend, precision=options.precision, workers=options.workers,
                       imported_model=options.model if imported else None)


