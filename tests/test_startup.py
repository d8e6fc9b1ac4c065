"""Start-up: --help, --version and every usage error import none of the heavy libraries, and each mode
imports only its own (read from the real command line's ``-X importtime``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, SCRIPT, cli_env

HEAVY = ("onnx", "onnxruntime", "cv2", "ailia", "fastapi", "uvicorn", "ray", "pyarrow", "pycocoevalcap")
OTHER_MODES = ("fastapi", "uvicorn", "ray", "pyarrow", "pycocoevalcap", "starlette", "python_multipart")
_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", re.MULTILINE)


def imported(*args: str | Path, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The program's run with ``args`` and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=cli_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc, {name.partition(".")[0] for name in _IMPORTED.findall(proc.stderr)}


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["-i", "photo.jpg", "--beam-size", "0"], ["--serve", "8000", "--ray"],
    ["-i", "photo.jpg", "--workers", "0"], ["-v", "0", "--resume"], ["--model", "nope", "-i", "x.jpg"],
])
def test_help_version_and_usage_errors_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    proc, packages = imported(*args, cwd=tmp_path)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    assert not packages & set(HEAVY), sorted(packages & set(HEAVY))


def test_version_names_the_runtimes(tmp_path: Path) -> None:
    proc, _ = imported("--version", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0].startswith("image_captioning_pytorch ")
    assert [line.partition(":")[0] for line in lines[2:]] == ["ONNX Runtime", "ailia SDK", "OpenCV"]
    assert all(re.search(r": (\d[\w.+-]* \([\w-]+\)|not installed)$", line) for line in lines[2:]), lines


def test_image_mode_imports_none_of_the_other_modes(models: Path, tmp_path: Path) -> None:
    # --debug: without it the program hands file descriptor 2 to the libraries' silenced output, and the
    # imports after that would not be seen.
    proc, packages = imported("-i", SAMPLE, "--model-dir", models, "--offline", "--onnx", "--debug", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]
    assert {"onnxruntime", "cv2"} <= packages
    assert not packages & set(OTHER_MODES), sorted(packages & set(OTHER_MODES))
