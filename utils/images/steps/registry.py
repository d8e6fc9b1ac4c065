"""The per-image steps, in the order they run (and their sections appear in JSON and tables). A new step
is one module in this package and one entry here."""

from __future__ import annotations

from utils.images.steps import Step
from utils.images.steps.benchmark import Benchmark
from utils.images.steps.metadata import WriteMetadata
from utils.images.steps.save import SaveImage
from utils.images.steps.scores import ScoreCaptions

STEPS: list[type[Step]] = [SaveImage, Benchmark, WriteMetadata, ScoreCaptions]


def table_columns() -> tuple[str, ...]:
    """The columns the steps add to an image table, in order."""
    return tuple(column for step in STEPS if step.section is not None for column in step.section.columns)
