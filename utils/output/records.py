"""What every output format is written from: one record per captioned image or video caption.

Image mode and video mode both describe their results with ``CaptionRecord``; the writers
(utils/output/formats.py) turn records into text, JSON Lines or any other format without knowing
which mode made them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.captioner import CaptionResult
from utils.metadata.alt_text import MetadataResult


@dataclass(frozen=True)
class VideoPosition:
    """Where in a video a caption belongs."""

    time: float  # seconds: video time for files, time since the first frame for live sources
    frame: int  # the frame the caption describes
    latency_ms: float | None = None  # live sources: frame captured -> its caption shown


@dataclass(frozen=True)
class CaptionRecord:
    """One result: an image's caption (or why it has none), or one caption of a video."""

    input: str  # the image as the user named it, or the video source's name
    result: CaptionResult | None
    model: str = ""
    backend: str = ""
    error: str | None = None  # images only: why this input has no caption
    output: Path | None = None  # images: where the annotated copy was saved
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    benchmark: dict[str, dict[str, float]] | None = None  # -b: min/median/max ms per stage
    video: VideoPosition | None = None  # set for video captions
    metadata: MetadataResult | None = None  # images with --write-metadata/--metadata-sidecar: what was done
    metadata_error: str | None = None  # ... or why the caption could not be written there

    @property
    def caption(self) -> str | None:
        return None if self.result is None else self.result.caption


@dataclass(frozen=True)
class RunSummary:
    """What a writer may need once every record is written."""

    model: str = ""
    backend: str = ""
    load_ms: float = 0.0
    benchmark_runs: int = 0  # -b N, or 0
    benchmark: dict[str, list[float]] = field(default_factory=dict)  # every run's ms per stage, all images
    images: int = 0  # images that were captioned
    end_time: float | None = None  # video: where the video ended (seconds), for formats with durations


def rounded(values: dict[str, float], digits: int = 3) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items()}


def as_json(record: CaptionRecord) -> dict[str, Any]:
    """The one JSON shape of a record (README, "JSON output"): where it comes from, then the caption."""
    where: dict[str, Any] = (
        {"input": record.input} if record.video is None
        else {"time": round(record.video.time, 3), "frame": record.video.frame}
    )
    if record.result is None:
        return {**where, "caption": None, "error": record.error}
    metadata = metadata_json(record)
    result = record.result
    out: dict[str, Any] = {
        **where,
        "caption": result.caption,
        "model": record.model,
        "backend": record.backend,
        "confidence": result.confidence,
        "indices": result.indices,
        "timings": rounded(record.timings),
    }
    if record.video is None:
        out["output"] = str(record.output) if record.output else None
    if result.nbest is not None:
        out["nbest"] = [{"caption": c.caption, "score": c.score, "indices": c.indices} for c in result.nbest]
    if record.benchmark is not None:
        out["benchmark"] = {stage: rounded(stats) for stage, stats in record.benchmark.items()}
    if record.video is not None and record.video.latency_ms is not None:
        out["latency_ms"] = round(record.video.latency_ms, 1)
    if metadata is not None:
        out["metadata"] = metadata
    return out


def metadata_json(record: CaptionRecord) -> dict[str, Any] | None:
    if record.metadata_error is not None:
        return {"action": "failed", "error": record.metadata_error}
    if record.metadata is None:
        return None
    m = record.metadata
    return {"action": m.action, "target": str(m.target), "fields": list(m.fields), "existing": m.existing}
