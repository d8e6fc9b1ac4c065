"""--ray: caption -i on a Ray cluster with Ray Data (docs/large-runs.md); the flags that go with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import decoding
from utils.ray_data.job import OUTPUT_FORMATS, RayJob


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("very large collections (-i)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="caption the inputs (local paths, or URIs such as s3://bucket/photos/) on a Ray cluster "
                        "at ADDRESS, as ray.init takes it (without one: a local Ray runtime), with --workers "
                        "actors, into --captions-file (.parquet, .jsonl, .json, .csv or .tsv); needs "
                        "'python3 -m pip install -r requirements-ray.txt' (see docs/large-runs.md)")


def usage_error(args: argparse.Namespace) -> str | None:
    """Ray's own rules; which flags go with --ray is utils/cli/modes.py's."""
    if args.ray is None:
        return None
    if not args.input:
        return "--ray needs -i: the files, folders, patterns or URIs (s3://bucket/photos/) to caption"
    if args.captions_file is None:
        return f"--ray writes its captions to --captions-file; name one ({', '.join(OUTPUT_FORMATS)})"
    if args.captions_file.suffix.lower() not in OUTPUT_FORMATS:
        return f"--ray --captions-file {args.captions_file}: use one of {' '.join(OUTPUT_FORMATS)}"
    return None


def job(args: argparse.Namespace) -> RayJob:
    return RayJob(inputs=args.input or [], address=args.ray or None, captions_file=Path(args.captions_file),
                  actors=args.workers, decoding=decoding.options(args), resume=args.resume)
