"""Recover a traced greedy decoder's weights from its ONNX graph (docs/models.md §4, §5).

First by name: the nine PyTorch parameter names under one common prefix (whatever the exporting
wrapper called itself). Failing that, by structure: the table a Gather looks words up in is the
embedding; the linear layer on the graph input is fc_embed; the one producing V+1 values is logit;
of those producing 5R values, the one fed by the embedding lookup is i2h and the one fed by the
recurrent state is h2h. Linear layers are Gemm (any transB, alpha, beta) or MatMul (weights stored
(in, out)) plus an Add of the bias. Folded constants beside the weights are ignored.

Nothing here proves the weights right: the caller replays greedy decoding with them and compares
with the graph's own words (see utils/decoding/decoder.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from utils.engine.arrays import F32

# PyTorch parameter names of NewFCModel (docs/models.md §4), keyed by the role they play here.
PARAMETER_NAMES = {
    "embed": "embed.weight",
    "fc_w": "fc_embed.weight",
    "fc_b": "fc_embed.bias",
    "i2h_w": "_core.i2h.weight",
    "i2h_b": "_core.i2h.bias",
    "h2h_w": "_core.h2h.weight",
    "h2h_b": "_core.h2h.bias",
    "logit_w": "logit.weight",
    "logit_b": "logit.bias",
}
# Ops that pass a value through unchanged as far as finding a layer's input is concerned.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout"}


class RecoveryError(Exception):
    """The weights could not be recovered; the message says why."""


@dataclass(frozen=True)
class DecoderWeights:
    """NewFCModel parameters in PyTorch layouts (linear weights are (out, in)), float32."""

    embed: F32  # (V+1, E)
    fc_w: F32  # (E, F)
    fc_b: F32  # (E,)
    i2h_w: F32  # (5R, E)
    i2h_b: F32  # (5R,)
    h2h_w: F32  # (5R, R)
    h2h_b: F32  # (5R,)
    logit_w: F32  # (V+1, R)
    logit_b: F32  # (V+1,)
    steps: int  # T, the number of steps the graph was traced with
    source: str  # how they were found, for messages

    @property
    def n_tokens(self) -> int:
        return int(self.embed.shape[0])

    @property
    def vocab_size(self) -> int:
        return self.n_tokens - 1

    @property
    def rnn_size(self) -> int:
        return int(self.h2h_w.shape[1])


def recover_weights(model: bytes | onnx.ModelProto) -> DecoderWeights:
    """The decoder's weights, by name or else by structure; RecoveryError if neither works.

    ``model`` is the ONNX file's bytes (as the caller read them once) or the parsed model."""
    if isinstance(model, bytes):
        try:
            model = onnx.load_from_string(model)
        except Exception as exc:  # protobuf raises its own DecodeError, and others for odd input
            raise RecoveryError(f"cannot read the decoder graph: {exc}") from exc
    graph = _Graph(model.graph)
    try:
        arrays, source = _by_name(graph.constants), "by name"
    except RecoveryError as name_error:
        try:
            arrays, source = _by_structure(graph), "by graph structure"
        except RecoveryError as structure_error:
            raise RecoveryError(f"{name_error}; by structure: {structure_error}") from structure_error
    return _assemble(arrays, _step_count(graph, arrays["embed"].shape), source)


# ---------------------------------------------------------------------------------------------
# The graph as constants, producers and consumers
# ---------------------------------------------------------------------------------------------


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value.t)
        self.producer: dict[str, onnx.NodeProto] = {out: n for n in graph.node for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]

    def source(self, name: str) -> str:
        """Follow pass-through ops back to the value that really feeds ``name``."""
        seen = 0
        while name in self.producer and self.producer[name].op_type in _PASS_THROUGH and seen < 16:
            name = self.producer[name].input[0]
            seen += 1
        return name


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(onnx.helper.get_attribute_value(a))
    return default


@dataclass(frozen=True)
class _Linear:
    """y = x W^T + b found in the graph."""

    x: str  # the input value
    weight_key: str  # identifies the stored weight (for counting uses)
    w: np.ndarray  # (out, in)
    b: np.ndarray | None  # (out,)
    out: str  # the output value (after the bias Add when the bias is a separate op)


