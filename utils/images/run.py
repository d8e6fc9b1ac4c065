"""Image mode (-i): caption files, folders and patterns in input order, run the per-image steps on each
(utils/images/steps/), and write one record per input."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from utils.engine.captioner import Captioned, Captioner, CaptionerOptions, CaptionItem
from utils.images.inputs import InputItem, expand_inputs
from utils.images.job import ImageJob
from utils.images.steps import CaptionedImage, Step, registry
from utils.output.captions_file import check_captions_file, file_format, open_writers
from utils.output.records import CaptionRecord, RunSummary, Section
from utils.output.resume import read_resumable
from utils.support.errors import CaptionError
from utils.support.stopping import Interrupted, StopRequest, stop_requests
from utils.support.text import printable

logger = logging.getLogger(__name__)


def run_images(job: ImageJob, options: CaptionerOptions, out: TextIO = sys.stdout,
               load: Callable[[CaptionerOptions], Captioner] = Captioner) -> int:
    """Caption every input, in order, with ``options.workers`` images at once; return the exit status
    (1 if any input failed)."""
    items = expand_inputs(job.inputs)
    listed = len(items)
    todo = [item for item in items if item.path is not None]
    steps = [step for cls in registry.STEPS if (step := cls.from_job(job)) is not None]
    # Everything that can be checked without the models is checked before loading them, so a typo costs
    # neither a download nor a model load.
    if job.captions_file is not None:
        check_captions_file(job.captions_file, [p for item in todo if (p := item.path) is not None])
    resumable = None
    if job.resume and job.captions_file is not None:
        # Inputs the file records as done are left out of this run: not read, not captioned, not printed.
        resumable = read_resumable(job.captions_file, file_format(job.captions_file) or "", registry.table_columns())
        items = [item for item in items if item.name not in resumable.done]
        todo = [item for item in items if item.path is not None]
        logger.info("%d of %d inputs are done in %s", listed - len(items), listed, job.captions_file)
    for step in steps:
        step.check(items)
    skipped = _skipped(steps, todo)
    todo = [item for item in todo if item not in skipped]
    # More workers than photos would only take cores from the ones that have work: a single photo gets
    # one worker with every core, and so the shortest time (and -b on it times that, run after run).
    captioner = load(replace(options, workers=min(options.workers, len(todo)))) if todo else None
    failed = False
    retried = {item.name for item in items}
    # On Ctrl-C or SIGTERM the photo at hand is finished (saved, its metadata written, its record
    # printed), the workers finish theirs, and the run stops there (utils/support/stopping.py).
    with stop_requests() as stop, open_writers(job.format, out, job.captions_file, resumable, retried,
                                                     registry.table_columns()) as writer, \
            _running(steps, captioner):
        writer.begin(listed)
        with tqdm(total=len(items), unit="image", file=sys.stderr, disable=True if len(items) < 2 else None,
                  leave=False) as bar:
            for record in _records(captioner, job, items, steps, stop, skipped):
                writer.write(record)
                failed |= record.failure is not None
                bar.update()
                if writer.reader_gone and job.savepath is None:
                    break  # nobody reads the captions and nothing is saved: the rest would be wasted work
        if stop.is_set():
            # The captions file is not committed: the run did not finish (the block ends by this raise);
            # with --resume it keeps the records written so far, and the next run goes on from them.
            raise Interrupted(stop.signum)
        reports: list[str] = []
        for step in steps:
            try:
                if (report := step.finish()) is not None:
                    reports.append(report)
            except CaptionError as exc:  # the captions stand (and their file is written); the run failed
                logger.error("%s", printable(str(exc)))
                failed = True
        writer.end(RunSummary(model=captioner.model if captioner else "",
                              backend=captioner.backend if captioner else "", reports=tuple(reports)))
    return 1 if failed else 0


@contextlib.contextmanager
def _running(steps: list[Step], captioner: Captioner | None) -> Iterator[None]:
    """The steps hold their resources while the images pass, and let go of them however the run ends."""
    try:
        if captioner is not None:
            for step in steps:
                step.start(captioner)
        yield
    finally:
        for step in steps:
            step.close()


def _skipped(steps: list[Step], items: list[InputItem]) -> dict[InputItem, tuple[Section, ...]]:
    """The inputs that some step finds done and no other step needs (a photo described already), with
    the skipping steps' sections in their order; each step is asked only about the inputs still in
    question."""
    candidates = items
    sections: dict[InputItem, list[Section]] = {}
    asked = False
    for step in steps:
        if not candidates:
            return {}
        found = step.skip(candidates)
        if found is None:  # no say in this run
            continue
        asked = True
        candidates = [item for item in candidates if item in found]
        for item in candidates:
            sections.setdefault(item, []).append(found[item])
    if not asked or not candidates:
        return {}
    logger.info("%d inputs need no caption: not read", len(set(candidates)))
    return {item: tuple(sections[item]) for item in candidates}


def _records(captioner: Captioner | None, job: ImageJob, items: list[InputItem], steps: list[Step],
             stop: StopRequest, skipped: dict[InputItem, tuple[Section, ...]]) -> Iterator[CaptionRecord]:
    """Each input's record, in input order; the captioner's workers run ahead of this generator."""
    if captioner is None:  # nothing to caption: every input is an error or skipped
        yield from (CaptionRecord(item.name, None, error=item.error, sections=skipped.get(item, ()))
                    for item in items)
        return
    repeats = max(step.runs_per_image for step in steps) if steps else 1
    keep_images = any(step.needs_image for step in steps)
    results = captioner.caption_many((CaptionItem(item.path, keep_image=keep_images) for item in items
                                      if item.path is not None and item not in skipped),
                                     job.decoding, stop=stop, repeats=repeats)
    # Closed however this generator ends: the workers are joined before the run goes on (a thread left in
    # ONNX Runtime would have the runtime torn down under it at exit).
    with contextlib.closing(results):
        for item in items:
            if item.path is None:
                yield CaptionRecord(item.name, None, error=item.error)
                continue
            if item in skipped:
                yield CaptionRecord(item.name, None, sections=skipped[item])
                continue
            done = next(results, None)
            if done is None:  # stopped (Ctrl-C): the results ended early
                return
            yield _record(item, done, steps)


def _record(item: InputItem, done: Captioned[Path], steps: list[Step]) -> CaptionRecord:
    """The caption, then each step in turn; a step's CaptionError fails the input."""
    if done.error is not None or done.result is None:
        return CaptionRecord(item.name, None, error=item.naming(str(done.error)))
    image = CaptionedImage(item, done.result, done.image, done.runs)
    sections: list[Section] = []
    try:
        for step in steps:
            if (section := step.run(image, sections)) is not None:
                sections.append(section)
    except CaptionError as exc:
        return CaptionRecord(item.name, None, error=item.naming(str(exc)))
    return CaptionRecord(item.name, done.result, sections=tuple(sections))
