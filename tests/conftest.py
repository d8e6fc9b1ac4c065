"""Shared fixtures: a model set built with the published interfaces, and the CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.synthetic import NewFCParams, make_model_set
from tests.reference import imread

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "image_captioning_pytorch.py"
SAMPLE = ROOT / "samples" / "chelsea.png"

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def model_set_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, NewFCParams]]:
    folder = tmp_path_factory.mktemp("models")
    return folder, make_model_set(folder, eos_bias=3.0)


@pytest.fixture
def models(model_set_dir: tuple[Path, dict[str, NewFCParams]], tmp_path: Path) -> Path:
    """A private copy of the model set, so a test may damage it. Without the checksum records that
    in-process loads of the shared set leave behind: every test starts from the same hand-placed files,
    whatever ran before it."""
    dest = tmp_path / "models"
    shutil.copytree(model_set_dir[0], dest, ignore=shutil.ignore_patterns("*.sha256", ".download.lock"))
    return dest


@pytest.fixture
def weights(model_set_dir: tuple[Path, dict[str, NewFCParams]]) -> dict[str, NewFCParams]:
    return model_set_dir[1]


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A few distinct images: the sample photo, crops and recolourings of it, and noise."""
    folder = tmp_path_factory.mktemp("photos")
    base = imread(SAMPLE)
    rng = np.random.default_rng(7)
    images: dict[str, np.ndarray] = {
        "cat.png": base,
        "crop.jpg": base[50:250, 100:400],
        "wide.png": cv2.resize(base, (900, 600)),
        "noise.bmp": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
        "grey.png": cv2.cvtColor(base, cv2.COLOR_BGR2GRAY),
    }
    paths = []
    for name, image in images.items():
        cv2.imwrite(str(folder / name), image)
        paths.append(folder / name)
    return paths


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_CAPTIONING_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **(extra or {})}


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """Run the real CLI; every run must be free of tracebacks, whatever its exit status."""

    def run(
        *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *map(str, args)],
            capture_output=True, text=True, cwd=tmp_path, env=cli_env(env), timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    return run
