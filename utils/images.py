"""Image mode (-i): caption files, folders and patterns; print, save, time."""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from utils.captioner import Captioned, Captioner, CaptionerOptions, CaptionResult
from utils.decoding.options import DecodingOptions
from utils.drawing import draw_caption
from utils.errors import CaptionError
from utils.inputs import InputItem, expand_inputs
from utils.metadata import MetadataOptions, MetadataResult, MetadataWriter, require_exiftool
from utils.output.captions_file import check_captions_file, open_writers
from utils.output.paths import plan_outputs, save_image
from utils.output.records import CaptionRecord, RunSummary
from utils.preprocess import as_bgr, read_image
from utils.stopping import Interrupted, StopRequest, stop_requests

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    inputs: list[str]
    savepath: Path | None = None
    format: str = "text"  # a name in utils.output.formats.FORMATS
    captions_file: Path | None = None  # also write the records here, in its extension's format
    benchmark_count: int = 0  # 0: no benchmark; N: caption each image N times and report timings
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    metadata: MetadataOptions | None = None  # write each caption into its photo's metadata (or a sidecar)


@dataclass
class Outcome:
    item: InputItem
    result: CaptionResult | None = None
    error: str | None = None
    output: Path | None = None
    runs: list[dict[str, float]] = field(default_factory=list)  # ms per stage, one dict per run
    metadata: MetadataResult | None = None
    metadata_error: str | None = None


def run_images(job: ImageJob, options: CaptionerOptions, out: TextIO = sys.stdout,
               load: Callable[[CaptionerOptions], Captioner] = Captioner) -> int:
    """Caption every input, in order, with ``options.workers`` images at once; return the exit status
    (1 if any input failed)."""
    items = expand_inputs(job.inputs)
    todo = [i for i, item in enumerate(items) if item.path is not None]
    # Everything that can be checked without the models is checked before loading them, so a
    # typo costs neither a download nor a model load.
    outputs: dict[int, Path] = {}
    if job.savepath is not None and todo:
        single = len(job.inputs) == 1 and len(items) == 1 and Path(job.inputs[0]).is_file()
        planned = plan_outputs([p for i in todo if (p := items[i].path)], job.savepath, not single)
        outputs = dict(zip(todo, planned, strict=True))
    if job.captions_file is not None:
        check_captions_file(job.captions_file, [p for item in items if (p := item.path) is not None])
    if job.metadata is not None and todo:
        require_exiftool()
    # More workers than photos would only take cores from the ones that have work: a single photo gets
    # one worker with every core, and so the shortest time (and -b on it times that, run after run).
    captioner = load(replace(options, workers=min(options.workers, len(todo)))) if todo else None
    totals = _Totals(keep_runs=job.benchmark_count > 0)
    # Ctrl-C or SIGTERM never raises in here: the photo at hand is finished (saved, its metadata written,
    # printed), the workers finish theirs, and the run stops there (utils/stopping.py).
    with stop_requests() as stop, open_writers(job.format, out, job.captions_file) as writer, \
            _metadata_writer(job, todo) as metadata:
        writer.begin(len(items))
        with tqdm(total=len(items), unit="image", file=sys.stderr, disable=True if len(items) < 2 else None,
                  leave=False) as bar:
            for outcome in _outcomes(captioner, job, items, outputs, stop):
                if metadata is not None:
                    _write_metadata(metadata, outcome)
                writer.write(_record(outcome, captioner, job))
                totals.add(outcome)
                bar.update()
                if writer.reader_gone and job.savepath is None:
                    break  # nobody reads the captions and nothing is saved: the rest would be wasted work
        if stop.is_set():
            # Raised here, between photos: the captions file is removed and every saved file is whole.
            raise Interrupted(stop.signum)
        writer.end(_summary(captioner, totals, job))
    return 1 if totals.failed else 0


@dataclass(frozen=True)
class _Run:
    index: int
    item: InputItem
    last: bool  # the last of this input's runs (several with -b)


