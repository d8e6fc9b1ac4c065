"""The int8 decoder: the traced greedy graph and the beam-search step model, both with 8-bit weights.

What is quantized, and how (bench/bench_int8_decoder.py, on a 2-core AMD EPYC with AVX512-VNNI, ONNX
Runtime 1.32, the full-size random-weight bench decoder; runs with the machine otherwise idle):

- the three layers every step runs: ``logit`` (9488 x 512: the 19 MB fp32 matrix every step reads),
  ``i2h`` and ``h2h`` (2560 x 512 each). They become ONNX Runtime's ``MatMulNBits`` (com.microsoft):
  8-bit symmetric weights, one fp32 scale per block of ``BLOCK_SIZE`` inputs of each output,
  ``accuracy_level`` 4 (activations rounded to int8 per row and per block, int8 dot products); the bias
  stays a separate fp32 ``Add``. A beam-5 decode then takes 0.35-0.53 of its fp32 time (18-22 ms against
  40-55 ms), greedy decoding (the graph alone) 0.2-0.3.
- Fewer layers change fewer captions but are slower, and not reliably under the 0.6 asked for: ``logit``
  alone 0.51-0.64 (85% of beam-5 captions identical to fp32 on random inputs, against 63% with all
  three), ``h2h`` + ``logit`` 0.45-0.60 (73%), ``i2h`` + ``logit`` 0.39-0.57 (67%). ``QUANTIZED_LAYERS``
  chooses; the cache recipe records it. ``fc_embed`` (run once per image) and the word embedding (a row
  lookup) stay fp32: nothing to gain.
- Not ``quantize_dynamic`` (DynamicQuantizeLinear + MatMulInteger, one activation scale per tensor): fast,
  but a row's result then depends on the other rows of its batch, and the replay never passes; nor
  ``accuracy_level`` 0-3 (fp32 compute), which with 8-bit weights dequantizes the whole matrix on every
  run (13-20x slower than fp32).

The replay check stays exact (utils/decoding/decoder.py: the step model, one row of the search's batch,
against the single-row graph, within 1e-3):

- rows are independent: with ``BLOCK_SIZE`` 32 or 64 the kernel gives a row exactly the same bits alone
  or in a batch of any size, in any position (measured; at 128 and more it does not);
- the graph and the step model are quantized here from the same fp32 matrices (the weights recovered
  from the fp32 graph) by the same deterministic function: their int8 weights are identical;
- every layer of the graph runs at run time (``run_every_layer``): ONNX Runtime otherwise folds the BOS
  step's i2h (constant word, constant weights) at load time with another kernel, in other last bits than
  the step model's run-time step, which the int8 rounding of the next layer's input can turn into ~2e-3
  (6 photos in 50 failed the check with ``logit`` int8 alone).

The replay then reproduces the graph's log-probabilities bit for bit (50 random inputs, every layer set
above), and a wrong recovered weight still shows as a mismatch. Everything here is a pure function of
its input (numpy rounding; fixed node, name and initializer order): the same model gives byte-identical
output, so the result can be cached under a SHA-256 record (``decoder_recipe``: what it depends on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from utils.decoding.step_model import OrtStepModel
from utils.decoding.weights import DecoderWeights, RecoveryError, recover_weights
from utils.engine.arrays import F32
from utils.engine.model_files import VerifiedFile
from utils.quantization.cache import Built, DerivedFile, make_or_reuse
from utils.quantization.features import FP32_HINT
from utils.quantization.methods import AMX_FLAG, VNNI_FLAGS
from utils.support.errors import CaptionError

U8 = npt.NDArray[np.uint8]

# Bump when what this module writes changes: cached files made the old way are then made again.
RECIPE_VERSION = 1
BITS = 8
# Inputs per weight scale. 32 and 64 both give bitwise row independence on ONNX Runtime 1.32 (128 and
# more do not: ~4e-6 differences between a row alone and in a batch, which the LSTM grows past the replay's
# tolerance). 32: the finer scales; 64 measured ~2 ms faster per beam-5 decode, with as many changed captions.
BLOCK_SIZE = 32
# MatMulNBits accuracy_level 4: int8 activations, int8 dot products. Levels 0-3 (fp32/fp16/bf16 compute)
# dequantize the whole weight matrix on every run with 8-bit weights: 10-20x slower than fp32 (measured).
ACCURACY_LEVEL = 4
MS_DOMAIN = "com.microsoft"
# first_word_difference above this: the int8 graph does not compute what it should on this CPU.
MAX_FIRST_WORD_DIFFERENCE = 1.0
# DecoderWeights fields of the layers that are quantized (see the module docstring).
QUANTIZED_LAYERS = ("i2h_w", "h2h_w", "logit_w")


class DecoderQuantizationError(Exception):
    """The decoder graph cannot be quantized (the message says why); keep the fp32 graph."""


@dataclass(frozen=True)
class QuantizedMatrix:
    """A linear layer's weight (out, in) in MatMulNBits' layout: symmetric 8-bit, stored with offset 128."""

    packed: U8  # (N, blocks, BLOCK_SIZE): q + 128, q in [-127, 127]; the inputs padded with zeros
    scales: F32  # (N, blocks): w ~= (packed - 128) * scale
    n: int  # outputs
    k: int  # inputs
    block_size: int

    def dequantized(self) -> F32:
        """The weight (out, in) the int8 layer multiplies by, in fp32."""
        w = (self.packed.astype(np.float32) - np.float32(128)) * self.scales[:, :, None]
        return np.ascontiguousarray(w.reshape(self.n, -1)[:, : self.k])


def quantize_matrix(w: np.ndarray, block_size: int = BLOCK_SIZE) -> QuantizedMatrix:
    """Round-to-nearest, symmetric, one scale per block of ``block_size`` inputs of each output."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, at least 16, not {block_size}")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or not np.isfinite(w).all():
        raise DecoderQuantizationError("a weight to quantize is not a finite matrix")
    n, k = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), np.float32)
    padded[:, :k] = w
    grouped = padded.reshape(n, blocks, block_size)
    scales = (np.abs(grouped).max(axis=2) / np.float32(127)).astype(np.float32)
    divisor = np.where(scales > 0, scales, np.float32(1))[:, :, None]
    q = np.clip(np.rint(grouped / divisor), -127, 127)
    packed = (q + 128).astype(np.uint8)
    return QuantizedMatrix(np.ascontiguousarray(packed), np.ascontiguousarray(scales), n, k, block_size)


