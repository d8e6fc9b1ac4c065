"""One evaluation: captions matched with their references, the unmatched reported, the rest scored."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from utils.evaluation.captions_files import Candidate
from utils.evaluation.matching import Matching, match, unmatched_warnings
from utils.evaluation.references import References
from utils.evaluation.scoring import Scores, score

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    references: References
    matching: Matching
    scores: Scores


def evaluate(candidates: Sequence[Candidate], references: References) -> Evaluation:
    """Match ``candidates`` with ``references`` (a warning line for each kind of unmatched), then score
    the pairs. CaptionError when inputs share a file name or nothing can be scored."""
    matching = match(candidates, references)
    for line in unmatched_warnings(matching, references):
        logger.warning("%s", line)
    return Evaluation(references, matching, score(matching.pairs))
