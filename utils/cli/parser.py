"""The parser: the general flags, then one group per concern, and the one order their usage errors are
looked for in."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from models import default_model_dir, imported_names
from utils.cli import checkpoint, decoding, evaluation, general, metadata, modes, ray, resume, serve, video

# Which flags go with the mode asked for first (utils/cli/modes.py); then each group's own rules, in the
# order they are reported; then, knowing the model folder, the model's.
UsageCheck = Callable[[argparse.Namespace], "str | None"]
USAGE_CHECKS: tuple[UsageCheck, ...] = (serve.usage_error, video.usage_error, general.usage_error,
                                        decoding.usage_error, checkpoint.usage_error, metadata.usage_error,
                                        evaluation.usage_error, resume.usage_error, ray.usage_error)


def build_parser(model_dir: Path | None = None) -> argparse.ArgumentParser:
    """The parser; ``model_dir`` is where --help looks for imported models (default: the usual folder)."""
    p = argparse.ArgumentParser(
        prog="image_captioning_pytorch.py",
        description="Caption images with the ImageCaptioning.pytorch FC models (ailia SDK or ONNX Runtime).",
    )
    general.add_arguments(p, imported_names(model_dir or default_model_dir()))
    video.add_arguments(p)
    metadata.add_arguments(p)
    decoding.add_arguments(p)
    checkpoint.add_arguments(p)
    evaluation.add_arguments(p)
    serve.add_arguments(p)
    resume.add_arguments(p)
    ray.add_arguments(p)
    return p


def model_folder_of(argv: list[str] | None) -> Path:
    """The model folder the command line names, read before the full parse so that --help can list the
    models imported there."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--model-dir", type=Path, default=None)
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:
        return default_model_dir()  # the full parse reports it
    return known.model_dir or default_model_dir()


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed flags; a usage error (exit status 2) for anything that does not go together."""
    model_dir = model_folder_of(argv)
    parser = build_parser(model_dir)
    args = parser.parse_args(argv)
    if (problem := modes.usage_error(args, parser)) is not None:
        parser.error(problem)
    for check in USAGE_CHECKS:
        if (problem := check(args)) is not None:
            parser.error(problem)
    if (problem := general.model_usage_error(args, model_dir)) is not None:
        parser.error(problem)
    return args