def _linears(g: _Graph) -> list[_Linear]:
    found: list[_Linear] = []
    for node in g.graph.node:
        if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in g.constants:
            if _attr(node, "transA", 0) != 0:
                continue
            w = g.constants[node.input[1]]
            if w.ndim != 2:
                continue
            w = w if _attr(node, "transB", 0) else w.T
            w = w * np.float32(_attr(node, "alpha", 1.0))
            b = None
            if len(node.input) > 2 and node.input[2] in g.constants:
                b = np.ravel(g.constants[node.input[2]]) * np.float32(_attr(node, "beta", 1.0))
                if b.shape != (w.shape[0],):
                    b = None
            out = node.output[0]
            if b is None:
                b, out = _following_bias(g, out, w.shape[0])
            found.append(_Linear(node.input[0], node.input[1], w, b, out))
        elif node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in g.constants:
            w = g.constants[node.input[1]]
            if w.ndim != 2:
                continue
            b, out = _following_bias(g, node.output[0], w.shape[1])
            found.append(_Linear(node.input[0], node.input[1], w.T, b, out))
    return found


def _following_bias(g: _Graph, value: str, width: int) -> tuple[np.ndarray | None, str]:
    """The constant added right after a MatMul/Gemm without bias, if any, and the Add's output."""
    for node in g.consumers.get(value, []):
        if node.op_type == "Add":
            other = next((i for i in node.input if i != value), None)
            if other is not None and other in g.constants and np.asarray(g.constants[other]).size == width:
                return np.ravel(g.constants[other]), node.output[0]
    return None, value


# ---------------------------------------------------------------------------------------------
# By name
# ---------------------------------------------------------------------------------------------


