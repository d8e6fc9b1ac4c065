"""The int8 feature model: the ResNet-101 quantized on this machine from the verified fp32 file.

Nothing is downloaded: the fp32 ``model_feat.onnx`` (already checked against its recorded SHA-256)
is quantized with ONNX Runtime's static quantization, calibrated on the photos in samples/, in the
format this CPU runs best (methods.py). The result is cached beside the source (cache.py) as
``model_feat.int8-<method>.onnx`` with its record ``model_feat.int8-<method>.json``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from utils.engine.model_files import VerifiedFile
from utils.quantization.cache import Built, DerivedFile, make_or_reuse
from utils.quantization.calibration import (
    SAMPLES_DIR,
    CalibrationPhoto,
    FeedReader,
    calibration_feeds,
    calibration_photos,
    model_input_name,
)
from utils.quantization.methods import QuantMethod, method_for_this_cpu
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

# Bump when the way the file is made changes (options, pre-processing, calibration): cached files
# made the old way no longer match their record and are made again.
RECIPE_VERSION = 1
# A made file must give features this close to fp32 on a calibration photo, or it is not kept. The
# methods measured 0.9998 or more; a format the CPU computes wrongly (u8 x s8 saturation) falls far below.
MIN_COSINE = 0.99
PER_CHANNEL_QDQ_OPSET = 13
FP32_HINT = "run with --precision fp32 to use the published fp32 model"


def int8_path(source: Path, method: QuantMethod) -> Path:
    """``model_feat.int8-qop-u8s8-pc.onnx`` beside ``model_feat.onnx``: one per method, so one model
    folder serves CPUs that want different methods."""
    return source.with_name(f"{source.stem}.int8-{method.name}.onnx")


def feature_recipe(source: VerifiedFile, method: QuantMethod, photos: Sequence[CalibrationPhoto]) -> dict[str, Any]:
    """Everything the int8 file's content depends on; the cache record must hold exactly this."""
    import onnx
    import onnxruntime

    return {
        "recipe_version": RECIPE_VERSION,
        "source_model": {"name": source.path.name, "sha256": source.sha256},
        "onnxruntime_version": onnxruntime.__version__,
        "onnx_version": onnx.__version__,
        "method": method.as_record(),
        "calibration_photos": [p.as_record() for p in photos],
    }


def int8_feature_model(source: VerifiedFile, progress: bool = True, method: QuantMethod | None = None,
                       photos_dir: Path = SAMPLES_DIR) -> VerifiedFile:
    """The int8 version of the verified feature model ``source``: cached and checked, or made now.

    Raises CaptionError (one line, suggesting --precision fp32) when it cannot be made."""
    method = method or method_for_this_cpu()
    try:
        photos = calibration_photos(photos_dir)
        spec = DerivedFile(
            path=int8_path(source.path, method),
            recipe=feature_recipe(source, method, photos),
            build=partial(build_int8_features, source, method, photos),
            what="the int8 feature model",
            progress_message=f"making the int8 feature model for this CPU ({method.describe()}; "
                             "first use, about 10 s)...",
        )
        cached = make_or_reuse(spec, progress)
    except CaptionError as error:
        raise CaptionError(f"{error}; {FP32_HINT}") from error
    return VerifiedFile("onnx", cached.path, cached.data)


# The build's files at once, measured: the fp32 copy, the pre-processed model, the calibration's augmented
# model and the int8 result take up to 3.4 times the fp32 model's size; the tools do not check their writes.
BUILD_SPACE_FACTOR = 4


