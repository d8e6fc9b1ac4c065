"""Image mode (-i): caption files, folders and patterns; print, save, time."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from utils.captioner import Captioner, CaptionerOptions, CaptionResult
from utils.decoding.options import DecodingOptions
from utils.drawing import draw_caption
from utils.errors import CaptionError
from utils.inputs import InputItem, expand_inputs
from utils.output.captions_file import check_captions_file, open_writers
from utils.output.paths import plan_outputs, save_image
from utils.output.records import CaptionRecord, RunSummary
from utils.preprocess import as_bgr, read_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    inputs: list[str]
    savepath: Path | None = None
    format: str = "text"  # a name in utils.output.writers.FORMATS
    captions_file: Path | None = None  # also write the records here, in its extension's format
    benchmark_count: int = 0  # 0: no benchmark; N: caption each image N times and report timings
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass
class Outcome:
    item: InputItem
    result: CaptionResult | None = None
    error: str | None = None
    output: Path | None = None
    runs: list[dict[str, float]] = field(default_factory=list)  # ms per stage, one dict per run


def run_images(job: ImageJob, options: CaptionerOptions, out: TextIO = sys.stdout,
               load: Callable[[CaptionerOptions], Captioner] = Captioner) -> int:
    """Caption every input; return the exit status (1 if any input failed)."""
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
    captioner = load(options) if todo else None
    outcomes: list[Outcome] = []
    with open_writers(job.format, out, job.captions_file) as writer:
        writer.begin(len(items))
        with tqdm(total=len(items), unit="image", file=sys.stderr, disable=True if len(items) < 2 else None,
                  leave=False) as bar:
            for index, item in enumerate(items):
                outcome = Outcome(item, error=item.error)
                if captioner is not None and outcome.error is None:
                    outcome = _caption_one(captioner, job, item, outputs.get(index))
                writer.write(_record(outcome, captioner, job))
                outcomes.append(outcome)
                bar.update()
                if writer.reader_gone and job.savepath is None:
                    break  # nobody reads the captions and nothing is saved: the rest would be wasted work
        writer.end(_summary(captioner, outcomes, job))
    return 1 if any(o.error for o in outcomes) else 0


def _caption_one(captioner: Captioner, job: ImageJob, item: InputItem, output: Path | None) -> Outcome:
    assert item.path is not None
    outcome = Outcome(item, output=output)
    try:
        for _ in range(max(1, job.benchmark_count)):
            t0 = time.perf_counter()
            image = read_image(item.path)
            read_ms = 1e3 * (time.perf_counter() - t0)
            result = captioner.caption(image, job.decoding)
            t1 = time.perf_counter()
            if output is not None:
                save_image(output, draw_caption(as_bgr(image), result.caption))
            save_ms = 1e3 * (time.perf_counter() - t1)
            outcome.runs.append({"read": read_ms, **result.timings, "save": save_ms})
            outcome.result = result
    except CaptionError as exc:
        message = str(exc)
        outcome.error = message if item.name in message else f"{item.name}: {message}"
        outcome.result = None
    return outcome


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
    )


def _summary(captioner: Captioner | None, outcomes: list[Outcome], job: ImageJob) -> RunSummary:
    if captioner is None:
        return RunSummary()
    runs = [r for o in outcomes for r in o.runs]
    return RunSummary(
        model=captioner.model,
        backend=captioner.backend,
        load_ms=captioner.load_ms,
        benchmark_runs=job.benchmark_count,
        benchmark={stage: [r[stage] for r in runs] for stage in (runs[0] if runs else {})},
        images=sum(1 for o in outcomes if o.runs),
    )
