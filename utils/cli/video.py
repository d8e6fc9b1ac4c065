"""The video flags (-v and its group; docs/video.md) and the ``VideoJob`` they make."""

from __future__ import annotations

import argparse

from utils.cli import decoding
from utils.cli.arg_types import positive_number
from utils.video.job import DEFAULT_INTERVAL, VideoJob


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def usage_error(args: argparse.Namespace) -> str | None:
    """Video's own rules; which flags go with -v is utils/cli/modes.py's."""
    if args.sync and args.interval is not None:
        return "--sync and --interval cannot be used together"
    return None


def job(args: argparse.Namespace) -> VideoJob:
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
        decoding=decoding.options(args),
        quiet_gui=not args.debug,
    )
