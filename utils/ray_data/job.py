"""What a ``--ray`` run is asked to do (docs/large-runs.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.decoding.options import DecodingOptions

# The --captions-file formats --ray writes: image mode's, but for the ones a stream of records cannot
# fill (text, subtitles).
OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class RayJob:
    inputs: list[str]
    address: str | None  # as ray.init takes it; None: a local Ray runtime on this machine
    captions_file: Path
    actors: int | None = None  # None: one per two of the cluster's CPUs (default_workers)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    # Append each record to captions_file as it comes back, and leave out the inputs it records as done
    # (utils/output/resume.py, as image mode's --resume).
    resume: bool = False
    window_rows: int | None = None  # rows sent to the cluster at once; None: run.py's WINDOW_ROWS or more