def decoder_recipe() -> dict[str, Any]:
    """What the quantized graph's content depends on besides the source file (for the cache record)."""
    import onnxruntime

    return {
        "recipe_version": RECIPE_VERSION,
        "op": f"{MS_DOMAIN}.MatMulNBits",
        "bits": BITS,
        "block_size": BLOCK_SIZE,
        "accuracy_level": ACCURACY_LEVEL,
        "symmetric": True,
        "layers": list(QUANTIZED_LAYERS),
        "onnx_version": onnx.__version__,
        # Not in the bytes, but the row-independence the replay relies on was measured on this version.
        "onnxruntime_version": onnxruntime.__version__,
    }


def quantize_decoder_graph(model: onnx.ModelProto | bytes, weights: DecoderWeights | None = None,
                           layers: Sequence[str] = QUANTIZED_LAYERS) -> onnx.ModelProto:
    """The traced greedy decoder (docs/models.md §4) with its ``layers`` int8 (DecoderWeights field names),
    every layer run at run time.

    ``weights`` are the ones recovered from this same fp32 model (utils/decoding/weights.py), recovered
    here when not given: the layers whose constant weight equals one of them are the ones quantized, so
    the step model quantized from the same weights (``quantize_step_graph``) holds identical int8 weights.
    The layers whose input is a constant (the BOS step's i2h, the image step's h2h) get an exact run-time
    zero added to it (``run_every_layer``), so that ONNX Runtime computes them as the step model does.
    Inputs and outputs are unchanged: ``seq`` int64 (1, T), ``logprobs`` float32 (1, T, V+1).
    Raises DecoderQuantizationError when the weights cannot be recovered or a layer is not found."""
    if isinstance(model, bytes):
        try:
            model = onnx.load_from_string(model)
        except Exception as exc:  # protobuf raises its own DecodeError, and others for odd input
            raise DecoderQuantizationError(f"cannot read the decoder graph: {exc}") from exc
    if weights is None:
        try:
            weights = recover_weights(model)
        except RecoveryError as exc:
            raise DecoderQuantizationError(f"its weights could not be recovered ({exc})") from exc
    quantized, found = _quantize_layers(model, [getattr(weights, name) for name in layers])
    missing = [name for name, hit in zip(layers, found, strict=True) if not hit]
    if missing:
        raise DecoderQuantizationError(f"no linear layer with the recovered {', '.join(missing)} in the graph")
    return run_every_layer(quantized)


