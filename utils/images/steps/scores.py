"""--references: the run's captions scored against reference captions with COCO's metrics (pycocoevalcap),
a table at the end and, with --metrics-file, a JSON object (docs/evaluation.md).

CIDEr-D weighs words by the whole set scored, so scores exist only once every caption is made: the step
keeps each input's name and caption (small) and scores them in ``finish``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from utils.evaluation.options import EvaluationOptions
from utils.images.inputs import InputItem
from utils.images.steps import CaptionedImage, Step
from utils.output.records import Section
from utils.support.errors import CaptionError, UsageError

if TYPE_CHECKING:
    from utils.evaluation.references import References
    from utils.images.job import ImageJob


class ScoreCaptions(Step):
    def __init__(self, options: EvaluationOptions, report_on_stdout: bool) -> None:
        self.options = options
        self.report_on_stdout = report_on_stdout  # text output: the table goes with the captions
        self._references: References | None = None
        self._captions: dict[InputItem, str | None] = {}  # every input to score; None: no caption (yet)

    @classmethod
    def from_job(cls, job: ImageJob) -> ScoreCaptions | None:
        return cls(job.evaluation, job.format == "text") if job.evaluation is not None else None

    def check(self, items: list[InputItem]) -> None:
        """What is needed, the references and the outputs, before any model loads; a references file that
        cannot be read is a wrong command line (exit status 2)."""
        from utils.evaluation.matching import check_distinct_names
        from utils.evaluation.pycoco import require_evaluation
        from utils.evaluation.references import read_references
        from utils.evaluation.summary import check_metrics_file

        require_evaluation("--references")
        inputs = [path for item in items if (path := item.path) is not None]
        try:
            self._references = read_references(self.options.references, self.options.split)
            check_distinct_names(item.name for item in items if item.path is not None)
            if self.options.metrics_file is not None:
                check_metrics_file(self.options.metrics_file, [*inputs, self.options.references])
        except CaptionError as exc:
            raise UsageError(str(exc)) from None
        self._captions = {item: None for item in items if item.path is not None}

    def run(self, image: CaptionedImage, earlier: list[Section]) -> None:
        self._captions[image.item] = image.result.caption
        return None

    def finish(self) -> str | None:
        """Score what was captioned; an input that failed counts as failed, not as a poor caption."""
        from utils.evaluation.captions_files import candidates_from_records
        from utils.evaluation.evaluate import evaluate
        from utils.evaluation.summary import summary_text, write_metrics

        assert self._references is not None
        candidates = candidates_from_records((item.name, caption) for item, caption in self._captions.items())
        evaluation = evaluate(candidates, self._references)
        if self.options.metrics_file is not None:
            write_metrics(self.options.metrics_file, evaluation)
        table = summary_text(evaluation)
        if self.report_on_stdout:
            return table
        print(table, file=sys.stderr)  # stdout is for the records (JSON, CSV)
        return None
