"""``main``: parse, set up logging and stderr, run the mode asked for, and turn every way it can end into
one line and an exit status."""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from dataclasses import replace

from utils.cli import checkpoint, evaluation, general, ray, serve, video
from utils.cli.parser import parse
from utils.engine.caption_types import CaptionerOptions
from utils.support.errors import CaptionError, UsageError, exception_chain, log_bug
from utils.support.stderr import library_output_silenced, own_stderr
from utils.support.stopping import MESSAGE, exit_status, program_work, signum_of
from utils.support.text import printable

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None, standalone: bool = False) -> int:
    """Run the program; ``standalone``: this process is the program (not a test calling in), so it may
    rearrange its own stdout and stderr (utils/support/stderr.py)."""
    args = parse(argv)
    if standalone and isinstance(sys.stdout, io.TextIOWrapper):
        # A file name that is not valid UTF-8 reaches Python as lone surrogates; printed, it becomes the
        # bytes it came from again, so every output names the file exactly (docs/limits.md).
        sys.stdout.reconfigure(errors="surrogateescape")
    quiet_libraries = standalone and not args.debug
    if quiet_libraries:
        own_stderr()  # before logging keeps a reference to sys.stderr; see utils/support/stderr.py
    configure_logging(args.debug)
    try:
        with program_work():
            return _run(args, quiet_libraries)
    except UsageError as exc:
        logger.error("%s", printable(str(exc)))
        return 2
    except CaptionError as exc:
        # Control characters (a newline in a file name) are escaped, but a message's own lines stay lines:
        # the --offline message lists each missing file on a line of its own.
        logger.error("%s", "\n".join(printable(line) for line in str(exc).split("\n")))
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt as exc:
        logger.error(MESSAGE)
        return exit_status(signum_of(exc))
    except Exception as exc:
        interrupt = next((e for e in exception_chain(exc) if isinstance(e, KeyboardInterrupt)), None)
        if interrupt is not None:  # Ctrl-C inside a library's import, wrapped in its own error
            logger.error(MESSAGE)
            return exit_status(signum_of(interrupt))
        log_bug(logger, exc)
        return 1


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not debug:
        # The SDK logs its licence lookup itself, and OpenCV its decoder complaints; our own
        # one-line messages already say what happened.
        logging.getLogger("ailia").setLevel(logging.CRITICAL)
        # OpenCV reads this when it loads; once loaded, it is told directly.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
        if (cv2 := sys.modules.get("cv2")) is not None:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        # FFmpeg (video mode) prints its own complaints about damaged files straight to stderr; OpenCV
        # reads this before its first use of FFmpeg.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def _run(args: argparse.Namespace, quiet_libraries: bool) -> int:
    # Each mode's modules are imported when it runs: --help, a usage error and the other modes pay for none
    # of them (ONNX Runtime, OpenCV, the web server, Ray).
    if args.env_list:
        from utils.engine.runtime import ailia_environments

        print("\n".join(ailia_environments()))
        return 0
    if args.import_checkpoint is not None:
        return checkpoint.run_import(args)
    if args.score_captions is not None:
        return evaluation.run_score_captions(args)
    options: CaptionerOptions = general.captioner_options(args)
    if args.serve is not None:
        if quiet_libraries:
            with library_output_silenced():
                return serve.run(args, options)
        return serve.run(args, options)
    if args.video is not None:
        from utils.video.run import run_video

        return run_video(video.job(args), options)
    if args.ray is not None:
        from utils.ray_data.run import run_ray

        if quiet_libraries:  # Ray's own processes and its C++ logging write to descriptor 2 too
            with library_output_silenced():
                return run_ray(ray.job(args), options)
        return run_ray(ray.job(args), options)
    from utils.images.run import run_images

    options = replace(options, workers=general.workers(args))
    if quiet_libraries:
        with library_output_silenced():
            return run_images(general.image_job(args), options)
    return run_images(general.image_job(args), options)