def _by_name(constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    anchor = PARAMETER_NAMES["h2h_w"]
    prefixes = sorted({n[: -len(anchor)] for n in constants if n.endswith(anchor)})
    if not prefixes:
        raise RecoveryError(f"no initializer named like '{anchor}'")
    reasons = []
    for prefix in prefixes:
        missing = [prefix + n for n in PARAMETER_NAMES.values() if prefix + n not in constants]
        if missing:
            reasons.append(f"missing {', '.join(missing)}")
            continue
        arrays = {role: np.asarray(constants[prefix + n]) for role, n in PARAMETER_NAMES.items()}
        try:
            return _orient(arrays)
        except RecoveryError as exc:
            reasons.append(str(exc))
    raise RecoveryError("; ".join(reasons))


def _orient(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check the shapes of named parameters; accept linear weights stored transposed ((in, out))."""
    out = {k: np.asarray(v) for k, v in a.items()}
    for key in ("fc_b", "i2h_b", "h2h_b", "logit_b"):
        out[key] = np.ravel(out[key])
    if out["embed"].ndim != 2:
        raise RecoveryError(f"embed.weight has shape {list(out['embed'].shape)}, not (V+1, E)")
    n_tokens, e = out["embed"].shape
    r5 = out["i2h_b"].size
    if r5 % 5 or r5 == 0:
        raise RecoveryError(f"_core.i2h.bias has {r5} values, not 5R")
    r = r5 // 5
    expected = {"fc_w": (e, None), "i2h_w": (r5, e), "h2h_w": (r5, r), "logit_w": (n_tokens, r)}
    for key, (rows, cols) in expected.items():
        w = out[key]
        if w.ndim != 2:
            raise RecoveryError(f"{PARAMETER_NAMES[key]} is not a matrix")
        if w.shape[0] == rows and (cols is None or w.shape[1] == cols):
            continue
        if w.shape[1] == rows and (cols is None or w.shape[0] == cols):
            out[key] = w.T
            continue
        raise RecoveryError(f"{PARAMETER_NAMES[key]} has shape {list(w.shape)}, expected ({rows}, {cols or 'F'})")
    return out


# ---------------------------------------------------------------------------------------------
# By structure
# ---------------------------------------------------------------------------------------------


def _most_used(items: Iterable[_Linear]) -> _Linear | None:
    items = list(items)
    if not items:
        return None
    key, _ = Counter(i.weight_key for i in items).most_common(1)[0]
    return next(i for i in items if i.weight_key == key)


def _by_structure(g: _Graph) -> dict[str, np.ndarray]:
    if not g.inputs:
        raise RecoveryError("the graph has no input")
    image_input = g.inputs[0]
    tables = Counter(
        n.input[0] for n in g.graph.node
        if n.op_type == "Gather" and n.input and n.input[0] in g.constants and g.constants[n.input[0]].ndim == 2
        and _attr(n, "axis", 0) == 0
    )
    if not tables:
        raise RecoveryError("no Gather looks words up in a weight table (the word embedding)")
    embed_name = tables.most_common(1)[0][0]
    embed = g.constants[embed_name]
    n_tokens = embed.shape[0]
    linears = _linears(g)
    fc = _most_used(lin for lin in linears if g.source(lin.x) == image_input)
    if fc is None:
        raise RecoveryError("no linear layer (Gemm/MatMul) on the image input (fc_embed)")
    logit = _most_used(lin for lin in linears if lin.w.shape[0] == n_tokens)
    if logit is None:
        raise RecoveryError(f"no linear layer producing {n_tokens} values (logit)")
    embedded = {n.output[0] for n in g.graph.node if n.op_type == "Gather" and n.input[0] == embed_name}
    i2h = _most_used(lin for lin in linears if g.source(lin.x) in embedded and lin.w.shape[0] % 5 == 0)
    if i2h is None:
        raise RecoveryError("no linear layer on the looked-up word embedding (i2h)")
    r5 = i2h.w.shape[0]
    # h2h: 5R from R, fed neither by the word lookup nor by the image embedding (the image step's
    # i2h, which may use a folded copy of the weight, is fed by the latter).
    image_embedding = {lin.out for lin in linears if g.source(lin.x) == image_input}
    h2h = _most_used(
        lin for lin in linears
        if lin.w.shape == (r5, r5 // 5) and g.source(lin.x) not in embedded and g.source(lin.x) not in image_embedding
        and lin.weight_key != i2h.weight_key
    )
    if h2h is None:
        raise RecoveryError(f"no linear layer from the recurrent state to {r5} values (h2h)")
    zeros = np.zeros
    return _orient({
        "embed": embed,
        "fc_w": fc.w,
        "fc_b": fc.b if fc.b is not None else zeros(fc.w.shape[0], np.float32),
        "i2h_w": i2h.w,
        "i2h_b": i2h.b if i2h.b is not None else zeros(r5, np.float32),
        "h2h_w": h2h.w,
        "h2h_b": h2h.b if h2h.b is not None else zeros(r5, np.float32),
        "logit_w": logit.w,
        "logit_b": logit.b if logit.b is not None else zeros(n_tokens, np.float32),
    })


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def _step_count(g: _Graph, embed_shape: tuple[int, ...]) -> int:
    """T, the steps the trace computed: one ArgMax picks each word. Upstream's own loop traced with an
    early stop keeps outputs allocated for every step, padded with constants, so the outputs' shape
    only comes next, then the number of embedding lookups."""
    choices = sum(1 for n in g.graph.node if n.op_type == "ArgMax")
    if choices:
        return choices
    for out in g.graph.output:
        t = out.type.tensor_type
        integer = t.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        if integer and len(t.shape.dim) == 2 and t.shape.dim[1].dim_value > 0:
            return int(t.shape.dim[1].dim_value)
    lookups = sum(
        1 for n in g.graph.node
        if n.op_type == "Gather" and n.input and n.input[0] in g.constants
        and g.constants[n.input[0]].shape == embed_shape
    )
    return max(lookups, 1)


def _assemble(a: dict[str, np.ndarray], steps: int, source: str) -> DecoderWeights:
    f32 = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in a.items()}
    w = DecoderWeights(steps=steps, source=source, **f32)
    e, r = w.embed.shape[1], w.rnn_size
    checks = [
        (w.fc_w.shape[0] == e and w.fc_b.shape == (e,), "fc_embed does not produce the embedding width"),
        (w.i2h_w.shape == (5 * r, e) and w.i2h_b.shape == (5 * r,), "i2h does not map the embedding to 5R"),
        (w.h2h_w.shape == (5 * r, r) and w.h2h_b.shape == (5 * r,), "h2h does not map R to 5R"),
        (w.logit_w.shape == (w.n_tokens, r) and w.logit_b.shape == (w.n_tokens,), "logit does not map R to V+1"),
    ]
    for ok, why in checks:
        if not ok:
            raise RecoveryError(why)
    if not all(np.isfinite(v).all() for v in f32.values()):
        raise RecoveryError("the weights hold non-finite values")
    return w
