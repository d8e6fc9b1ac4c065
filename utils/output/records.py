"""What every output format is written from: one record per captioned image or video caption.

A record is the caption (or why there is none) plus one ``Section`` per thing a per-image step did with
it (utils/images/steps/: the annotated copy, the benchmark, the metadata). A section knows its own JSON, its
note for people and its table cells, so the writers (utils/output/formats.py) render every section
without knowing which step made it. Image mode and video mode write the same records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from utils.engine.caption_types import CaptionResult


class Section(ABC):
    """What one per-image step adds to an image's record."""

    key: ClassVar[str]  # its key in the record's JSON object
    columns: ClassVar[tuple[str, ...]] = ()  # its columns in CSV/TSV tables (in every image table's header)

    @abstractmethod
    def json(self) -> Any:
        """The value under ``key`` in the record's JSON object."""

    def note(self) -> str | None:
        """A line for people under the caption in text output, or None."""
        return None

    def cells(self) -> tuple[Any, ...]:
        """The values of ``columns``."""
        return ()

    @property
    def error(self) -> str | None:
        """Why the step failed for this image (the run's exit status is then 1), or None."""
        return None

    @property
    def timings(self) -> dict[str, float]:
        """Stages the step timed (milliseconds), added to the record's ``timings``."""
        return {}


@dataclass(frozen=True)
class VideoPosition:
    """Where in a video a caption belongs."""

    time: float  # seconds: video time for files, time since the first frame for live sources
    frame: int  # the frame the caption describes
    latency_ms: float | None = None  # live sources: frame captured -> its caption shown


@dataclass(frozen=True)
class CaptionRecord:
    """One result: an image's caption (or why it has none) with its steps' sections, or one caption of a
    video (``video`` says where in it)."""

    input: str  # the image as the user named it, or the video source's name
    result: CaptionResult | None
    error: str | None = None  # why this input has no caption
    sections: tuple[Section, ...] = ()
    video: VideoPosition | None = None

    @property
    def caption(self) -> str | None:
        return None if self.result is None else self.result.caption

    @property
    def failure(self) -> str | None:
        """The first thing that failed for this input: its caption, or a step."""
        return self.error or next((s.error for s in self.sections if s.error is not None), None)

    @property
    def timings(self) -> dict[str, float]:
        timings = dict(self.result.timings) if self.result is not None else {}
        for section in self.sections:
            timings.update(section.timings)
        return timings


@dataclass(frozen=True)
class RunSummary:
    """What a writer may need once every record is written."""

    model: str = ""
    backend: str = ""
    reports: tuple[str, ...] = field(default=())  # the steps' end-of-run reports for people (text output)
    end_time: float | None = None  # video: where the video ended (seconds), for formats with durations


def rounded(values: dict[str, float], digits: int = 3) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items()}


def as_json(record: CaptionRecord) -> dict[str, Any]:
    """The one JSON shape of a record (docs/output.md#json-output): where it comes from, the caption,
    then each section under its key."""
    where: dict[str, Any] = (
        {"input": record.input} if record.video is None
        else {"time": round(record.video.time, 3), "frame": record.video.frame}
    )
    if record.result is None:
        if record.error is None:  # skipped by its steps (a photo described already): their sections say why
            return {**where, "caption": None, **{section.key: section.json() for section in record.sections}}
        return {**where, "caption": None, "error": record.error}
    result = record.result
    out: dict[str, Any] = {
        **where,
        "caption": result.caption,
        "model": result.model,
        "backend": result.backend,
        "confidence": result.confidence,
        "indices": result.indices,
        "timings": rounded(record.timings),
    }
    if result.nbest is not None:
        out["nbest"] = [{"caption": c.caption, "score": c.score, "indices": c.indices} for c in result.nbest]
    for section in record.sections:
        out[section.key] = section.json()
    if record.video is not None and record.video.latency_ms is not None:
        out["latency_ms"] = round(record.video.latency_ms, 1)
    return out
