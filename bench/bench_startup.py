#!/usr/bin/env python3
"""Start-up: what a command costs before and around its model runs, on the full-size benchmark models.

    python3 bench/bench_startup.py [--models bench/models] [--rounds 5] [--photos 24]

Each figure is the median of ``--rounds`` fresh processes (the real command line, files in the page cache):
``--help``; a usage error; process start to the caption of one photo (`-i photo.jpg`), fp32 and int8 (its
cache made beforehand). Beside them, one process's own breakdown of that caption: the imports, the model
files (read and checked against their checksum records), the sessions (ONNX Runtime's, and the check run
on a tiny image), and the model runs of the photo; and the warm Python API's time for the same photo in a
process that has loaded everything already. Reported: the part outside the model runs as a ratio of the
model runs, process-to-first-caption against the warm API, and a folder of ``--photos`` photos through the
command line against the warm API's ``caption_many`` on the same photos (throughput ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models, timed_process  # noqa: E402
from bench.photos import make_photos  # noqa: E402

SCRIPT = ROOT / "image_captioning_pytorch.py"

# One process's breakdown, printed as JSON: run with the model folder, the photo and the precision.
BREAKDOWN = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import cv2
from utils.engine.captioner import Captioner, CaptionerOptions, _load
from utils.engine.runtime import RuntimeOptions
from models import default_model_dir
t1 = time.perf_counter()
options = CaptionerOptions(model_dir=Path(sys.argv[1]), offline=True, progress=False, precision=sys.argv[3],
                           runtime=RuntimeOptions(backend="onnxruntime"))
_load(options, options.model_dir)
t2 = time.perf_counter()
captioner = Captioner(options)
t3 = time.perf_counter()
image = cv2.imread(sys.argv[2])
captioner.caption(image)
t4 = time.perf_counter()
warm = []
for _ in range(5):
    s = time.perf_counter()
    captioner.caption(cv2.imread(sys.argv[2]))
    warm.append(time.perf_counter() - s)
warm.sort()
print(json.dumps({"imports": t1 - t0, "files": t2 - t1, "sessions": (t3 - t2) - (t2 - t1), "runs": t4 - t3,
                  "warm": warm[2]}))
"""

# The warm API's throughput on a folder, printed as photos per second.
FOLDER = r"""
import sys, time
from pathlib import Path
from utils.engine.captioner import Captioner, CaptionerOptions, default_workers
from utils.engine.runtime import RuntimeOptions
options = CaptionerOptions(model_dir=Path(sys.argv[1]), offline=True, progress=False, workers=default_workers(),
                           runtime=RuntimeOptions(backend="onnxruntime"))
captioner = Captioner(options)
photos = sorted(Path(sys.argv[2]).iterdir())
list(captioner.caption_many(photos[:2]))
best = 0.0
for _ in range(2):
    start = time.perf_counter()
    results = list(captioner.caption_many(photos))
    best = max(best, len(results) / (time.perf_counter() - start))
print(best)
"""


def median_wall(args: list[str], rounds: int, expect: int = 0) -> float:
    return statistics.median(timed_process(args, expect) for _ in range(rounds))


def python(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=24)
    args = parser.parse_args()
    ensure_models(args.models)
    models = str(args.models)
    flags = ["--model-dir", models, "--offline", "--onnx"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photos = make_photos(folder, args.photos)
        photo = str(photos[0])
        timed_process([str(SCRIPT), "-i", photo, *flags, "--precision", "int8"])  # the int8 cache, made once
        print(f"CPU: {os.cpu_count()} cores; {args.rounds} rounds, medians")
        print(f"--help: {median_wall([str(SCRIPT), '--help'], args.rounds):.2f} s; a usage error: "
              f"{median_wall([str(SCRIPT), '-i', photo, '--beam-size', '0'], args.rounds, expect=2):.2f} s; "
              f"python3 -c pass: {median_wall(['-c', 'pass'], args.rounds):.2f} s")
        for precision in ("fp32", "int8"):
            first = median_wall([str(SCRIPT), "-i", photo, *flags, "--precision", precision], args.rounds)
            parts = [json.loads(python(BREAKDOWN, models, photo, precision)) for _ in range(args.rounds)]
            part = {key: statistics.median(p[key] for p in parts) for key in parts[0]}
            outside = part["imports"] + part["files"] + part["sessions"]
            print(f"{precision}: process to first caption {first:.2f} s; in one process: imports "
                  f"{part['imports']:.2f} s, model files {part['files']:.2f} s, sessions {part['sessions']:.2f} s, "
                  f"model runs {part['runs']:.2f} s (outside the runs: {outside / part['runs']:.2f} of them); "
                  f"warm API {part['warm']:.2f} s: first caption / warm = {first / part['warm']:.2f}")
        command = statistics.median(timed_process([str(SCRIPT), "-i", str(folder), *flags]) for _ in range(2))
        api = float(python(FOLDER, models, str(folder)))
        print(f"folder of {args.photos}: command line {args.photos / command:.2f} photos/s (whole command, "
              f"{command:.1f} s), warm API {api:.2f} photos/s: ratio {args.photos / command / api:.2f}")


if __name__ == "__main__":
    main()
