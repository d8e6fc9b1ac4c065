"""The per-image steps, in the order they run (and their sections appear in JSON and tables). A new step
is one module in this package and one entry here."""

from __future__ import annotations

from utils.steps import Step
from utils.steps.benchmark import Benchmark
from utils.steps.metadata import WriteMetadata
from utils.steps.save import SaveImage

STEPS: list[type[Step]] = [SaveImage, Benchmark, WriteMetadata]


def table_columns() -> tuple[str, ...]:
    """The columns the steps add to an image table, in order."""
    return tuple(column for step in STEPS for column in step.section.columns)
