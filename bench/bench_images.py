#!/usr/bin/env python3
"""Image-mode overhead: the whole program on a folder of 640x480 photos against a bare loop of
the two model runs, both in this process on the same full-size benchmark models.

    python3 bench/bench_images.py [--models bench/models] [--images 50] [--rounds 2]

Reports the throughput ratio (program / bare loop) and the share of the program's time spent
outside the two model runs (reading, preprocessing, words, drawing, writing the output).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.photos import sample_crops  # noqa: E402
from utils.captioner import Captioner, CaptionerOptions  # noqa: E402
from utils.decoding.options import DecodingOptions  # noqa: E402
from utils.images import ImageJob, run_images  # noqa: E402
from utils.preprocess import preprocess, read_image  # noqa: E402
from utils.runtime import RuntimeOptions  # noqa: E402


def ensure_models(folder: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_models.py"), str(folder)], check=True)


def make_photos(folder: Path, count: int) -> list[Path]:
    """640x480 JPEGs, so that reading them costs what reading a real photo costs."""
    paths = []
    for i, photo in enumerate(sample_crops(count)):
        path = folder / f"photo_{i:03d}.jpg"
        cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def bare_sessions(models: Path, warm_input: np.ndarray) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    feat = ort.InferenceSession(str(models / "model_feat.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(models / "model_fc_nsc.onnx"), providers=["CPUExecutionProvider"])
    fc = feat.run(None, {feat.get_inputs()[0].name: warm_input})[0].reshape(1, -1)  # warm, like the captioner
    dec.run(None, {dec.get_inputs()[0].name: fc})
    return feat, dec


def bare_loop(feat: ort.InferenceSession, dec: ort.InferenceSession, inputs: list[np.ndarray]) -> float:
    """Seconds for the two model runs alone, inputs already preprocessed."""
    feat_in, dec_in = feat.get_inputs()[0].name, dec.get_inputs()[0].name
    start = time.perf_counter()
    for x in inputs:
        fc = feat.run(None, {feat_in: x})[0].reshape(1, -1)
        dec.run(None, {dec_in: fc})
    return time.perf_counter() - start


def program(captioner: Captioner, folder: Path, out_dir: Path, decoding: DecodingOptions) -> tuple[float, float]:
    """Seconds for the program's image mode (JSON output, annotated images saved), and the
    seconds of it spent in the model runs (features, and decoding including any search)."""
    sink = io.StringIO()
    job = ImageJob(inputs=[str(folder)], savepath=out_dir, format="json", decoding=decoding)
    start = time.perf_counter()
    status = run_images(job, captioner.options, out=sink, load=lambda _: captioner)
    wall = time.perf_counter() - start
    assert status == 0, sink.getvalue()
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    model = sum(r["timings"]["features"] + r["timings"]["decode"] for r in records) / 1e3
    return wall, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ensure_models(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        photos_dir, out_dir = Path(tmp) / "photos", Path(tmp) / "out"
        photos_dir.mkdir()
        photos = make_photos(photos_dir, args.images)
        inputs = [preprocess(read_image(p)) for p in photos]
        captioner = Captioner(CaptionerOptions(model_dir=args.models, offline=True, progress=False,
                                               runtime=RuntimeOptions(backend="onnxruntime")))
        captioner.caption(read_image(photos[0]))  # warm-up
        sessions = bare_sessions(args.models, inputs[0])
        # Greedy is what the bare loop computes (the published graphs); beam 5 is the default.
        configs = {"--beam-size 1": DecodingOptions(beam_size=1), "default (beam 5)": DecodingOptions()}
        bare: list[float] = []
        prog: dict[str, list[float]] = {name: [] for name in configs}
        outside: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            # Alternate the order so that drift in machine load favours neither side.
            if round_ % 2 == 0:
                bare.append(bare_loop(*sessions, inputs))
            for name, decoding in configs.items():
                wall, model = program(captioner, photos_dir, out_dir, decoding)
                prog[name].append(wall)
                outside[name].append((wall - model) / wall)
            if round_ % 2 == 1:
                bare.append(bare_loop(*sessions, inputs))
    n = args.images
    b = statistics.median(bare)
    print(f"{n} images 640x480, {args.rounds} rounds, ONNX Runtime {ort.__version__}, medians:")
    print(f"  bare loop of the two model runs: {b:.2f} s ({1e3 * b / n:.1f} ms/image)")
    for name in configs:
        p = statistics.median(prog[name])
        print(f"  program -i folder --json -s out, {name}: {p:.2f} s ({1e3 * p / n:.1f} ms/image), "
              f"throughput ratio program/bare {b / p:.3f} (target >= 0.95 for greedy), "
              f"time outside the model runs {100 * statistics.median(outside[name]):.2f} % (target < 5 %)")


if __name__ == "__main__":
    main()
