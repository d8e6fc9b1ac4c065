"""--resume: go on with a --captions-file that an earlier run left unfinished (docs/large-runs.md#resume)."""

from __future__ import annotations

import argparse

from utils.output.captions_file import file_format
from utils.output.resume import RESUMABLE


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("resuming a run (-i)")
    g.add_argument("--resume", action="store_true",
                   help="append each record to --captions-file (.jsonl, .json, .csv or .tsv) as its input "
                        "finishes, and skip the inputs the file already records with a caption; failed ones "
                        "are tried again (see docs/large-runs.md)")


def usage_error(args: argparse.Namespace) -> str | None:
    if not args.resume:
        return None
    if args.captions_file is None:
        return "--resume needs --captions-file: the .jsonl, .json, .csv or .tsv file to go on with"
    if args.references is not None:
        return (f"--resume cannot go with --references: a resumed run captions only part of the inputs; score the "
                f"whole file afterwards with --score-captions {args.captions_file} --references {args.references}")
    if file_format(args.captions_file) not in RESUMABLE:
        return (f"--resume cannot go on with {args.captions_file}: records are appended to and read back from "
                "JSON Lines, CSV or TSV files only (.jsonl, .json, .csv, .tsv)")
    return None
