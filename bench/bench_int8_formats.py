#!/usr/bin/env python3
"""Which int8 format runs the ResNet-101 fastest on this machine, and how close it stays to fp32.

    python3 bench/bench_int8_formats.py [--models bench/models] [--threads 2 0] [--images 8] [--rounds 3]
                                        [--photos DIR] [--methods qop-u8s8-pc qdq-u8s8-pt ...]

Builds the full-size benchmark models into --models if they are not there (bench/make_models.py), then
quantizes the feature model in each format exactly as the program does (utils/quantization/features.py:
calibration on the photos in samples/, the check against fp32 included) and reports, per format:

- ms per 640x480 photo (median over photos and rounds), and the ratio to fp32 measured in the same
  process with the same session settings (rounds alternate between the models, so drift in machine
  load favours none);
- the feature cosine to fp32 (mean and min over the photos);
- the time to make the int8 file, and its size.

``--threads`` takes several values (0: ONNX Runtime's default, one per core); each gets its own table.
The photos are --images crops of the sample photo (bench/photos.py), or the images in --photos. The
program's choice for this CPU (utils/quantization/methods.py) is marked with *.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cosine, ensure_models  # noqa: E402
from bench.photos import sample_crops  # noqa: E402
from models import model_set  # noqa: E402
from utils.engine.model_files import VerifiedFile, load_file  # noqa: E402
from utils.engine.preprocess import preprocess, read_image  # noqa: E402
from utils.engine.runtime import OnnxRuntimeNetwork, RuntimeOptions  # noqa: E402
from utils.images.inputs import expand_inputs  # noqa: E402
from utils.quantization.calibration import calibration_photos  # noqa: E402
from utils.quantization.features import build_int8_features  # noqa: E402
from utils.quantization.methods import (  # noqa: E402
    ALL_METHODS,
    QuantMethod,
    cpu_flags,
    cpu_name,
    method_for_this_cpu,
)


def bench_inputs(photos: Path | None, count: int) -> list[np.ndarray]:
    if photos is None:
        return [preprocess(image) for image in sample_crops(count)]
    items = expand_inputs([str(photos)])
    return [preprocess(read_image(item.path)) for item in items if item.path is not None]


def make_int8(source: VerifiedFile, method: QuantMethod) -> tuple[bytes, float]:
    """The int8 file's content as the program makes it, and the seconds it took."""
    photos = calibration_photos()
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        built = build_int8_features(source, method, photos, Path(scratch))
        return built.data, time.perf_counter() - start


def time_models(nets: dict[str, OnnxRuntimeNetwork], inputs: list[np.ndarray], rounds: int) -> dict[str, float]:
    """Median ms per photo for each model; every round runs each model over all photos, in turn."""
    name = next(iter(nets.values())).input_names[0]
    times: dict[str, list[float]] = {key: [] for key in nets}
    for net in nets.values():
        net.run({name: inputs[0]})  # warm-up: first-run allocations and weight pre-packing
    for round_ in range(rounds):
        order = list(nets) if round_ % 2 == 0 else list(reversed(nets))
        for key in order:
            for x in inputs:
                start = time.perf_counter()
                nets[key].run({name: x})
                times[key].append(1e3 * (time.perf_counter() - start))
    return {key: statistics.median(values) for key, values in times.items()}


def parse_methods(names: list[str] | None) -> list[QuantMethod]:
    if not names:
        return list(ALL_METHODS)
    known = {m.name: m for m in ALL_METHODS}
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="intra-op threads; 0: one per core")
    parser.add_argument("--images", type=int, default=8, help="sample crops, when --photos is not given")
    parser.add_argument("--photos", type=Path, default=None, help="a folder of photos to time and compare on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=None, help="method names (default: all)")
    args = parser.parse_args()
    methods = parse_methods(args.methods)
    ensure_models(args.models)
    source = load_file(model_set("fc_nsc", with_prototxt=False).feature[0], args.models, offline=True, progress=False)
    inputs = bench_inputs(args.photos, args.images)
    chosen = method_for_this_cpu()
    flags = cpu_flags() or frozenset()
    marks = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"})
    print(f"CPU: {cpu_name()}; flags: {' '.join(marks) or 'unknown'}; program's choice: {chosen.describe()}")
    print(f"ONNX Runtime {ort.__version__}; {len(inputs)} photos of {inputs[0].shape[2]}x{inputs[0].shape[1]} "
          f"(first), {args.rounds} rounds")

    made: dict[str, tuple[bytes, float]] = {}
    for method in methods:
        made[method.name] = make_int8(source, method)
        print(f"made {method.name} in {made[method.name][1]:.1f} s ({len(made[method.name][0]) / 1e6:.1f} MB)",
              flush=True)

    for threads in args.threads:
        options = RuntimeOptions(backend="onnxruntime", intra_op_threads=threads or None)
        nets = {"fp32": OnnxRuntimeNetwork(source.data, options, name="fp32")}
        nets.update({m.name: OnnxRuntimeNetwork(made[m.name][0], options, name=m.name) for m in methods})
        name = nets["fp32"].input_names[0]
        reference = [nets["fp32"].run({name: x})[0] for x in inputs]
        cosines = {key: [cosine(ref, nets[key].run({name: x})[0]) for ref, x in zip(reference, inputs, strict=True)]
                   for key in nets}
        ms = time_models(nets, inputs, args.rounds)
        print(f"\nthreads: {threads or 'default (one per core)'}")
        print("| format | ms per photo | fp32 / int8 (speed-up) | cosine to fp32 mean / min | made in | size |")
        print("|---|---|---|---|---|---|")
        print(f"| fp32 | {ms['fp32']:.1f} | 1.00 | 1 / 1 | | {len(source.data) / 1e6:.1f} MB |")
        for m in methods:
            c = cosines[m.name]
            star = " *" if m == chosen else ""
            print(f"| {m.describe()}{star} | {ms[m.name]:.1f} | {ms['fp32'] / ms[m.name]:.2f} | "
                  f"{statistics.mean(c):.5f} / {min(c):.5f} | {made[m.name][1]:.1f} s | "
                  f"{len(made[m.name][0]) / 1e6:.1f} MB |", flush=True)


if __name__ == "__main__":
    main()
