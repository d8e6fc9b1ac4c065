"""What a run is asked to measure (``--references``, ``--split``, ``--metrics-file``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvaluationOptions:
    references: Path  # the reference captions (COCO, Karpathy, CSV or TSV)
    split: str | None = None  # Karpathy's file: the split to keep
    metrics_file: Path | None = None  # also write the metrics here, as JSON, atomically
