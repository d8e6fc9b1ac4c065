"""The flags for measuring caption quality (docs/evaluation.md): --references, --split, --metrics-file,
and --score-captions, which scores captions made earlier without loading any model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from utils.evaluation.options import EvaluationOptions
from utils.support.errors import CaptionError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measuring caption quality (docs/evaluation.md; needs requirements-eval.txt and Java)")
    g.add_argument("--references", type=Path, metavar="FILE",
                   help="score the captions against these reference captions (COCO captions JSON, Karpathy's "
                        "dataset_coco.json, or CSV/TSV with a header image,caption): BLEU-1..4, METEOR, ROUGE-L, "
                        "CIDEr-D, computed by pycocoevalcap")
    g.add_argument("--split", metavar="NAME", help="with Karpathy's file: keep only this split (e.g. test)")
    g.add_argument("--metrics-file", type=Path, metavar="PATH",
                   help="also write the metrics to PATH as a JSON object, atomically")
    g.add_argument("--score-captions", type=Path, metavar="FILE",
                   help="score captions made earlier (this program's --json or --format csv/tsv output, or a COCO "
                        "results file) against --references, without loading any model")


def usage_error(args: argparse.Namespace) -> str | None:
    if args.references is None:
        used = [flag for flag, on in (("--split", args.split is not None),
                                      ("--metrics-file", args.metrics_file is not None),
                                      ("--score-captions", args.score_captions is not None)) if on]
        if used:
            return f"{' and '.join(used)} need{'s' if len(used) == 1 else ''} --references FILE"
    return None


def options(args: argparse.Namespace) -> EvaluationOptions | None:
    if args.references is None or args.score_captions is not None:
        return None
    return EvaluationOptions(args.references, args.split, args.metrics_file)


def run_score_captions(args: argparse.Namespace) -> int:
    """--score-captions: read, match, score, report; no model is loaded."""
    from utils.evaluation.captions_files import read_captions
    from utils.evaluation.evaluate import evaluate
    from utils.evaluation.pycoco import require_evaluation
    from utils.evaluation.references import read_references
    from utils.evaluation.summary import check_metrics_file, metrics_json, summary_text, write_metrics

    require_evaluation("--score-captions")
    try:
        references = read_references(args.references, args.split)
        if args.metrics_file is not None:
            check_metrics_file(args.metrics_file, [args.references, args.score_captions])
        captions = read_captions(args.score_captions, references)
    except UsageError:
        raise
    except CaptionError as exc:
        raise UsageError(str(exc)) from None
    evaluation = evaluate(captions.candidates, references)
    if args.format == "json":  # for programs: the metrics file's object on stdout
        print(json.dumps(metrics_json(evaluation)))
    else:
        print(summary_text(evaluation))
    if args.metrics_file is not None:
        write_metrics(args.metrics_file, evaluation)
    return 0
