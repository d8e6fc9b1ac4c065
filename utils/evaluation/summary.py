"""What an evaluation shows: a table for people, a JSON object for programs (--metrics-file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils.evaluation.evaluate import Evaluation
from utils.evaluation.references import FORMATS
from utils.evaluation.scoring import METRICS
from utils.files.atomic import write_atomic
from utils.files.checks import check_output_slot, check_writable_folder, never_an_input
from utils.support.errors import CaptionError

OPTION = "--metrics-file"


def counts(evaluation: Evaluation) -> dict[str, int]:
    m = evaluation.matching
    return {"scored": evaluation.scores.images, "without_references": len(m.without_references),
            "without_caption": len(m.without_caption), "failed": len(m.failed)}


def summary_text(evaluation: Evaluation) -> str:
    """The table for people: each metric with 3 decimals, as pycocoevalcap prints them, and the counts."""
    refs = evaluation.references
    split = f", split {refs.split}" if refs.split is not None else ""
    n = counts(evaluation)
    lines = [f"caption quality: {n['scored']} image{'s' if n['scored'] != 1 else ''} scored against "
             f"{refs.source} ({FORMATS[refs.format]}{split})"]
    lines += [f"  {metric:<8} {evaluation.scores.corpus[metric]:.3f}" for metric in METRICS]
    left = [f"{n['without_references']} without references" if n["without_references"] else "",
            f"{n['failed']} failed" if n["failed"] else "",
            f"{n['without_caption']} reference images without a caption" if n["without_caption"] else ""]
    if any(left):
        lines.append("not scored: " + ", ".join(part for part in left if part))
    return "\n".join(lines)


def metrics_json(evaluation: Evaluation) -> dict[str, Any]:
    """The metrics at the top level, named as pycocoevalcap names them; the counts under "images"."""
    refs = evaluation.references
    return {**evaluation.scores.corpus, "images": counts(evaluation),
            "references": {"format": refs.format, "split": refs.split, "images": len(refs.images),
                           "captions": refs.captions}}


def check_metrics_file(path: Path, inputs: list[Path]) -> None:
    """Before any model loads: a folder that takes files, nothing but a regular file at ``path``, and
    never an input."""
    check_output_slot(path)
    check_writable_folder(path.parent, OPTION)
    never_an_input([path], inputs, OPTION)


def write_metrics(path: Path, evaluation: Evaluation) -> None:
    """``metrics_json`` written to ``path`` atomically: the old file or the new one, never a part."""
    check_output_slot(path)  # again: something may have been put there meanwhile
    data = (json.dumps(metrics_json(evaluation), indent=2) + "\n").encode()
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise CaptionError(f"cannot write {OPTION} {path}: {exc.strerror or exc}") from None
