#!/usr/bin/env python3
"""Ray's overhead on one machine: photos/s through `--ray --workers N` against `--workers N`, the same
photos, the same models, in one session (docs/large-runs.md#ray-data).

    python3 bench/bench_ray.py [--models bench/models] [--images 80] [--workers 2] [--rounds 2]

Both run the real command line in a subprocess, each writing --captions-file captions.jsonl, and are
timed whole. Ray's start-up (the local runtime, then an actor loading the models) is measured apart, by
a run of --ray on a single photo, and subtracted from the --ray run for its throughput once started.
Reported: seconds per run, photos/s, the ratio ray/plain of the photos/s once started, and the
start-up cost. The models default to the full-size benchmark set (bench/make_models.py); --models
with a test-size set (tests/stand_in_models.py) measures Ray's per-batch overhead on tiny models instead.
Needs requirements-ray.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models  # noqa: E402
from bench.photos import make_photos  # noqa: E402

SCRIPT = ROOT / "image_captioning_pytorch.py"




def timed_run(inputs: list[Path], models: Path, workers: int, out: Path, ray: bool) -> float:
    """Seconds the whole command takes; every input must come back with a caption."""
    out.unlink(missing_ok=True)
    command = [sys.executable, str(SCRIPT), "-i", *map(str, inputs), "--workers", str(workers), "--captions-file",
               str(out), "--model-dir", str(models), "--offline", "--onnx", *(["--ray"] if ray else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{'--ray' if ray else 'plain'} run failed: {proc.stderr.strip()[-2000:]}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(map(str, inputs)) and all(r["caption"] for r in rows)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models",
                        help="model folder (default: the full-size set, built there if missing)")
    parser.add_argument("--images", type=int, default=80, help="photos per run (default 80)")
    parser.add_argument("--workers", type=int, default=2, help="workers, and Ray actors (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, the median kept (default 2)")
    args = parser.parse_args(argv)
    if not (args.models / "model_feat.onnx").exists():
        ensure_models(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp) / "photos", args.images)
        out = Path(tmp) / "captions.jsonl"
        timed_run(photos[:2], args.models, args.workers, out, ray=False)  # warm the file cache and checksums
        startup, plain, ray = [], [], []
        for _ in range(args.rounds):  # interleaved, so that a slower minute of a shared machine hits both
            startup.append(timed_run(photos[:1], args.models, 1, out, ray=True))
            plain.append(timed_run(photos, args.models, args.workers, out, ray=False))
            ray.append(timed_run(photos, args.models, args.workers, out, ray=True))
    one = statistics.median(startup)
    t_plain, t_ray = statistics.median(plain), statistics.median(ray)
    # The single-photo --ray run is the start-up (runtime, actor, model load) plus one caption; the
    # plain run's own start-up (imports, model load) is in its time as it is in every run.
    ray_work = max(t_ray - one, 1e-9)
    print(f"photos {args.images}, workers/actors {args.workers}, models {args.models}")
    print(f"plain --workers {args.workers}: {t_plain:.2f} s, {args.images / t_plain:.2f} photos/s")
    print(f"--ray --workers {args.workers}: {t_ray:.2f} s whole, {args.images / t_ray:.2f} photos/s whole")
    print(f"--ray start-up (one photo, one actor): {one:.2f} s")
    print(f"--ray once started: {args.images / ray_work:.2f} photos/s; ratio ray/plain "
          f"{(args.images / ray_work) / (args.images / t_plain):.2f} (whole runs: {t_plain / t_ray:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
