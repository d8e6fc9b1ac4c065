"""Small pieces the benchmark scripts share: the full-size model set, timing one call, feature cosine,
random feature vectors, and a step-model factory that hands back a model built beforehand."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from utils.decoding.search import StepModel
from utils.decoding.weights import DecoderWeights


def ensure_models(folder: Path) -> None:
    """Build the full-size benchmark models into ``folder`` unless they are there (bench/make_models.py)."""
    script = Path(__file__).resolve().parent / "make_models.py"
    subprocess.run([sys.executable, str(script), str(folder)], check=True)


def timed_process(args: list[str], expect: int = 0) -> float:
    """Seconds ``python3 ARGS`` takes from start to exit, its output captured; it must exit with ``expect``."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(args[:3])} exited {proc.returncode}: {proc.stderr[-500:]}")
    return seconds


def timed_ms(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two feature vectors, in float64."""
    a, b = (np.asarray(x, np.float64).ravel() for x in (a, b))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fc_inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    """Random relu feature vectors (1, 2048), as tests/test_search.py makes them."""
    rng = np.random.default_rng(seed)
    return [np.maximum(0.7 * rng.standard_normal((1, 2048)) + 0.2, 0.0).astype(np.float32) for _ in range(n)]


def prebuilt(model: StepModel, _weights: DecoderWeights) -> StepModel:
    """A CaptionDecoder step-model factory (with functools.partial) that returns ``model`` as it is."""
    return model
