"""Shared fixtures: a model set built with the published interfaces, and the CLI in a subprocess; and
the test tiers: every test that starts a process (the CLI, a server, a browser, Ray, Java, ExifTool) is
marked ``process``, here and only here, so that ``python3 -m pytest -m "not process"`` is the fast loop."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.reference import imread
from tests.stand_in_models import NewFCParams, make_model_set

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "image_captioning_pytorch.py"
SAMPLE = ROOT / "samples" / "chelsea.png"

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def model_set_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, NewFCParams]]:
    folder = tmp_path_factory.mktemp("models")
    return folder, make_model_set(folder, eos_bias=3.0)


def copy_models(source: Path, dest: Path) -> Path:
    """A private copy of a model set, without the checksum records that in-process loads leave behind:
    every copy starts from the same hand-placed files, whatever ran before it."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.sha256", ".download.lock"))
    return dest


@pytest.fixture
def models(model_set_dir: tuple[Path, dict[str, NewFCParams]], tmp_path: Path) -> Path:
    """A private copy of the model set, so a test may damage it."""
    return copy_models(model_set_dir[0], tmp_path / "models")


@pytest.fixture(scope="module")
def served_models(model_set_dir: tuple[Path, dict[str, NewFCParams]],
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model set for one module's services (a load leaves checksum records beside it)."""
    return copy_models(model_set_dir[0], tmp_path_factory.mktemp("served") / "models")


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


# Starting a process is seen three ways: a fixture that starts one (with everything that uses it), a
# test whose code (or a helper of the tests' it calls) uses one of these names, or a test module whose
# tests run a process through the program's own code (ExifTool, Java). A test the rules miss
# fails in the fast tier the moment it starts a process (``_no_process_in_the_fast_tier``), naming it.
PROCESS_FIXTURES = frozenset({"run_cli", "service", "served", "served_models"})
PROCESS_NAMES = frozenset({"subprocess", "start_service", "sync_playwright", "Popen", "run_cli"})
# Modules whose tests call the program's own code that runs ExifTool or Java (pycocoevalcap).
PROCESS_MODULES = frozenset({"test_evaluation", "test_hostile_exiftool", "test_metadata"})


def _uses_process_names(code: types.CodeType, module: types.ModuleType, seen: set[types.CodeType]) -> bool:
    """Whether ``code``, its nested functions, or the tests' helpers it calls, name a process starter."""
    if code in seen:
        return False
    seen.add(code)
    if PROCESS_NAMES & set(code.co_names) or PROCESS_NAMES & set(code.co_varnames):
        return True
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and _uses_process_names(const, module, seen):
            return True
    for name in code.co_names:
        helper = getattr(module, name, None)
        if isinstance(helper, types.FunctionType) and helper.__module__.startswith("tests"):
            helper_module = sys.modules[helper.__module__]
            if _uses_process_names(helper.__code__, helper_module, seen):
                return True
    return False


def starts_processes(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    function = getattr(item, "function", None)
    if module is None or function is None:
        return False
    if module.__name__.rpartition(".")[2] in PROCESS_MODULES:
        return True
    if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return _uses_process_names(inspect.unwrap(function).__code__, module, set())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if starts_processes(item):
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _no_process_in_the_fast_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test outside the ``process`` tier that starts a process fails, so the rules above stay true."""
    if request.node.get_closest_marker("process") is None:
        def refuse(self: subprocess.Popen[bytes], args: object, *rest: object, **kwargs: object) -> None:
            raise AssertionError(f"{request.node.nodeid} starts a process ({args!r:.200}) but is not marked "
                                 "'process': add its fixture, name or module to tests/conftest.py")

        monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    yield