def quantize_step_graph(model: onnx.ModelProto, weights: DecoderWeights,
                        layers: Sequence[str] = QUANTIZED_LAYERS) -> onnx.ModelProto:
    """A step-model graph (utils/decoding/step_model.py: ``step_graph`` or ``image_graph`` of ``weights``)
    with the same layers int8 as ``quantize_decoder_graph`` makes them; a graph without them (the image
    graph: fc_embed) comes back unchanged."""
    return _quantize_layers(model, [getattr(weights, name) for name in layers])[0]


def run_every_layer(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with an exact zero, computed from the graph input, added to each linear layer's input that
    does not depend on the graph input.

    ONNX Runtime folds such layers at load time (the traced graph's BOS step: a constant word looked up in
    a constant table, through constant weights) with another kernel than it runs them with, which gives
    other last bits than the step model's run-time step; with int8 activations a last bit can round a
    value to the next step, and the replay then differs by ~2e-3 (measured: 6 photos in 50 with only
    ``logit`` int8). Run at run time, the graph's layers give exactly the step model's bits. The zero is
    ``max(float(x > x))`` over the input, which is +0 for any x (NaN included); x + 0 is x."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    source = next((i.name for i in graph.input if i.name not in constants
                   and i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT), None)
    if source is None:
        return model
    dependent = {i.name for i in graph.input if i.name not in constants}
    zero = ""
    used = constants | {o for n in graph.node for o in n.output} | dependent
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        linear = node.op_type in ("Gemm", "MatMul", "MatMulNBits") and node.input and node.input[0] not in dependent
        if linear:
            if not zero:
                never, as_float, zero = (_fresh(f"run_time_zero/{part}", used) for part in ("never", "float", "zero"))
                nodes += [
                    helper.make_node("Greater", [source, source], [never], name=never),
                    helper.make_node("Cast", [never], [as_float], name=as_float, to=onnx.TensorProto.FLOAT),
                    helper.make_node("ReduceMax", [as_float], [zero], name=zero, keepdims=0),
                ]
            x = _fresh(f"{node.input[0]}/at_run_time", used)
            nodes.append(helper.make_node("Add", [node.input[0], zero], [x], name=x))
            node = _with_input(node, 0, x)
        nodes.append(node)
        if any(i in dependent for i in node.input) or linear:
            dependent.update(node.output)
    if not zero:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result


