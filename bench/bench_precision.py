#!/usr/bin/env python3
"""What --precision int8 changes on your photos: captions, features and speed, against fp32.

    python3 bench/bench_precision.py --models DIR [--model fc_nsc] --photos DIR [--rounds 2] [--threads N]

Loads the model set in DIR twice, as the program does (ONNX Runtime, offline): fp32, and int8 (the
int8 feature model is made and cached in DIR on first use, as with --precision int8). Then, for every
image in --photos (a folder, a file or a glob pattern; default: the project's samples/, which are the
calibration photos themselves), with the default decoding (beam 5):

- the share of captions that are equal under fp32 and int8, and the ones that differ;
- the feature cosine between the two (mean and min);
- a control: the share of equal captions when the fp32 features get random noise as large as int8's
  error on each photo instead. About as many equal captions as int8 means the differences come from
  the decoder's sensitivity to any change of that size, not from something systematic in int8;
- the speed ratio fp32 / int8 of the feature stage and of the whole caption (preprocessing, features,
  decoding), from medians over the photos and rounds; the rounds alternate which precision goes first.

Run it on the real models (``--models models``) to measure the trade-off on your own photos.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cosine  # noqa: E402
from models import DECODERS, DEFAULT_DECODER  # noqa: E402
from utils.engine.captioner import Captioner, CaptionerOptions  # noqa: E402
from utils.engine.preprocess import read_image  # noqa: E402
from utils.engine.runtime import RuntimeOptions  # noqa: E402
from utils.images.inputs import expand_inputs  # noqa: E402
from utils.quantization import Precision  # noqa: E402
from utils.quantization.features import int8_path  # noqa: E402
from utils.quantization.methods import cpu_name, method_for_this_cpu  # noqa: E402


@dataclass
class Timings:
    features: list[float] = field(default_factory=list)  # ms
    decode: list[float] = field(default_factory=list)  # ms, the decoder (beam 5 by default) and the words
    caption: list[float] = field(default_factory=list)  # ms, preprocess + features + decode


def load(models: Path, model: str, precision: Precision, threads: int | None) -> tuple[Captioner, float]:
    start = time.perf_counter()
    captioner = Captioner(CaptionerOptions(model=model, model_dir=models, offline=True, precision=precision,
                                           runtime=RuntimeOptions(backend="onnxruntime", intra_op_threads=threads)))
    return captioner, time.perf_counter() - start


def noise_keeps_caption(captioner: Captioner, fp32: np.ndarray, int8: np.ndarray, rng: np.random.Generator) -> bool:
    """Whether the fp32 features, moved by random noise as large as int8's error, keep their caption."""
    noise = rng.standard_normal(fp32.shape).astype(np.float32)
    noise *= np.float32(np.linalg.norm(int8 - fp32) / np.linalg.norm(noise))
    return captioner.caption_features(fp32) == captioner.caption_features(fp32 + noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a model folder (the real models/, or a test set)")
    parser.add_argument("--model", choices=DECODERS, default=DEFAULT_DECODER)
    parser.add_argument("--photos", default=str(ROOT / "samples"), help="a folder, file or glob pattern of photos")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: per core)")
    parser.add_argument("--show", type=int, default=10, help="how many differing captions to list")
    args = parser.parse_args()

    images = [(item.name, read_image(item.path)) for item in expand_inputs([args.photos]) if item.path is not None]
    if not images:
        sys.exit(f"no images in {args.photos}")
    method = method_for_this_cpu()
    record_path = int8_path(args.models / "model_feat.onnx", method).with_suffix(".json")
    before = record_path.stat().st_mtime_ns if record_path.exists() else None
    fp32, fp32_load = load(args.models, args.model, "fp32", args.threads)
    int8, int8_load = load(args.models, args.model, "int8", args.threads)
    record = json.loads(record_path.read_text("utf-8"))
    made_now = before != record_path.stat().st_mtime_ns

    for captioner in (fp32, int8):
        captioner.caption(images[0][1])  # warm-up: beam search recovers the decoder's weights on first use
    captions: dict[str, list[str]] = {"fp32": [], "int8": []}
    features = [(fp32.features(image), int8.features(image)) for _, image in images]
    cosines = [cosine(a, b) for a, b in features]
    noisy_equal = sum(noise_keeps_caption(fp32, a, b, np.random.default_rng(i)) for i, (a, b) in enumerate(features))
    timings = {"fp32": Timings(), "int8": Timings()}
    captioners = {"fp32": fp32, "int8": int8}
    for round_ in range(args.rounds):
        order = ["fp32", "int8"] if round_ % 2 == 0 else ["int8", "fp32"]
        for key in order:
            for _, image in images:
                result = captioners[key].caption(image)
                if round_ == 0:
                    captions[key].append(result.caption)
                timings[key].features.append(result.timings["features"])
                timings[key].decode.append(result.timings["decode"])
                timings[key].caption.append(sum(result.timings.values()))

    equal = sum(a == b for a, b in zip(captions["fp32"], captions["int8"], strict=True))
    med = {key: (statistics.median(t.features), statistics.median(t.caption)) for key, t in timings.items()}
    print(f"CPU: {cpu_name()}; ONNX Runtime {ort.__version__}; int8 method: {method.describe()}")
    print(f"models: {args.models} ({args.model}); photos: {args.photos} ({len(images)}); rounds: {args.rounds}")
    fp32_size = (args.models / "model_feat.onnx").stat().st_size
    print(f"int8 feature model: {record['size'] / 1e6:.1f} MB (fp32 {fp32_size / 1e6:.1f} MB), made in "
          f"{record['seconds']:.1f} s; loads: fp32 {fp32_load:.2f} s, int8 {int8_load:.2f} s "
          f"({'made now' if made_now else 'cached'})")
    print(f"equal captions: {equal} / {len(images)} ({100 * equal / len(images):.1f} %)")
    print(f"control, fp32 features + random noise of int8's error size: {noisy_equal} / {len(images)} equal "
          f"({100 * noisy_equal / len(images):.1f} %)")
    print(f"feature cosine int8 / fp32: mean {statistics.mean(cosines):.6f}, min {min(cosines):.6f}")
    print(f"features: fp32 {med['fp32'][0]:.1f} ms, int8 {med['int8'][0]:.1f} ms, "
          f"speed-up {med['fp32'][0] / med['int8'][0]:.2f}x")
    decode = {key: statistics.median(t.decode) for key, t in timings.items()}
    print(f"decode: fp32 {decode['fp32']:.1f} ms, int8 {decode['int8']:.1f} ms, "
          f"int8/fp32 {decode['int8'] / decode['fp32']:.2f}")
    print(f"whole caption: fp32 {med['fp32'][1]:.1f} ms, int8 {med['int8'][1]:.1f} ms, "
          f"speed-up {med['fp32'][1] / med['int8'][1]:.2f}x (int8/fp32 {med['int8'][1] / med['fp32'][1]:.2f})")
    differing = [(name, a, b) for (name, _), a, b in zip(images, captions["fp32"], captions["int8"], strict=True)
                 if a != b]
    for name, a, b in differing[: args.show]:
        print(f"  {name}:\n    fp32: {a}\n    int8: {b}")


if __name__ == "__main__":
    main()
