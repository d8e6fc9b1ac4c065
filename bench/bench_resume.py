#!/usr/bin/env python3
"""Re-runs over work that is done: the whole program, as people run it, on a folder of 640x480 photos
with the full-size benchmark models, each run a fresh process (start-up included).

    python3 bench/bench_resume.py [--models bench/models] [--images 100] [--workers 2] [--beam-size 1]

Measured in one session, on the same photos:
- metadata: `-i folder --write-metadata` on photos without a description (every photo captioned and
  written), then the same command again (every photo described already: found by ExifTool before any
  is read, no model loaded);
- resume: `-i folder --captions-file captions.jsonl --resume` (every photo captioned), then the same
  command again (every input recorded already: nothing read).
Reported: seconds per run and the ratio re-run / first run (docs/large-runs.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models, timed_process  # noqa: E402
from bench.photos import make_photos  # noqa: E402
from utils.engine.captioner import default_workers  # noqa: E402
from utils.metadata import require_exiftool  # noqa: E402


def timed_run(args: list[str]) -> float:
    """Seconds the program takes from start to exit; it must succeed."""
    return timed_process([str(ROOT / "image_captioning_pytorch.py"), *args])


def first_and_again(name: str, args: list[str]) -> None:
    first = timed_run(args)
    again = timed_run(args)
    print(f"{name}: first run {first:.2f} s, re-run {again:.2f} s, ratio {again / first:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--beam-size", type=int, default=1, help="1 (default): greedy, the published graphs")
    args = parser.parse_args()
    require_exiftool()
    ensure_models(args.models)
    common = ["--model-dir", str(args.models), "--offline", "--onnx", "--workers", str(args.workers),
              "--beam-size", str(args.beam_size)]
    print(f"{args.images} photos 640x480, {args.workers} workers, beam size {args.beam_size}, fp32", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        make_photos(photos, args.images)
        first_and_again("metadata (--write-metadata)", ["-i", str(photos), "--write-metadata", *common])
        shutil.rmtree(photos)
        make_photos(photos, args.images)
        captions = Path(tmp) / "captions.jsonl"
        first_and_again("resume (--captions-file --resume)",
                        ["-i", str(photos), "--captions-file", str(captions), "--resume", *common])


if __name__ == "__main__":
    main()
