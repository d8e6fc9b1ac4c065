#!/usr/bin/env python3
"""Memory of a `--ray` run against its number of inputs: the driver's peak resident memory and the
object store's peak use, at 10,000 and 100,000 inputs (docs/large-runs.md#memory).

    python3 bench/bench_ray_memory.py [--counts 10000 100000] [--workers 2]

The inputs are generated here and removed afterwards (hard links to a 32x32 PNG, so that making
100,000 of them takes a second and reading them costs nothing), and captioned by test-size models
(tests/stand_in_models.py): what grows with the inputs is Ray's and the driver's bookkeeping, not the
models' work, so tiny models show it in minutes. Each run is the real command line, `-i FOLDER --ray
--workers N --captions-file out.csv`, with a local Ray runtime of its own. While it runs, the driver's
VmHWM (/proc/PID/status) and the used space of /dev/shm, where Ray's object store keeps its objects,
are sampled every 0.2 s; reported are their peaks, the bytes per input, and the run's rows/s.
Needs requirements-ray.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stand_in_models import make_model_set  # noqa: E402

SCRIPT = ROOT / "image_captioning_pytorch.py"
SAMPLE_S = 0.2
MB = 1 << 20
LINKS_PER_FILE = 50_000


@dataclass
class Peaks:
    driver_kb: int = 0  # the driver's VmHWM
    shm_bytes: int = 0  # /dev/shm used above what it was before the run


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _shm_used() -> int:
    stat = os.statvfs("/dev/shm")
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def measured_run(folder: Path, models: Path, workers: int, out: Path) -> tuple[float, Peaks]:
    """The run's seconds and peaks; every input must come back with a caption."""
    out.unlink(missing_ok=True)
    before = _shm_used()
    command = [sys.executable, str(SCRIPT), "-i", str(folder), "--ray", "--workers", str(workers), "--captions-file",
               str(out), "--model-dir", str(models), "--offline", "--onnx"]
    peaks = Peaks()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            peaks.driver_kb = max(peaks.driver_kb, _vm_hwm_kb(proc.pid) or 0)
            peaks.shm_bytes = max(peaks.shm_bytes, _shm_used() - before)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"the --ray run failed: {stderr.strip()[-2000:]}")
    with out.open(encoding="utf-8") as f:
        rows = sum(1 for _ in f) - 1
    inputs = sum(1 for _ in folder.iterdir())
    if rows != inputs:
        raise SystemExit(f"{rows} rows for {inputs} inputs")
    return seconds, peaks


def make_inputs(folder: Path, count: int, image: Path) -> None:
    """``count`` names for the same few bytes: hard links, a copy of ``image`` for every LINKS_PER_FILE
    (file systems bound a file's links: ext4 at 65,000)."""
    folder.mkdir()
    source = image
    for i in range(count):
        if i % LINKS_PER_FILE == 0:
            source = folder.parent / f"{image.stem}-{i // LINKS_PER_FILE}{image.suffix}"
            shutil.copyfile(image, source)
        os.link(source, folder / f"p{i:07d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000], help="inputs per run")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (default 2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = work / "models"
        models.mkdir()
        make_model_set(models, eos_bias=3.0)
        image = work / "one.png"
        cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
        print(f"{'inputs':>8} {'seconds':>8} {'rows/s':>7} {'driver peak MB':>15} {'B/input':>8} "
              f"{'object store peak MB':>21} {'B/input':>8}")
        for count in args.counts:
            folder = work / f"in{count}"
            make_inputs(folder, count, image)
            seconds, peaks = measured_run(folder, models, args.workers, work / "out.csv")
            print(f"{count:>8} {seconds:>8.1f} {count / seconds:>7.0f} {peaks.driver_kb / 1024:>15.0f} "
                  f"{peaks.driver_kb * 1024 / count:>8.0f} {peaks.shm_bytes / MB:>21.0f} "
                  f"{peaks.shm_bytes / count:>8.0f}", flush=True)
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
