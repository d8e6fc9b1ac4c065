"""The general flags: inputs, outputs, model and runtime (docs/options.md), and what they make: the
``CaptionerOptions`` and the ``ImageJob``."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import DECODERS, DEFAULT_DECODER, MODEL_DIR_ENV, default_model_dir, imported_names, model_choices
from utils.cli import decoding, evaluation, metadata
from utils.cli.arg_types import int_up_to
from utils.cli.version import VersionAction
from utils.engine import compatibility
from utils.engine.caption_types import MAX_WORKERS, CaptionerOptions, default_workers
from utils.engine.runtime import BACKENDS, RuntimeOptions
from utils.images.job import ImageJob
from utils.output.captions_file import EXTENSIONS, captions_file_usage_error
from utils.output.formats import FORMATS, stream_formats
from utils.quantization import PRECISIONS

MAX_BENCHMARK_COUNT = 1000  # runs per image with -b (docs/limits.md)
SAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "samples" / "chelsea.png"


def add_arguments(p: argparse.ArgumentParser, imported: list[str]) -> None:
    """The flags of the parser's first group; ``imported``: the models imported in the model folder."""
    p.add_argument("-i", "--input", nargs="+", metavar="PATH", default=None,
                   help="image files, folders (their jpg/jpeg/png/bmp/webp/tif/tiff files) or glob patterns "
                        "(default: a sample photo)")
    p.add_argument("-v", "--video", metavar="SRC",
                   help="caption video instead of images: a camera index (0), a video file, or a URL or "
                        "pipeline OpenCV opens (see docs/video.md)")
    p.add_argument("-s", "--savepath", type=Path, metavar="PATH",
                   help="save the image with its caption drawn on it: a file for one input, "
                        "a folder (one file per input, same name) for several; with -v the annotated "
                        "video: .webm (VP8) plays in web browsers; .mp4/.m4v/.mov (mp4v, fastest) and "
                        ".avi/.mkv (MJPG) play in desktop players, not in browsers")
    p.add_argument("--model", default=DEFAULT_DECODER, metavar="NAME",
                   help=f"captioning decoder: {', '.join(DECODERS)} (default {DEFAULT_DECODER}), or a model imported "
                        "with --import-checkpoint (in the model folder: "
                        f"{', '.join(imported) if imported else 'none yet'})")
    p.add_argument("--format", choices=stream_formats(), default="text",
                   help="what to print on stdout: text (default); json (one JSON object per image or caption, "
                        "JSON Lines); vtt or srt (video only: a subtitle track, one cue per caption change); "
                        "csv or tsv (a header, then one row per image or caption)")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument("--captions-file", type=Path, metavar="PATH",
                   help="also write the captions to PATH, atomically, in the format its extension names "
                        f"({' '.join(EXTENSIONS)}; .jsonl is json, .txt is text), whatever --format says; "
                        "stdout keeps --format")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="inference runtime; auto uses the ailia SDK when it works, else ONNX Runtime")
    p.add_argument("--onnx", dest="backend", action="store_const", const="onnxruntime",
                   help="same as --backend onnxruntime")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default): the published models, exactly; int8: the feature model quantized "
                        "for this CPU, several times faster, made from the fp32 file on first use and cached "
                        "(ONNX Runtime only; see docs/int8.md)")
    p.add_argument("--workers", type=int_up_to(MAX_WORKERS), default=None, metavar="N",
                   help="images captioned at once, each by its own model sessions with its share of the cores "
                        f"(default for this machine: {default_workers()}; see docs/performance.md)")
    p.add_argument("-e", "--env_id", type=int, default=None, help="ailia execution environment id (see --env_list)")
    p.add_argument("--env_list", action="store_true", help="list the ailia execution environments and exit")
    p.add_argument("--version", action=VersionAction,
                   help="print this program's version and those of ONNX Runtime, the ailia SDK and OpenCV, and exit")
    p.add_argument("--memory_mode", type=int, default=None, help="ailia memory mode, passed to ailia.Net as is")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                   help=f"where model files are kept and downloaded to (default: ${MODEL_DIR_ENV} or models/)")
    p.add_argument("--offline", action="store_true", help="never download; fail if a model file is missing")
    p.add_argument("-b", "--benchmark", action="store_true",
                   help="time each stage (load, read, preprocess, features, decode, save)")
    p.add_argument("-bc", "--benchmark_count", type=int_up_to(MAX_BENCHMARK_COUNT), default=5, metavar="N",
                   help="runs per image with --benchmark (default 5)")
    p.add_argument("--debug", action="store_true", help="log details to stderr")


def usage_error(args: argparse.Namespace) -> str | None:
    return _format_error(args) or compatibility.conflict(combination(args))


def model_usage_error(args: argparse.Namespace, model_dir: Path) -> str | None:
    if args.import_checkpoint is not None or args.model in DECODERS or args.model in imported_names(model_dir):
        return None
    return f"argument --model: invalid choice: {args.model!r} (choose from {model_choices(model_dir)})"


def _format_error(args: argparse.Namespace) -> str | None:
    if args.ray is not None:
        return None  # --ray writes files of its own kinds (utils/cli/ray.py)
    mode = "video" if args.video is not None else "images"
    modes = FORMATS[args.format].modes
    if mode in modes:
        return captions_file_usage_error(args.captions_file, mode)
    return f"--format {args.format} is for {' and '.join(sorted(modes))}, not {mode}"


def combination(args: argparse.Namespace) -> compatibility.Combination:
    """What the flags ask of the runtime, for the one place that decides what goes together."""
    ailia_settings = tuple(flag for flag, value in (("-e/--env_id", args.env_id), ("--memory_mode", args.memory_mode))
                           if value is not None)
    return compatibility.Combination(backend=args.backend, precision=args.precision, workers=args.workers,
                                     video=args.video is not None, ailia_settings=ailia_settings)


def captioner_options(args: argparse.Namespace) -> CaptionerOptions:
    """The captioner for either mode: image mode's workers are set from the job (``image_job``)."""
    return CaptionerOptions(
        model=args.model,
        model_dir=args.model_dir,
        runtime=RuntimeOptions(backend=args.backend, env_id=args.env_id, memory_mode=args.memory_mode),
        offline=args.offline,
        precision=args.precision,
    )


def workers(args: argparse.Namespace) -> int:
    return args.workers or compatibility.default_workers(args.backend, default_workers())


def image_job(args: argparse.Namespace) -> ImageJob:
    return ImageJob(
        inputs=args.input or [str(SAMPLE_IMAGE)],
        savepath=args.savepath,
        format=args.format,
        captions_file=args.captions_file,
        resume=args.resume,
        benchmark_count=args.benchmark_count if args.benchmark else 0,
        decoding=decoding.options(args),
        metadata=metadata.options(args),
        evaluation=evaluation.options(args),
    )


def model_folder(args: argparse.Namespace) -> Path:
    return args.model_dir or default_model_dir()
