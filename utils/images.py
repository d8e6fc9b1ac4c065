"""Image mode (-i): caption files, folders and patterns; print, save, time."""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from utils.captioner import Captioner, CaptionResult
from utils.decoding.options import DecodingOptions
from utils.drawing import draw_caption
from utils.errors import CaptionError
from utils.inputs import InputItem, expand_inputs
from utils.output.paths import plan_outputs, save_image
from utils.preprocess import as_bgr, read_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    inputs: list[str]
    savepath: Path | None = None
    json: bool = False
    benchmark_count: int = 0  # 0: no benchmark; N: caption each image N times and report timings
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass
class Outcome:
    item: InputItem
    result: CaptionResult | None = None
    error: str | None = None
    output: Path | None = None
    runs: list[dict[str, float]] = field(default_factory=list)  # ms per stage, one dict per run


def run_images(job: ImageJob, load: Callable[[], Captioner], out: TextIO = sys.stdout) -> int:
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
    captioner = load() if todo else None
    outcomes: list[Outcome] = []
    with tqdm(total=len(items), unit="image", file=sys.stderr, disable=True if len(items) < 2 else None,
              leave=False) as bar:
        for index, item in enumerate(items):
            outcome = Outcome(item, error=item.error)
            if captioner is not None and outcome.error is None:
                outcome = _caption_one(captioner, job, item, outputs.get(index))
            _report(outcome, captioner, job, out, single=len(items) == 1)
            outcomes.append(outcome)
            bar.update()
    if job.benchmark_count and captioner is not None and not job.json:
        _print_benchmark(captioner, outcomes, job.benchmark_count, out)
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


def _record(outcome: Outcome, captioner: Captioner | None, job: ImageJob) -> dict[str, Any]:
    record: dict[str, Any] = {"input": outcome.item.name}
    if outcome.error is not None or outcome.result is None:
        return {**record, "caption": None, "error": outcome.error}
    assert captioner is not None
    result = outcome.result
    record.update(
        caption=result.caption,
        model=captioner.model,
        backend=captioner.backend,
        confidence=result.confidence,
        indices=result.indices,
        timings={k: round(v, 3) for k, v in outcome.runs[-1].items()},
        output=str(outcome.output) if outcome.output else None,
    )
    if result.nbest is not None:
        record["nbest"] = [{"caption": c.caption, "score": c.score, "indices": c.indices} for c in result.nbest]
    if job.benchmark_count:
        stages = outcome.runs[0].keys()
        record["benchmark"] = {s: {k: round(v, 3) for k, v in _stats([r[s] for r in outcome.runs]).items()}
                               for s in stages}
    return record


def _report(outcome: Outcome, captioner: Captioner | None, job: ImageJob, out: TextIO, single: bool) -> None:
    if job.json:
        tqdm.write(json.dumps(_record(outcome, captioner, job), ensure_ascii=False), file=out)
        out.flush()
    elif outcome.error is not None:
        logger.error("%s", outcome.error)
    elif outcome.result is not None:
        text = outcome.result.caption
        tqdm.write(text if single else f"{outcome.item.name}: {text}", file=out)
        for rank, ranked in enumerate(outcome.result.nbest or [], start=1):
            tqdm.write(f"  {rank}. {ranked.score:.4f}  {ranked.caption}", file=out)
        out.flush()


def _print_benchmark(captioner: Captioner, outcomes: list[Outcome], count: int, out: TextIO) -> None:
    runs = [r for o in outcomes for r in o.runs]
    if not runs:
        return
    images = sum(1 for o in outcomes if o.runs)
    print(f"benchmark: {captioner.model} on {captioner.backend}, {count} runs x {images} images (ms)", file=out)
    print(f"{'stage':<12}{'min':>10}{'median':>10}{'max':>10}", file=out)
    print(f"{'load':<12}{captioner.load_ms:>10.1f}", file=out)
    for stage in runs[0]:
        s = _stats([r[stage] for r in runs])
        print(f"{stage:<12}{s['min']:>10.1f}{s['median']:>10.1f}{s['max']:>10.1f}", file=out)
