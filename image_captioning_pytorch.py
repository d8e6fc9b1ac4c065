#!/usr/bin/env python3
"""Caption photos with the ImageCaptioning.pytorch FC models on the ailia SDK or ONNX Runtime.

A thin command line over the ``utils`` package; see README.md for every option.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # First of all: Ctrl-C or SIGTERM while the libraries below load (seconds, on a cold disk) ends the
    # program at once, with nothing to clean up yet; main() says how they are answered once work starts
    # (utils/stopping.py).
    from utils.stopping import Interrupts

    Interrupts(mode="exit").install_for_program()
    from utils.limits import apply_decoding_limit

    apply_decoding_limit()  # OpenCV reads it once, when it loads

import argparse  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import traceback  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from models import DECODERS, DEFAULT_DECODER, MODEL_DIR_ENV, default_model_dir, imported_names, model_choices  # noqa: E402
from utils.arg_types import int_up_to, positive_number  # noqa: E402
from utils.captioner import MAX_WORKERS, CaptionerOptions, default_workers  # noqa: E402
from utils.checkpoint.cli import add_import_arguments, import_usage_error, run_import  # noqa: E402
from utils.decoding.cli import add_decoding_arguments, decoding_options, decoding_usage_error  # noqa: E402
from utils.errors import CaptionError, exception_chain  # noqa: E402
from utils.images import ImageJob, run_images  # noqa: E402
from utils.metadata.cli import add_metadata_arguments, metadata_options, metadata_usage_error  # noqa: E402
from utils.output.captions_file import EXTENSIONS, captions_file_usage_error  # noqa: E402
from utils.output.formats import FORMATS, printable  # noqa: E402
from utils.quantization import PRECISIONS  # noqa: E402
from utils.runtime import BACKENDS, RuntimeOptions, ailia_environments  # noqa: E402
from utils.stderr import library_output_silenced, own_stderr  # noqa: E402
from utils.stopping import MESSAGE, exit_status, program_work, signum_of  # noqa: E402
from utils.video.job import DEFAULT_INTERVAL, VideoJob  # noqa: E402
from utils.video.run import run_video  # noqa: E402

MAX_BENCHMARK_COUNT = 1000  # runs per image with -b (README, "Limits")
SAMPLE_IMAGE = Path(__file__).resolve().parent / "samples" / "chelsea.png"

logger = logging.getLogger("image_captioning_pytorch")


def build_parser(model_dir: Path | None = None) -> argparse.ArgumentParser:
    """The parser; ``model_dir`` is where --help looks for imported models (default: the usual folder)."""
    imported = imported_names(model_dir or default_model_dir())
    p = argparse.ArgumentParser(
        prog="image_captioning_pytorch.py",
        description="Caption images with the ImageCaptioning.pytorch FC models (ailia SDK or ONNX Runtime).",
    )
    p.add_argument("-i", "--input", nargs="+", metavar="PATH", default=None,
                   help="image files, folders (their jpg/jpeg/png/bmp/webp/tif/tiff files) or glob patterns "
                        "(default: a sample photo)")
    p.add_argument("-v", "--video", metavar="SRC",
                   help="caption video instead of images: a camera index (0), a video file, or a URL or "
                        "pipeline OpenCV opens (see README, Video and webcam)")
    p.add_argument("-s", "--savepath", type=Path, metavar="PATH",
                   help="save the image with its caption drawn on it: a file for one input, "
                        "a folder (one file per input, same name) for several; with -v the annotated "
                        "video: .webm (VP8) plays in web browsers; .mp4/.m4v/.mov (mp4v, fastest) and "
                        ".avi/.mkv (MJPG) play in desktop players, not in browsers")
    p.add_argument("--model", default=DEFAULT_DECODER, metavar="NAME",
                   help=f"captioning decoder: {', '.join(DECODERS)} (default {DEFAULT_DECODER}), or a model imported "
                        "with --import-checkpoint (in the model folder: "
                        f"{', '.join(imported) if imported else 'none yet'})")
    p.add_argument("--format", choices=FORMATS, default="text",
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
                        "(ONNX Runtime only; see README, int8)")
    p.add_argument("--workers", type=int_up_to(MAX_WORKERS), default=None, metavar="N",
                   help="images captioned at once, each by its own model sessions with its share of the cores "
                        f"(default for this machine: {default_workers()}; see README, Several workers)")
    p.add_argument("-e", "--env_id", type=int, default=None, help="ailia execution environment id (see --env_list)")
    p.add_argument("--env_list", action="store_true", help="list the ailia execution environments and exit")
    p.add_argument("--memory_mode", type=int, default=None, help="ailia memory mode, passed to ailia.Net as is")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                   help=f"where model files are kept and downloaded to (default: ${MODEL_DIR_ENV} or models/)")
    p.add_argument("--offline", action="store_true", help="never download; fail if a model file is missing")
    p.add_argument("-b", "--benchmark", action="store_true",
                   help="time each stage (load, read, preprocess, features, decode, save)")
    p.add_argument("-bc", "--benchmark_count", type=int_up_to(MAX_BENCHMARK_COUNT), default=5, metavar="N",
                   help="runs per image with --benchmark (default 5)")
    p.add_argument("--debug", action="store_true", help="log details to stderr")
    add_video_arguments(p)
    add_metadata_arguments(p)
    add_decoding_arguments(p)
    add_import_arguments(p)
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


def model_usage_error(args: argparse.Namespace, model_dir: Path) -> str | None:
    if args.import_checkpoint is not None or args.model in DECODERS or args.model in imported_names(model_dir):
        return None
    return f"argument --model: invalid choice: {args.model!r} (choose from {model_choices(model_dir)})"


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video (-v)")
    g.add_argument("--interval", type=positive_number, default=None, metavar="SECONDS",
                   help=f"files: caption a frame every SECONDS of video time and keep the caption until the "
                        f"next (default {DEFAULT_INTERVAL:g}); live sources: start captions at least SECONDS "
                        "apart (default: continuously)")
    g.add_argument("--sync", action="store_true",
                   help="caption every frame (files); live sources: caption each frame before showing it, "
                        "as the original demo does (the video stalls)")
    g.add_argument("--live", action="store_true",
                   help="play a video file at its frame rate as a live source (frames shown on time, "
                        "captions of the latest frame)")
    g.add_argument("--hud", action="store_true", help="also draw the display fps, caption latency and model")
    g.add_argument("--no-display", dest="display", action="store_false",
                   help="never open a window (automatic when there is no display)")


def video_usage_errors(args: argparse.Namespace) -> str | None:
    if args.video is not None:
        if args.input is not None:
            return "-i/--input and -v/--video cannot be used together"
        if args.benchmark:
            return "-b/--benchmark is for images; with -v use --hud or --json timings"
        if args.workers is not None:
            return "--workers is for images (-i); video captions one frame at a time"
        if args.sync and args.interval is not None:
            return "--sync and --interval cannot be used together"
        return None
    used = [flag for flag, on in [("--interval", args.interval is not None), ("--sync", args.sync),
                                  ("--live", args.live), ("--hud", args.hud), ("--no-display", not args.display)]
            if on]
    return f"{', '.join(used)} only appl{'ies' if len(used) == 1 else 'y'} to video (-v)" if used else None


def backend_usage_error(args: argparse.Namespace) -> str | None:
    ailia_only = [flag for flag, value in (("-e/--env_id", args.env_id), ("--memory_mode", args.memory_mode))
                  if value is not None]
    if ailia_only and args.backend == "onnxruntime":
        verb = "applies" if len(ailia_only) == 1 else "apply"
        return f"{' and '.join(ailia_only)} only {verb} to the ailia SDK, not to ONNX Runtime"
    if args.workers is not None and args.workers > 1 and args.backend == "ailia":
        return "--workers runs several ONNX Runtime sessions; the ailia SDK runs one (use --backend onnxruntime)"
    return None


def precision_usage_error(args: argparse.Namespace) -> str | None:
    if args.precision == "int8" and args.backend == "ailia":
        return "--precision int8 runs on ONNX Runtime only: use --backend onnxruntime or auto, or --precision fp32"
    return None


def format_usage_error(args: argparse.Namespace) -> str | None:
    mode = "video" if args.video is not None else "images"
    modes = FORMATS[args.format].modes
    if mode in modes:
        return captions_file_usage_error(args.captions_file, mode)
    return f"--format {args.format} is for {' and '.join(sorted(modes))}, not {mode}"


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not debug:
        # The SDK logs its licence lookup itself, and OpenCV its decoder complaints; our own
        # one-line messages already say what happened.
        logging.getLogger("ailia").setLevel(logging.CRITICAL)
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        # FFmpeg (video mode) prints its own complaints about damaged files straight to stderr; OpenCV
        # reads this before its first use of FFmpeg.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def video_job(args: argparse.Namespace) -> VideoJob:
    return VideoJob(
        source=args.video,
        savepath=args.savepath,
        format=args.format,
        captions_file=args.captions_file,
        interval=args.interval,
        sync=args.sync,
        live=args.live,
        display=args.display,
        hud=args.hud,
        decoding=decoding_options(args),
        quiet_gui=not args.debug,
    )


def main(argv: list[str] | None = None, standalone: bool = False) -> int:
    """Run the program; ``standalone``: this process is the program (not a test calling in), so it may
    rearrange its own stderr (utils/stderr.py)."""
    model_dir = model_folder_of(argv)
    parser = build_parser(model_dir)
    args = parser.parse_args(argv)
    if (problem := video_usage_errors(args) or format_usage_error(args) or precision_usage_error(args)
            or backend_usage_error(args) or decoding_usage_error(args) or import_usage_error(args)
            or metadata_usage_error(args)
            or model_usage_error(args, model_dir)):
        parser.error(problem)
    if standalone and isinstance(sys.stdout, io.TextIOWrapper):
        # A file name that is not valid UTF-8 reaches Python as lone surrogates; printed, it becomes the
        # bytes it came from again, so every output names the file exactly (README, "Limits").
        sys.stdout.reconfigure(errors="surrogateescape")
    quiet_libraries = standalone and not args.debug
    if quiet_libraries:
        own_stderr()  # before logging keeps a reference to sys.stderr; see utils/stderr.py
    configure_logging(args.debug)
    try:
        with program_work():
            return _run(args, quiet_libraries)
    except CaptionError as exc:
        # Control characters (a newline in a file name) are escaped, but a message's own lines stay lines:
        # the --offline message lists each missing file on a line of its own.
        logger.error("%s", "\n".join(printable(line) for line in str(exc).split("\n")))
        return 1
    except KeyboardInterrupt as exc:
        logger.error(MESSAGE)
        return exit_status(signum_of(exc))
    except Exception as exc:
        interrupt = next((e for e in exception_chain(exc) if isinstance(e, KeyboardInterrupt)), None)
        if interrupt is not None:  # Ctrl-C inside a library's import, wrapped in its own error
            logger.error(MESSAGE)
            return exit_status(signum_of(interrupt))
        # Not a problem with the input: a bug. One line still, the traceback with --debug.
        logger.debug("%s", "".join(traceback.format_exception(exc)))
        logger.error("internal error: %s: %s (run with --debug for details)", type(exc).__name__,
                     printable(str(exc).strip().splitlines()[0] if str(exc).strip() else ""))
        return 1


def _run(args: argparse.Namespace, quiet_libraries: bool) -> int:
    if args.env_list:
        print("\n".join(ailia_environments()))
        return 0
    if args.import_checkpoint is not None:
        return run_import(args)
    options = CaptionerOptions(
        model=args.model,
        model_dir=args.model_dir,
        runtime=RuntimeOptions(backend=args.backend, env_id=args.env_id, memory_mode=args.memory_mode),
        offline=args.offline,
        precision=args.precision,
    )
    if args.video is not None:
        return run_video(video_job(args), options)
    options = replace(options, workers=args.workers or default_workers())
    job = ImageJob(
        inputs=args.input or [str(SAMPLE_IMAGE)],
        savepath=args.savepath,
        format=args.format,
        captions_file=args.captions_file,
        benchmark_count=args.benchmark_count if args.benchmark else 0,
        decoding=decoding_options(args),
        metadata=metadata_options(args),
    )
    if quiet_libraries:
        with library_output_silenced():
            return run_images(job, options)
    return run_images(job, options)


def _exit(status: int) -> None:
    """Flush and exit with ``status``, without the interpreter's shutdown: by now every file of ours is
    complete or removed, and the shutdown could only go wrong. After an interruption a model thread may
    still be inside ONNX Runtime, which the shutdown would destroy under it (SIGABRT); and a signal
    that came during it would end the process by that signal, after a run that had finished."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":
    _exit(main(standalone=True))
