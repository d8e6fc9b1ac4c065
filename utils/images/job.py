"""What an image-mode run is asked to do (``ImageJob``); the per-image steps read their options from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.decoding.options import DecodingOptions
from utils.evaluation.options import EvaluationOptions
from utils.metadata import MetadataOptions


@dataclass(frozen=True)
class ImageJob:
    inputs: list[str]
    savepath: Path | None = None  # the annotated copies (utils/images/steps/save.py)
    format: str = "text"  # a name in utils.output.formats.FORMATS
    captions_file: Path | None = None  # also write the records here, in its extension's format
    resume: bool = False  # append to captions_file as inputs finish, skipping the inputs it records as done
    benchmark_count: int = 0  # 0: no benchmark; N: caption each image N times and report timings
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    metadata: MetadataOptions | None = None  # write each caption into its photo's metadata (or a sidecar)
    evaluation: EvaluationOptions | None = None  # score the captions against reference captions
