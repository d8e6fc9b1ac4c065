"""Per-image steps: what image mode does with each captioned image besides printing its caption.

A step is one class in one module, registered in ``STEPS`` (utils/images/steps/registry.py). It is made from
the job (``from_job``, None when the job does not ask for it), checks its options before any model
loads (``check``), may take inputs off the captioner's hands (``skip``: a photo already done
needs no caption), holds its resources from ``start`` to ``close``, runs on each captioned image in
input order (``run``) and returns a ``Section`` of that image's record, which knows its JSON, its note
for people and its table cells. At the end of the run it may report to people (``finish``). A
``CaptionError`` from ``run`` fails that image (no caption, exit status 1); a step that can fail without
failing the caption (metadata) returns a section with an error instead. Steps run in the order of
``STEPS``, which is also the order of their keys in JSON and of their columns in tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from utils.engine.caption_types import CaptionResult
from utils.images.inputs import InputItem
from utils.output.records import Section

if TYPE_CHECKING:
    import numpy as np

    from utils.engine.captioner import Captioner
    from utils.images.job import ImageJob


@dataclass(frozen=True)
class CaptionedImage:
    """What a step is given for one image."""

    item: InputItem  # the input as listed (item.path is set: failed inputs reach no step)
    result: CaptionResult
    image: np.ndarray | None  # the decoded image, when a step asked for it (``needs_image``)
    runs: tuple[dict[str, float], ...] = field(default=())  # each run's timings (several with ``runs_per_image``)


class Step:
    section: ClassVar[type[Section] | None] = None  # what the step adds to each record, if anything

    @classmethod
    def from_job(cls, job: ImageJob) -> Step | None:
        """The step the job asks for, or None."""
        raise NotImplementedError

    @property
    def needs_image(self) -> bool:
        """Whether the step is given the decoded image (keeping it costs memory)."""
        return False

    @property
    def runs_per_image(self) -> int:
        """How many times each image is captioned (the benchmark times several runs)."""
        return 1

    def check(self, items: list[InputItem]) -> None:
        """Before any model loads: refuse (CaptionError) what cannot work, so a typo costs no model load."""

    def skip(self, items: list[InputItem]) -> dict[InputItem, Section] | None:
        """Before any image is read: the inputs (of ``items``, each with a path) this step finds done
        already, each with the section its record gets instead; or None when the step has no say in this
        run (it does nothing with the captions). An input that a step skips and no other step needs is
        neither read nor captioned: its record has no caption, only the skipping steps' sections
        (docs/output.md#json-output). The default needs every caption."""
        return {}

    def start(self, captioner: Captioner) -> None:
        """The models are loaded and captioning starts."""

    def run(self, image: CaptionedImage, earlier: list[Section]) -> Section | None:
        """Do the step for one image; ``earlier``: the sections of the steps before it."""
        raise NotImplementedError

    def finish(self) -> str | None:
        """After the last image: a report for people (shown in text output), or None."""
        return None

    def close(self) -> None:
        """Release what the step holds; called however the run ends."""