def _with_input(node: onnx.NodeProto, index: int, name: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[index] = name
    return copy


def first_word_difference(fp32: onnx.ModelProto | bytes, int8: onnx.ModelProto | bytes,
                          fc: np.ndarray | None = None) -> float:
    """The largest difference between the two graphs' log-probabilities of the first word, on ``fc`` (default:
    a fixed random relu vector): that the int8 file loads and computes on this CPU what it should. Measured
    0.14-0.30 on 200 random inputs at the published size (random weights), 0.08-0.15 on the 64-wide test
    decoders; a kernel that read the weights in another layout, or scaled them wrongly, is several nats off
    (compare with ``MAX_FIRST_WORD_DIFFERENCE``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = [ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else m, opts,
                                     providers=["CPUExecutionProvider"]) for m in (fp32, int8)]
    feed_input = sessions[0].get_inputs()[0]
    if fc is None:
        width = feed_input.shape[-1] if isinstance(feed_input.shape[-1], int) else 2048
        rng = np.random.default_rng(0)
        fc = np.maximum(0.7 * rng.standard_normal((1, width)) + 0.2, 0.0).astype(np.float32)
    first = []
    for session in sessions:
        outputs = session.run(None, {feed_input.name: np.asarray(fc, np.float32).reshape(1, -1)})
        logprobs = next(o for o in outputs if o.ndim == 3)
        first.append(np.asarray(logprobs[0, 0], np.float64))
    return float(np.abs(first[1] - first[0]).max())


def int8_step_model(weights: DecoderWeights) -> OrtStepModel:
    """The step model for the int8 graph: a ``CaptionDecoder(step_model=...)`` factory. ``weights`` must be
    recovered from the fp32 graph that ``quantize_decoder_graph`` quantized."""
    return OrtStepModel(weights, quantize=partial(quantize_step_graph, weights=weights))


def quantize_linear_layers(model: onnx.ModelProto, matrices: Sequence[np.ndarray],
                           block_size: int = BLOCK_SIZE) -> onnx.ModelProto:
    """Every linear layer whose constant weight, as (out, in), equals one of ``matrices``, as MatMulNBits.

    The general form of the two functions above (the benchmark uses it to try other layer sets)."""
    return _quantize_layers(model, matrices, block_size)[0]


def _quantize_layers(model: onnx.ModelProto, matrices: Sequence[np.ndarray],
                     block_size: int = BLOCK_SIZE) -> tuple[onnx.ModelProto, list[bool]]:
    """The quantized copy of ``model``, and for each of ``matrices`` whether a layer used it.

    Linear layers are Gemm (transA 0, alpha = beta = 1, any transB) and MatMul, with a constant 2-D
    weight given as an initializer. Each becomes MatMulNBits, followed by an Add of the Gemm's bias."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    used_names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    weights = _Int8Weights(matrices, block_size, used_names)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        layer = _linear_layer(node, inits)
        weight = None if layer is None else weights.get(inits[layer[0]], layer[1])
        if weight is None:
            nodes.append(node)
        else:
            nodes += _int8_layer(node, weight, used_names)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if weights.initializers:  # made only for a layer that uses them: some layer changed
        _replace_layers(result, graph, nodes, weights.initializers)
    return result, weights.found


class _Int8Weight(NamedTuple):
    packed: str  # the initializers' names
    scales: str
    n: int
    k: int
    block_size: int


class _Int8Weights:
    """The int8 initializers of the stored weights that equal a target, each made once however many layers
    use it, and which targets were found."""

    def __init__(self, matrices: Sequence[np.ndarray], block_size: int, used_names: set[str]) -> None:
        self.targets = [np.asarray(m, dtype=np.float32) for m in matrices]
        self.found = [False] * len(self.targets)
        self.block_size = block_size
        self.used_names = used_names
        self.initializers: list[onnx.TensorProto] = []
        # Per stored weight and orientation; None when it is not a target.
        self.done: dict[tuple[str, bool], _Int8Weight | None] = {}

    def get(self, stored: onnx.TensorProto, transposed: bool) -> _Int8Weight | None:
        """The int8 form of ``stored`` (as (out, in) when ``transposed``, else (in, out)), if it is a target."""
        key = (stored.name, transposed)
        if key not in self.done:
            self.done[key] = self._make(stored, transposed)
        return self.done[key]

    def _make(self, stored: onnx.TensorProto, transposed: bool) -> _Int8Weight | None:
        array = numpy_helper.to_array(stored)
        w = array if transposed else array.T  # as (out, in)
        hit = next((i for i, t in enumerate(self.targets) if t.shape == w.shape and np.array_equal(t, w)), None)
        if hit is None:
            return None
        self.found[hit] = True
        q = quantize_matrix(w, self.block_size)
        base = _fresh(f"{stored.name}_int8{'' if transposed else '_t'}", self.used_names)
        packed = numpy_helper.from_array(q.packed, base)
        scales = numpy_helper.from_array(q.scales, _fresh(f"{base}_scales", self.used_names))
        self.initializers += [packed, scales]
        return _Int8Weight(packed.name, scales.name, q.n, q.k, q.block_size)


def _int8_layer(node: onnx.NodeProto, weight: _Int8Weight, used_names: set[str]) -> list[onnx.NodeProto]:
    """The MatMulNBits that replaces the linear layer ``node``, and the Add of its bias if it has one."""
    out = node.output[0]
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] != ""
    product = _fresh(f"{out}_int8", used_names) if has_bias else out
    label = node.name or out
    nodes = [helper.make_node(
        "MatMulNBits", [node.input[0], weight.packed, weight.scales], [product],
        name=_fresh(f"{label}_int8", used_names), domain=MS_DOMAIN,
        K=weight.k, N=weight.n, bits=BITS, block_size=weight.block_size, accuracy_level=ACCURACY_LEVEL,
    )]
    if has_bias:
        nodes.append(helper.make_node("Add", [product, node.input[2]], [out],
                                      name=_fresh(f"{label}_bias", used_names)))
    return nodes


