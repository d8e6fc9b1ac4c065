"""``--version``: this program's version, and those of the runtimes it would use, read from the installed
packages' metadata: nothing is imported and no model is loaded."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from utils import __version__

# The distributions each library comes in: the first one installed is shown.
LIBRARIES = {
    "ONNX Runtime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "ailia SDK": ("ailia",),
    "OpenCV": ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
}


def installed(names: Sequence[str]) -> str:
    for name in names:
        try:
            return f"{metadata.version(name)} ({name})"
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def versions() -> str:
    lines = [f"image_captioning_pytorch {__version__}", f"Python {platform.python_version()}"]
    lines += [f"{library}: {installed(names)}" for library, names in LIBRARIES.items()]
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """Prints ``versions()`` and exits, as argparse's own ``version`` action does with one line."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(versions())
        parser.exit()