def build_int8_features(source: VerifiedFile, method: QuantMethod, photos: Sequence[CalibrationPhoto],
                        scratch: Path) -> Built:
    """Quantize ``source`` in ``scratch`` (which the caller removes); the int8 file's bytes.

    The tools write several files (pre-processed, augmented and inferred models) beside their input and
    in temporary folders: the input is a copy in ``scratch`` so that all of them land there."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    try:
        input_name = model_input_name(source.onnx_model())
    except CaptionError as error:
        raise CaptionError(f"cannot make the int8 feature model from {source.path}: {error}") from error
    feeds = calibration_feeds(photos, input_name)
    needed = BUILD_SPACE_FACTOR * len(source.data)
    if (full := _full_disk(scratch, needed)) is not None:
        raise CaptionError(f"cannot make the int8 feature model from {source.path}: {full}")
    fp32, prepared, int8 = scratch / "fp32.onnx", scratch / "prepared.onnx", scratch / "int8.onnx"
    with _quiet_tools():
        try:
            _write_source(source, method, fp32)
            # Shape inference and ONNX Runtime's basic graph optimisations, as the tool's docs advise before
            # static quantization. The symbolic shape pass (it needs sympy) was measured to change nothing
            # for this convolutional model: same ranges, same int8 file.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(int8), FeedReader(feeds),
                quant_format=QuantFormat.QOperator if method.format == "qoperator" else QuantFormat.QDQ,
                activation_type=types[method.activations], weight_type=types[method.weights],
                per_channel=method.per_channel, reduce_range=method.reduce_range,
                calibrate_method=CalibrationMethod.MinMax,
            )
            data = int8.read_bytes()
            cosine = _check_against_fp32(source.data, data, feeds[0])
        except CaptionError:
            raise
        except Exception as error:  # the tools raise many unrelated types for a model they refuse
            # A full disk rarely says so: the tools write their files without checking, and reading one
            # back fails with a parse error that blames the model.
            full = _full_disk(scratch, needed)
            raise CaptionError(f"cannot make the int8 feature model from {source.path}: "
                               f"{full or _reason(error, scratch)}") from error
    if cosine < MIN_COSINE:
        raise CaptionError(f"the int8 feature model made from {source.path} is too far from fp32 on "
                           f"{photos[0].path.name} (feature cosine {cosine:.4f} < {MIN_COSINE})")
    logger.debug("int8 features: cosine %.6f to fp32 on %s", cosine, photos[0].path.name)
    return Built(data, {"feature_cosine_to_fp32": round(cosine, 6), "checked_on": photos[0].path.name})


def _write_source(source: VerifiedFile, method: QuantMethod, dest: Path) -> None:
    """The fp32 model as the tool's input. Per-channel QDQ needs opset 13 (DequantizeLinear's ``axis``);
    the tool does not upgrade the published opset-11 graph itself and writes an invalid model."""
    opset = next((o.version for o in source.onnx_model().opset_import if o.domain in ("", "ai.onnx")), 0)
    if method.format == "qdq" and method.per_channel and opset < PER_CHANNEL_QDQ_OPSET:
        import onnx.version_converter

        upgraded = onnx.version_converter.convert_version(source.onnx_model(), PER_CHANNEL_QDQ_OPSET)
        dest.write_bytes(upgraded.SerializeToString())
    else:
        dest.write_bytes(source.data)


def _check_against_fp32(fp32: bytes, int8: bytes, feed: dict[str, np.ndarray]) -> float:
    """Feature cosine between the two models on one photo, on this CPU: the int8 file loads and runs,
    and its kernels compute what the method promises here."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    outputs = [ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]
               for model in (fp32, int8)]
    a, b = (np.asarray(o, np.float64).ravel() for o in outputs)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))


def _full_disk(scratch: Path, needed: int) -> str | None:
    """What to say when the disk holding ``scratch`` has less room than the build needs, else None."""
    try:
        free = shutil.disk_usage(scratch).free
    except OSError:
        return None
    if free >= needed:
        return None
    return (f"No space left on device: {free // 1024} KiB free in {scratch.parent}, and the build needs about "
            f"{needed // 1024} KiB; free some space")


def _reason(error: BaseException, scratch: Path) -> str:
    """The tool's complaint in one line, without its internals (temporary paths, C++ locations)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed: ?", "ONNX Runtime refuses it: ", text)
    text = re.sub(r"\S+\.(cc|h|cpp):\d+ \S.*?\) ", "", text)  # "graph.cc:1617 void Graph::Init...() "
    return text.replace(str(scratch), "").strip().rstrip(".")  # a "; run with ..." hint follows


@contextlib.contextmanager
def _quiet_tools() -> Iterator[None]:
    """Keep onnxruntime.quantization's own output off the user's terminal, unless --debug: it logs
    tracebacks for problems it then works around, and warnings through the root logger; the reason
    that matters reaches the user as one CaptionError line. Its prints would land among the captions."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    import onnxruntime as ort

    # The program's sessions all log at this level (utils/engine/runtime.py); the calibration sessions the
    # tool makes itself take the default, which has no getter to restore, and this is the right one.
    ort.set_default_logger_severity(3)
    tool_logger = logging.getLogger("onnxruntime")
    saved_level = tool_logger.level
    tool_logger.setLevel(logging.CRITICAL)
    root = logging.getLogger()
    package = str(Path(ort.__file__).parent)

    def from_the_tools(record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(package)

    root.addFilter(from_the_tools)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(from_the_tools)
        tool_logger.setLevel(saved_level)
        if printed.getvalue():
            logger.debug("onnxruntime.quantization printed: %s", printed.getvalue().strip())
