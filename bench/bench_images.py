#!/usr/bin/env python3
"""Image-mode throughput: the whole program on a folder of 640x480 photos against a bare loop of the
two model runs in one session each, in this process, on the same full-size benchmark models.

    python3 bench/bench_images.py [--models bench/models] [--images 40] [--rounds 2]
                                  [--precision fp32 int8] [--workers 1 2] [--beam-size 1]

For each precision the program runs image mode as `-i folder --json -s out` would (reading, the
models, drawing, JPEG writing, JSON), once per --workers value, and the bare loop runs the feature
model and the decoder on photos already read and preprocessed. Reported: milliseconds per photo, the
throughput ratio program/bare, and (for one worker, where stages do not overlap) the share of the
program's time spent outside the two model runs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models  # noqa: E402
from bench.photos import make_photos  # noqa: E402
from utils.decoding.options import DecodingOptions  # noqa: E402
from utils.engine.captioner import Captioner, CaptionerOptions, available_cores, default_workers  # noqa: E402
from utils.engine.preprocess import preprocess, read_image  # noqa: E402
from utils.engine.runtime import RuntimeOptions  # noqa: E402
from utils.images.job import ImageJob  # noqa: E402
from utils.images.run import run_images  # noqa: E402
from utils.quantization import PRECISIONS, Precision  # noqa: E402


def bare_loop(captioner: Captioner, inputs: list[np.ndarray]) -> float:
    """Seconds for the two model runs alone, inputs already preprocessed, in the sessions of a
    one-worker captioner (all cores to each session, as a plain script would have them)."""
    worker = captioner._workers[0]  # the bench measures the sessions themselves, below the API
    start = time.perf_counter()
    for x in inputs:
        fc = np.asarray(worker.feature.run({worker.feature_input: x})[0], np.float32).reshape(1, -1)
        worker.graph.run(fc)
    return time.perf_counter() - start


def program(captioner: Captioner, folder: Path, out_dir: Path,
            decoding: DecodingOptions) -> tuple[float, float, float]:
    """Seconds for the program's image mode (JSON output, annotated images saved), the seconds of it
    spent in the model runs (features, and decoding including any search), and the median time per
    photo of the work around them (reading, preprocessing, drawing and saving), in milliseconds."""
    sink = io.StringIO()
    job = ImageJob(inputs=[str(folder)], savepath=out_dir, format="json", decoding=decoding)
    start = time.perf_counter()
    status = run_images(job, captioner.options, out=sink, load=lambda _: captioner)
    wall = time.perf_counter() - start
    assert status == 0, sink.getvalue()
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    model = sum(r["timings"]["features"] + r["timings"]["decode"] for r in records) / 1e3
    around = statistics.median(sum(r["timings"][s] for s in ("read", "preprocess", "save")) for r in records)
    return wall, model, around


def load(models: Path, precision: Precision, workers: int) -> Captioner:
    captioner = Captioner(CaptionerOptions(model_dir=models, offline=True, progress=False, precision=precision,
                                           runtime=RuntimeOptions(backend="onnxruntime"), workers=workers))
    captioner.caption(read_image(ROOT / "samples" / "chelsea.png"))  # warm-up
    return captioner


def measure(args: argparse.Namespace, precision: Precision, photos_dir: Path, out_dir: Path,
            inputs: list[np.ndarray]) -> None:
    decoding = DecodingOptions(beam_size=args.beam_size)
    captioners = {w: load(args.models, precision, w) for w in args.workers}
    single = captioners.get(1) or load(args.models, precision, 1)
    for captioner in captioners.values():
        program(captioner, photos_dir, out_dir, decoding)  # warm the file cache and every worker's sessions
    bare: list[float] = []
    prog: dict[int, list[float]] = {w: [] for w in args.workers}
    outside: dict[int, list[float]] = {w: [] for w in args.workers}
    around: dict[int, list[float]] = {w: [] for w in args.workers}
    for round_ in range(args.rounds):
        # Alternate the order so that drift in machine load favours neither side.
        if round_ % 2 == 0:
            bare.append(bare_loop(single, inputs))
        for w, captioner in captioners.items():
            wall, model, io_ms = program(captioner, photos_dir, out_dir, decoding)
            prog[w].append(wall)
            outside[w].append((wall - model) / wall)
            around[w].append(io_ms)
        if round_ % 2 == 1:
            bare.append(bare_loop(single, inputs))
    n = len(inputs)
    b = statistics.median(bare)
    print(f"{precision}, beam size {args.beam_size}: bare loop {1e3 * b / n:.1f} ms/photo ({n / b:.2f} photos/s)")
    for w in args.workers:
        p = statistics.median(prog[w])
        line = (f"  program, --workers {w}: {1e3 * p / n:.1f} ms/photo ({n / p:.2f} photos/s), "
                f"program/bare {b / p:.3f}")
        if w == 1:
            io_ms = statistics.median(around[w])
            line += (f", time outside the model runs {100 * statistics.median(outside[w]):.2f} %; reading, "
                     f"preprocessing, drawing and saving {io_ms:.1f} ms a photo ({100 * io_ms * n / p / 1e3:.1f} %)")
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--workers", nargs="+", type=int, default=sorted({1, default_workers()}))
    parser.add_argument("--beam-size", type=int, default=1, help="1 (default): greedy, the published graphs")
    args = parser.parse_args()
    ensure_models(args.models)
    print(f"{args.images} photos 640x480, {args.rounds} rounds, medians; ONNX Runtime {ort.__version__}, "
          f"{available_cores()} cores, default --workers {default_workers()}")
    with tempfile.TemporaryDirectory() as tmp:
        photos_dir, out_dir = Path(tmp) / "photos", Path(tmp) / "out"
        photos_dir.mkdir()
        photos = make_photos(photos_dir, args.images)
        inputs = [preprocess(read_image(p)) for p in photos]
        for precision in args.precision:
            measure(args, precision, photos_dir, out_dir, inputs)


if __name__ == "__main__":
    main()
