"""Inference runtimes: the ailia SDK and ONNX Runtime behind one small interface."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from utils.support.errors import CaptionError, exception_chain, first_line

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

Backend = Literal["auto", "ailia", "onnxruntime"]
BACKENDS: tuple[Backend, ...] = ("auto", "ailia", "onnxruntime")


@dataclass(frozen=True)
class RuntimeOptions:
    backend: Backend = "auto"
    env_id: int | None = None  # ailia environment; None lets the SDK choose
    memory_mode: int | None = None  # passed to ailia.Net unchanged
    # ONNX Runtime only. Threads of one model run (None: one per core), and whether they busy-wait for
    # work between operators. Spinning is quickest for a process that runs one model and nothing else, but
    # here the feature model alternates with the decoder's sessions, the search's numpy work and, in
    # video mode, the frame loop, and spinning threads take the cores from them. Measured with beam 5
    # (bench/bench_precision.py, full-size models, 2 cores): a caption took 484 ms instead of 531 at fp32,
    # 142 ms instead of 170 at int8; bench/bench_video.py measured the same for live video.
    intra_op_threads: int | None = None
    spin_wait: bool = False


class Network(Protocol):
    """One loaded model; names come from the model file, never from this program."""

    backend: str
    name: str  # the file, for messages
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class OnnxRuntimeNetwork:
    backend = "onnxruntime"

    def __init__(self, model: Path | bytes, options: RuntimeOptions | None = None, name: str | None = None) -> None:
        """``model``: the file, or its content already read (``name`` then names it in messages)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # keep ORT's own warnings off the user's terminal
        if options is not None and options.intra_op_threads is not None:
            opts.intra_op_num_threads = options.intra_op_threads
        if options is not None and not options.spin_wait:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(model) if isinstance(model, Path) else model, opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises several unrelated types for a bad file
            label = name or (str(model) if isinstance(model, Path) else "the model")
            raise CaptionError(f"ONNX Runtime cannot load {label}: {exc}") from exc
        self.name = name or (model.name if isinstance(model, Path) else "the model")
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self._session.run(None, feeds))
        except Exception as exc:  # a model that does not take this input: the wrong file in its place
            raise CaptionError(f"ONNX Runtime cannot run {self.name}: {first_line(exc)}") from exc


class AiliaNetwork:
    backend = "ailia"

    def __init__(self, prototxt: Path, onnx_path: Path, options: RuntimeOptions) -> None:
        import ailia

        kwargs: dict[str, Any] = {}
        if options.env_id is not None:
            kwargs["env_id"] = options.env_id
        if options.memory_mode is not None:
            kwargs["memory_mode"] = options.memory_mode
        try:
            self._net = ailia.Net(str(prototxt), str(onnx_path), **kwargs)
        except Exception as exc:
            raise CaptionError(f"the ailia SDK cannot load {onnx_path.name}: {ailia_failure(exc)}") from exc
        self.name = onnx_path.name
        self.input_names = [self._net.get_blob_name(i) for i in self._net.get_input_blob_list()]
        self.output_names = [self._net.get_blob_name(i) for i in self._net.get_output_blob_list()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            import numpy as np  # the network's outputs, as arrays of their own

            return [np.asarray(o) for o in self._net.run(feeds)]
        except Exception as exc:
            raise CaptionError(f"the ailia SDK cannot run {self.name}: {first_line(exc)}") from exc


def ailia_failure(exc: BaseException) -> str:
    """Explain why ailia failed; its licence code hides the real cause behind a TypeError."""
    chain = exception_chain(exc)
    if any(_raised_in(e, "license.py") or "licen" in str(e).lower() for e in chain):
        detail = next((str(e) for e in chain if "licen" in str(e).lower()), "no details")
        return (
            "its licence file could not be obtained (looked for ~/.shalo/AILIA.lic, then tried to "
            f"download it: {detail}); see https://ailia.ai/license/"
        )
    return f"{type(exc).__name__}: {exc}"


def _raised_in(exc: BaseException, filename: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(filename):
            return True
        tb = tb.tb_next
    return False


def ailia_environments() -> list[str]:
    """Describe ailia's execution environments, or raise CaptionError saying why it cannot."""
    require_ailia()
    import ailia

    try:
        envs = [ailia.get_environment(i) for i in range(ailia.get_environment_count())]
    except Exception as exc:
        raise CaptionError(f"the ailia SDK cannot list its environments: {ailia_failure(exc)}") from exc
    return [f"env_id {e.id}: {e.type} {e.name}" for e in envs]


def require_ailia() -> None:
    try:
        import ailia  # noqa: F401
    except ImportError as exc:
        raise CaptionError(f"the ailia SDK is not installed ({exc}); install it with: pip install ailia") from exc



def first_input(net: Network) -> str:
    if not net.input_names:
        raise CaptionError("model has no inputs")
    return net.input_names[0]
