#!/usr/bin/env python3
"""Peak memory of image mode against the number of inputs: the real CLI, in a child process, on
folders of 200 and 2,000 photos (640x480 JPEGs), with `--json -s OUT`.

    python3 bench/bench_memory.py [--models bench/models] [--counts 200 2000] [--precision int8]
                                  [--workers N] [--test-models]

--test-models builds the tests' small model set instead (tests/stand_in_models.py): the models then take
milliseconds, so the run mostly exercises reading, queueing, drawing and writing, which is where memory
that grew with the number of inputs would show.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models  # noqa: E402
from bench.photos import sample_crops  # noqa: E402


def make_folder(folder: Path, count: int, distinct: list[Path]) -> None:
    folder.mkdir()
    for i in range(count):
        shutil.copyfile(distinct[i % len(distinct)], folder / f"photo_{i:05d}.jpg")


def peak_rss_mb(args: list[str]) -> tuple[float, float, int]:
    """Peak resident memory (MB) of one child process, its wall time (s), and its exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    assert proc.stderr is not None
    errors = proc.stderr.read().decode(errors="replace").strip()
    if errors:
        print(errors[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 1024, wall, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--counts", nargs="+", type=int, default=[200, 2000])
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--test-models", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models
        if args.test_models:
            from tests.stand_in_models import make_model_set

            models = Path(tmp) / "models"
            models.mkdir()
            make_model_set(models)
        else:
            ensure_models(models)
        distinct = []
        for i, photo in enumerate(sample_crops(50)):
            path = Path(tmp) / f"distinct_{i:02d}.jpg"
            cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
            distinct.append(path)
        which = "test-size" if args.test_models else "full-size"
        print(f"peak RSS of `-i FOLDER --json -s OUT --precision {args.precision}`, {which} models:")
        for count in args.counts:
            folder, out = Path(tmp) / f"in{count}", Path(tmp) / f"out{count}"
            make_folder(folder, count, distinct)
            cli = [sys.executable, str(ROOT / "image_captioning_pytorch.py"), "-i", str(folder), "-s", str(out),
                   "--json", "--model-dir", str(models), "--offline", "--onnx", "--beam-size", "1",
                   "--precision", args.precision]
            if args.workers:
                cli += ["--workers", str(args.workers)]
            rss, wall, status = peak_rss_mb(cli)
            print(f"  {count:6d} photos: peak RSS {rss:7.1f} MB, {wall:6.1f} s, exit status {status}", flush=True)
            shutil.rmtree(folder)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