def _outcomes(captioner: Captioner | None, job: ImageJob, items: list[InputItem],
              outputs: dict[int, Path], stop: StopRequest) -> Iterator[Outcome]:
    """Each input's outcome, in input order; the captioner's workers run ahead of this generator."""
    if captioner is None:  # nothing to caption: every input is already an error
        yield from (Outcome(item, error=item.error) for item in items)
        return
    runs = max(1, job.benchmark_count)
    plan = (_Run(index, item, run == runs - 1 or item.error is not None)
            for index, item in enumerate(items) for run in range(runs if item.error is None else 1))
    outcome: Outcome | None = None
    for done in captioner.caption_many(plan, job.decoding, read=_read, keep_images=bool(outputs), stop=stop):
        run = done.source
        if outcome is None:
            outcome = Outcome(run.item, output=outputs.get(run.index))
        if outcome.error is None:
            _finish_run(outcome, done)
        if run.last:
            yield outcome
            outcome = None


def _metadata_writer(job: ImageJob, todo: list[int]) -> contextlib.AbstractContextManager[MetadataWriter | None]:
    """One ExifTool process for the whole run, used from this thread only."""
    if job.metadata is None or not todo:
        return contextlib.nullcontext()
    return MetadataWriter(job.metadata)


def _write_metadata(metadata: MetadataWriter, outcome: Outcome) -> None:
    """The caption into the photo's metadata (or its sidecar). Only the input itself is written, never an
    annotated copy saved with -s: those are separate files by construction (output/paths.py)."""
    if outcome.result is None or outcome.item.path is None:
        return
    try:
        outcome.metadata = metadata.write(outcome.item.path, outcome.result.caption)
    except CaptionError as exc:
        outcome.metadata_error = _naming_input(outcome.item, str(exc))


def _read(run: _Run) -> np.ndarray:
    if run.item.error is not None:
        raise CaptionError(run.item.error)
    assert run.item.path is not None
    return read_image(run.item.path)


def _finish_run(outcome: Outcome, done: Captioned[_Run]) -> None:
    """Save the image of one run (the time it takes is the run's "save") and keep its timings."""
    try:
        if done.error is not None:
            raise done.error
        assert done.result is not None
        t0 = time.perf_counter()
        if outcome.output is not None and done.image is not None:
            save_image(outcome.output, draw_caption(as_bgr(done.image), done.result.caption))
        outcome.runs.append({**done.result.timings, "save": 1e3 * (time.perf_counter() - t0)})
        outcome.result = done.result
    except CaptionError as exc:
        outcome.error = _naming_input(outcome.item, str(exc))
        outcome.result = None


def _naming_input(item: InputItem, message: str) -> str:
    """``message``, prefixed with the input's name unless it already says which input it is about (the
    listing's own errors always do)."""
    return message if item.name in message or item.path is None else f"{item.name}: {message}"


@dataclass
class _Totals:
    """What the summary needs of the outcomes, kept as they pass (memory stays flat over a long run)."""

    keep_runs: bool  # -b: every run's timings go into the summary
    failed: bool = False
    images: int = 0
    runs: list[dict[str, float]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.failed |= outcome.error is not None or outcome.metadata_error is not None
        self.images += 1 if outcome.runs else 0
        if self.keep_runs:
            self.runs += outcome.runs


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _record(outcome: Outcome, captioner: Captioner | None, job: ImageJob) -> CaptionRecord:
    if outcome.error is not None or outcome.result is None or captioner is None:
        return CaptionRecord(outcome.item.name, None, error=outcome.error)
    benchmark = None
    if job.benchmark_count:
        benchmark = {s: _stats([r[s] for r in outcome.runs]) for s in outcome.runs[0]}
    return CaptionRecord(
        input=outcome.item.name,
        result=outcome.result,
        model=captioner.model,
        backend=captioner.backend,
        output=outcome.output,
        timings=outcome.runs[-1],
        benchmark=benchmark,
        metadata=outcome.metadata,
        metadata_error=outcome.metadata_error,
    )


def _summary(captioner: Captioner | None, totals: _Totals, job: ImageJob) -> RunSummary:
    if captioner is None:
        return RunSummary()
    runs = totals.runs
    return RunSummary(
        model=captioner.model,
        backend=captioner.backend,
        load_ms=captioner.load_ms,
        benchmark_runs=job.benchmark_count,
        benchmark={stage: [r[stage] for r in runs] for stage in (runs[0] if runs else {})},
        images=totals.images,
    )