def _replace_layers(result: onnx.ModelProto, source: onnx.GraphProto, nodes: Sequence[onnx.NodeProto],
                    new_inits: Sequence[onnx.TensorProto]) -> None:
    """``result`` (a copy of ``source``'s model) with ``nodes``, and only the initializers they use."""
    out_graph = result.graph
    del out_graph.node[:]
    out_graph.node.extend(nodes)
    needed = {name for n in nodes for name in n.input}
    kept = [t for t in source.initializer if t.name in needed]
    del out_graph.initializer[:]
    out_graph.initializer.extend([*kept, *new_inits])
    # Graph inputs that only declared a removed weight (older exporters list initializers as inputs).
    removed = {t.name for t in source.initializer} - needed
    stale = [i for i in out_graph.input if i.name in removed]
    for value in stale:
        out_graph.input.remove(value)
    if not any(o.domain == MS_DOMAIN for o in result.opset_import):
        result.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _linear_layer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[str, bool] | None:
    """(weight initializer, whether it is stored (out, in)) of a quantizable linear layer, else None."""
    if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    if len(inits[node.input[1]].dims) != 2 or inits[node.input[1]].data_type != onnx.TensorProto.FLOAT:
        return None
    if node.op_type == "MatMul":
        return node.input[1], False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    return node.input[1], bool(attrs.get("transB", 0))


def _fresh(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... whichever is not yet a value or initializer name."""
    candidate, i = name, 1
    while candidate in used:
        i += 1
        candidate = f"{name}_{i}"
    used.add(candidate)
    return candidate


# ---------------------------------------------------------------------------------------------
# The cached int8 decoder file (utils/quantization/cache.py), for --precision int8
# ---------------------------------------------------------------------------------------------


def int8_decoder_pays(flags: frozenset[str] | None) -> bool:
    """Whether the int8 decoder is used on a CPU with these flags: MatMulNBits' int8 kernels (accuracy level
    4) were measured faster than fp32 with VNNI (0.35-0.53 of a beam-5 decode); without VNNI their int8
    products take the slower AVX2 path, not measured here, so such CPUs keep the fp32 decoder."""
    return bool((flags or frozenset()) & (VNNI_FLAGS | {AMX_FLAG}))


def int8_decoder_path(source: Path) -> Path:
    """``model_fc_nsc.int8-nbits8-b32.onnx`` beside ``model_fc_nsc.onnx``."""
    return source.with_name(f"{source.stem}.int8-nbits{BITS}-b{BLOCK_SIZE}.onnx")


def int8_decoder_model(source: VerifiedFile, progress: bool = True) -> VerifiedFile:
    """The int8 version of the verified decoder ``source``: cached and checked, or made now (~1 s).

    Raises CaptionError (one line, suggesting --precision fp32) when it cannot be made."""
    spec = DerivedFile(
        path=int8_decoder_path(source.path),
        recipe={**decoder_recipe(), "source_model": {"name": source.path.name, "sha256": source.sha256}},
        build=partial(_build_int8_decoder, source),
        what="the int8 decoder",
        progress_message="making the int8 decoder (first use, about 1 s)...",
    )
    try:
        cached = make_or_reuse(spec, progress)
    except CaptionError as error:
        raise CaptionError(f"{error}; {FP32_HINT}") from error
    return VerifiedFile("onnx", cached.path, cached.data)


def _build_int8_decoder(source: VerifiedFile, _scratch: Path) -> Built:
    try:
        data = quantize_decoder_graph(source.onnx_model()).SerializeToString()
    except DecoderQuantizationError as exc:
        raise CaptionError(f"cannot quantize {source.path.name}: {exc}") from exc
    difference = first_word_difference(source.onnx_model(), data)
    if not difference <= MAX_FIRST_WORD_DIFFERENCE:
        raise CaptionError(f"the int8 version of {source.path.name} does not compute what it should on this CPU "
                           f"(first-word log-probabilities {difference:.2f} away from fp32)")
    return Built(data, {"first_word_difference": round(difference, 4)})
