#!/usr/bin/env python3
"""Caption photos with the ImageCaptioning.pytorch FC models on the ailia SDK or ONNX Runtime.

A thin command line over the ``utils`` package; see README.md for every option.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2

from models import DECODERS, DEFAULT_DECODER, MODEL_DIR_ENV
from utils.captioner import Captioner, CaptionerOptions
from utils.decoding import DecodingOptions
from utils.errors import CaptionError
from utils.images import ImageJob, run_images
from utils.runtime import BACKENDS, RuntimeOptions, ailia_environments

SAMPLE_IMAGE = Path(__file__).resolve().parent / "samples" / "chelsea.png"

logger = logging.getLogger("image_captioning_pytorch")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="image_captioning_pytorch.py",
        description="Caption images with the ImageCaptioning.pytorch FC models (ailia SDK or ONNX Runtime).",
    )
    p.add_argument("-i", "--input", nargs="+", metavar="PATH", default=[str(SAMPLE_IMAGE)],
                   help="image files, folders (their jpg/jpeg/png/bmp/webp/tif/tiff files) or glob patterns "
                        "(default: a sample photo)")
    p.add_argument("-s", "--savepath", type=Path, metavar="PATH",
                   help="save the image with its caption drawn on it: a file for one input, "
                        "a folder (one file per input, same name) for several")
    p.add_argument("--model", choices=DECODERS, default=DEFAULT_DECODER,
                   help=f"captioning decoder (default {DEFAULT_DECODER})")
    p.add_argument("--json", action="store_true", help="print one JSON object per input (JSON Lines)")
    p.add_argument("--remove-bad-endings", action="store_true",
                   help="drop trailing words such as 'a', 'the', 'with' from captions")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="inference runtime; auto uses the ailia SDK when it works, else ONNX Runtime")
    p.add_argument("--onnx", dest="backend", action="store_const", const="onnxruntime",
                   help="same as --backend onnxruntime")
    p.add_argument("-e", "--env_id", type=int, default=None, help="ailia execution environment id (see --env_list)")
    p.add_argument("--env_list", action="store_true", help="list the ailia execution environments and exit")
    p.add_argument("--memory_mode", type=int, default=None, help="ailia memory mode, passed to ailia.Net as is")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                   help=f"where model files are kept and downloaded to (default: ${MODEL_DIR_ENV} or models/)")
    p.add_argument("--offline", action="store_true", help="never download; fail if a model file is missing")
    p.add_argument("-b", "--benchmark", action="store_true",
                   help="time each stage (load, read, preprocess, features, decode, save)")
    p.add_argument("-bc", "--benchmark_count", type=positive_int, default=5, metavar="N",
                   help="runs per image with --benchmark (default 5)")
    p.add_argument("--debug", action="store_true", help="log details to stderr")
    return p


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not debug:
        # The SDK logs its licence lookup itself, and OpenCV its decoder complaints; our own
        # one-line messages already say what happened.
        logging.getLogger("ailia").setLevel(logging.CRITICAL)
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    try:
        if args.env_list:
            print("\n".join(ailia_environments()))
            return 0
        options = CaptionerOptions(
            model=args.model,
            model_dir=args.model_dir,
            runtime=RuntimeOptions(backend=args.backend, env_id=args.env_id, memory_mode=args.memory_mode),
            offline=args.offline,
        )
        job = ImageJob(
            inputs=args.input,
            savepath=args.savepath,
            json=args.json,
            benchmark_count=args.benchmark_count if args.benchmark else 0,
            decoding=DecodingOptions(remove_bad_endings=args.remove_bad_endings),
        )
        return run_images(job, lambda: Captioner(options))
    except CaptionError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
