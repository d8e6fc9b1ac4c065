"""Which options go together: backend, precision, workers, mode and model, decided here once.

The command line turns a conflict into a usage error before anything loads; the Python API raises it
from ``CaptionerOptions`` (an ``OptionConflict`` is both a ``ValueError`` and a ``CaptionError``); and
``Captioner`` asks ``runtimes`` which runtime to try. The messages name the flags: the API's fields
have the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.engine.runtime import Backend
from utils.quantization import Precision
from utils.support.errors import CaptionError


class OptionConflict(CaptionError, ValueError):
    """Options that do not go together; the message says which and what to use instead."""


@dataclass(frozen=True)
class Combination:
    """What is asked for, as far as it is known (the command line knows no model folder's content)."""

    backend: Backend = "auto"
    precision: Precision = "fp32"
    workers: int | None = None  # None: not asked for
    video: bool = False
    ailia_settings: tuple[str, ...] = ()  # the ailia-only settings given (-e/--env_id, --memory_mode)
    imported_model: str | None = None  # the model, when it is an imported checkpoint


def conflict(asked: Combination) -> str | None:
    """Why ``asked`` cannot run, or None."""
    if asked.video and asked.workers is not None:
        return "--workers is for images (-i); video captions one frame at a time"
    if asked.ailia_settings and asked.backend == "onnxruntime":
        verb = "applies" if len(asked.ailia_settings) == 1 else "apply"
        return f"{' and '.join(asked.ailia_settings)} only {verb} to the ailia SDK, not to ONNX Runtime"
    if asked.precision == "int8" and asked.backend == "ailia":
        return "--precision int8 runs on ONNX Runtime only: use --backend onnxruntime or auto, or --precision fp32"
    if asked.workers is not None and asked.workers > 1 and asked.backend == "ailia":
        return "--workers runs several ONNX Runtime sessions; the ailia SDK runs one (use --backend onnxruntime)"
    if asked.imported_model is not None and asked.backend == "ailia":
        # An imported decoder has no ailia .prototxt (only the ailia-models converter makes those).
        return (f"{asked.imported_model} is an imported model, which runs on ONNX Runtime only; "
                "use --backend onnxruntime or auto")
    return None


def check(asked: Combination) -> None:
    if (problem := conflict(asked)) is not None:
        raise OptionConflict(problem)


@dataclass(frozen=True)
class Runtimes:
    """The runtimes to try, in order, and why ``auto`` skips the ailia SDK (None: it does not)."""

    order: tuple[Backend, ...]
    ailia_skipped: str | None = None
    warn: bool = False  # say so as a warning (the user may have expected the SDK), not only in --debug


def runtimes(asked: Combination) -> Runtimes:
    """Where ``asked`` (no conflict) runs: the ailia SDK first with ``auto``, unless it cannot run it."""
    check(asked)
    if asked.backend != "auto":
        return Runtimes((asked.backend,))
    if asked.precision == "int8":
        return Runtimes(("onnxruntime",), "int8 precision runs on ONNX Runtime; the ailia SDK is not tried", warn=True)
    if asked.imported_model is not None:
        return Runtimes(("onnxruntime",), f"{asked.imported_model} is an imported model: running on ONNX Runtime")
    return Runtimes(("ailia", "onnxruntime"))


def default_workers(backend: Backend, for_this_machine: int) -> int:
    """The workers when none are asked for: the machine's share, but one on the ailia SDK, which runs one
    (with ``auto``, a second worker's sessions are made only if ONNX Runtime is what loads)."""
    return 1 if backend == "ailia" else for_this_machine
