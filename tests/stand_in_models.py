"""Builders for stand-in model files with the published interfaces, and a numpy reference decoder.

The real model files can never be downloaded on this project's machines, so tests and benchmarks build ONNX
files with exactly the published interfaces (docs/models.md §2, §4) and the published decoder maths
(docs/models.md §5), filled with random weights. ``reference_greedy`` is written independently of the
graph builder so that each checks the other.

Only ``onnx.helper`` is used (no torch): the graphs are written by hand the way ``torch.onnx``
would trace the upstream greedy loop at opset 11.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.engine.arrays import F32, I64

F64 = npt.NDArray[np.float64]

OPSET = 11
# onnxruntime refuses models whose IR version is newer than it knows; 7 is what opset 11 shipped with.
IR_VERSION = 7

DECODER_NAMES = ("fc", "fc_rl", "fc_nsc")
# The published vocabulary's "bad endings" (docs/models.md §6) mixed with ordinary caption words, interleaved so
# that even a small vocabulary holds several of each.
# fmt: off
_BASE_WORDS = (
    "a", "cat", "the", "dog", "with", "sitting", "of", "table", "on", "man", "in", "woman",
    "riding", "an", "horse", "street", "at", "standing", "to", "plate", "for", "pizza", "is",
    "person", "near", "group", "are", "people", "that", "room", "this", "kitchen", "his",
    "field", "her", "grass", "white", "black", "red", "large", "small", "two", "holding",
)
# fmt: on
# Default EOS bias for small test model sets: with vocab 10-12, embed = rnn = 16 every greedy caption
# of random inputs measured ended before 20 steps, median ~8 words (see random_decoder_weights).
DEFAULT_EOS_BIAS = 4.0
# For the 512-wide, V = 9487 benchmark decoders: captions of about 10 words.
BENCH_EOS_BIAS = 9.0
# Hand-set parts of random_decoder_weights (values found by measuring caption statistics):
_CLOCK_RATE = 0.08  # growth of the clock unit's cell per step
_CLOCK_TO_EOS = 10.0  # EOS logit weight on the clock's h (0 -> ~1 over a 20-step caption)
_EOS_BASE = -7.0  # EOS logit offset before eos_bias, so bias 0 rarely ends a caption
_EOS_RANDOM_GAIN = 0.2  # the EOS logit's random (input-dependent) part, kept small
_ECHO_PENALTY = 5.0  # logit penalty on the word just fed back


# ---------------------------------------------------------------------------------------------
# Decoder weights and the numpy reference
# ---------------------------------------------------------------------------------------------


@dataclass
class NewFCParams:
    """Parameters of upstream's NewFCModel in PyTorch layouts (Linear weights are (out, in))."""

    embed: F32  # (V+1, E) word embedding; row 0 is BOS/EOS/pad
    fc_embed_w: F32  # (E, F)
    fc_embed_b: F32  # (E,)
    i2h_w: F32  # (5R, E)
    i2h_b: F32  # (5R,)
    h2h_w: F32  # (5R, R)
    h2h_b: F32  # (5R,)
    logit_w: F32  # (V+1, R)
    logit_b: F32  # (V+1,)

    @property
    def vocab_size(self) -> int:
        """V: the number of real words (index 0 is not one)."""
        return int(self.embed.shape[0]) - 1

    @property
    def feat_dim(self) -> int:
        return int(self.fc_embed_w.shape[1])

    @property
    def rnn_size(self) -> int:
        return int(self.h2h_w.shape[1])


def random_decoder_weights(
    vocab_size: int,
    embed: int = 16,
    rnn: int = 16,
    feat_dim: int = 2048,
    seed: int = 0,
    eos_bias: float = 0.0,
) -> NewFCParams:
    """Random NewFCModel weights whose greedy captions depend on the image and vary along the caption.

    Random matrices are N(0, gain^2 / fan_in), so behaviour does not depend on the layer sizes: the same
    holds for 16-wide test decoders and the 512-wide, V = 9487 benchmark ones. Plain random weights
    were not enough: depending on the seed, half the captions got stuck on one word repeated to the
    step limit, and EOS came at random (often as the first word). Two hand-set groups of LSTM units fix
    that (see the comments in the body): a clock unit that makes EOS likelier as a caption grows, and
    "echo" units that discourage feeding back the word just emitted.

    ``eos_bias`` is added to the EOS logit bias ``logit_b[0]``. Measured over 8 seeds x 40 inputs
    (normal noise and make_feature_model outputs), embed = rnn = 16, 20 steps:

    - vocab 10-12, bias 0: most captions run to the 20-step limit (a few seeds end 30-60 % early).
    - vocab 10-12, bias 3-4: every caption ends early; bias 4 gives lengths 2-19, median ~8, none empty
      (``DEFAULT_EOS_BIAS``). Bias 6 gives median ~5.
    - no caption had a run of 6 equal words; captions hold ~5 distinct words.
    - V = 9487, 512 wide: bias 0-6 never ends before 20; bias 8 gives median 14 words, bias 9-10 about
      9-12 words (``BENCH_EOS_BIAS``).
    """
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int, gain: float) -> F32:
        return (rng.standard_normal((rows, cols)) * (gain / np.sqrt(cols))).astype(np.float32)

    def vec(n: int, scale: float) -> F32:
        return (rng.standard_normal(n) * scale).astype(np.float32)

    v1 = vocab_size + 1
    embed_w = rng.standard_normal((v1, embed)).astype(np.float32)
    fc_embed_w = mat(embed, feat_dim, 3.0)
    fc_embed_b = vec(embed, 0.1)
    i2h_w = mat(5 * rnn, embed, 2.0)
    i2h_b = vec(5 * rnn, 0.1)
    h2h_w = mat(5 * rnn, rnn, 4.0)
    h2h_b = vec(5 * rnn, 0.1)
    logit_w = mat(v1, rnn, 6.0)
    logit_b = vec(v1, 0.5)

    def gate_rows(units: npt.ArrayLike, chunk: int) -> npt.NDArray[np.intp]:
        return np.asarray(units, dtype=np.intp) + chunk * rnn

    # Unit 0 is a clock: input/forget/output gates saturated open and a constant candidate make
    # c grow by _CLOCK_RATE per step, so h = tanh(c) rises from ~0 to ~1 over a caption. Only the EOS logit
    # reads it, which makes ending likelier as the caption grows (as in a trained captioner).
    # Units 1..n_echo echo the fed word: c = 0.5 c + A x, h ~ tanh(c); each word's logit row reads
    # minus its own echo pattern, so the word just fed (and, fading, the one before) is discouraged
    # and random weights do not fall into one word repeated forever.
    n_echo = max(1, rnn // 4) if rnn > 1 else 0
    echo = np.arange(1, 1 + n_echo)
    special = np.arange(0, 1 + n_echo)
    for chunk in range(5):
        rows = gate_rows(special, chunk)
        i2h_w[rows] = 0.0
        h2h_w[rows] = 0.0
        h2h_b[rows] = 0.0
        i2h_b[rows] = 0.0
    for chunk in (0, 2):  # input and output gates open
        i2h_b[gate_rows(special, chunk)] = 8.0
    i2h_b[gate_rows([0], 1)] = 8.0  # clock never forgets; echo units forget half (bias 0)
    i2h_b[gate_rows([0], 3)] = _CLOCK_RATE
    i2h_b[gate_rows([0], 4)] = _CLOCK_RATE
    echo_in = mat(n_echo, embed, 2.0)
    i2h_w[gate_rows(echo, 3)] = echo_in  # the same matrix in both maxout halves: candidate = A x
    i2h_w[gate_rows(echo, 4)] = echo_in
    pattern = np.tanh(embed_w.astype(np.float64) @ echo_in.T.astype(np.float64))  # (V+1, n_echo)
    norm2 = np.maximum((pattern**2).sum(axis=1, keepdims=True), 1e-6)
    logit_w[:, special] = 0.0
    logit_w[1:, 1 : 1 + n_echo] = (-_ECHO_PENALTY * pattern[1:] / norm2[1:]).astype(np.float32)
    logit_w[0, 1 + n_echo :] *= np.float32(_EOS_RANDOM_GAIN)
    logit_w[0, 0] = np.float32(_CLOCK_TO_EOS)
    logit_b[0] = np.float32(eos_bias + _EOS_BASE)
    return NewFCParams(
        embed=embed_w,
        fc_embed_w=fc_embed_w,
        fc_embed_b=fc_embed_b,
        i2h_w=i2h_w,
        i2h_b=i2h_b,
        h2h_w=h2h_w,
        h2h_b=h2h_b,
        logit_w=logit_w,
        logit_b=logit_b,
    )


def _sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(w: NewFCParams, x: F64, h: F64, c: F64) -> tuple[F64, F64]:
    """One NewFCModel core step (docs/models.md §5) on row vectors x (1,E), h (1,R), c (1,R); returns (h', c')."""
    r = w.rnn_size
    s = (
        x @ w.i2h_w.astype(np.float64).T
        + w.i2h_b.astype(np.float64)
        + h @ w.h2h_w.astype(np.float64).T
        + w.h2h_b.astype(np.float64)
    )
    in_gate = _sigmoid(s[:, 0:r])
    forget_gate = _sigmoid(s[:, r : 2 * r])
    out_gate = _sigmoid(s[:, 2 * r : 3 * r])
    # Maxout candidate: no tanh here, unlike a standard LSTM.
    candidate = np.maximum(s[:, 3 * r : 4 * r], s[:, 4 * r : 5 * r])
    c_next = forget_gate * c + in_gate * candidate
    h_next = out_gate * np.tanh(c_next)
    return h_next, c_next


def _log_softmax(z: F64) -> F64:
    m = z.max(axis=1, keepdims=True)
    shifted = z - m
    out: F64 = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def reference_greedy(w: NewFCParams, fc: np.ndarray, steps: int = 20) -> tuple[I64, F32]:
    """Greedy decoding per docs/models.md §5 in float64; returns seq int64 (1,steps), logprobs float32 (1,steps,V+1).

    After a row emits 0 its later words are 0 and 0 is what gets fed back, but log-probabilities are
    still computed (and returned) for every step, as the traced graph does.
    """
    f = np.asarray(fc, dtype=np.float64).reshape(1, -1)
    e = f @ w.fc_embed_w.astype(np.float64).T + w.fc_embed_b.astype(np.float64)
    h = np.zeros((1, w.rnn_size))
    c = np.zeros((1, w.rnn_size))
    h, c = lstm_step(w, e, h, c)  # image step: its output is discarded, its state kept
    embed = w.embed.astype(np.float64)
    logit_w = w.logit_w.astype(np.float64)
    logit_b = w.logit_b.astype(np.float64)
    word = 0  # BOS
    finished = False
    seq = np.zeros((1, steps), dtype=np.int64)
    logprobs = np.zeros((1, steps, w.vocab_size + 1), dtype=np.float32)
    for t in range(steps):
        h, c = lstm_step(w, embed[word : word + 1], h, c)
        lp = _log_softmax(h @ logit_w.T + logit_b)
        logprobs[0, t] = lp[0]
        word = 0 if finished else int(np.argmax(lp[0]))
        finished = finished or word == 0
        seq[0, t] = word
    return seq, logprobs


# ---------------------------------------------------------------------------------------------
# Small graph-writing helpers
# ---------------------------------------------------------------------------------------------


class _Graph:
    """Collects nodes and initializers and hands out unique value names, like a tracer would."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"/{hint}_{self._n}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const(self, array: np.ndarray, hint: str = "Constant") -> str:
        """A Constant node, which is how torch.onnx emits small literals it did not fold."""
        out = self.name(hint)
        tensor = numpy_helper.from_array(array, out + "_value")
        self.nodes.append(helper.make_node("Constant", [], [out], value=tensor))
        return out

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: Any) -> str:
        """Append one single-output node; returns its output name."""
        return self.op_multi(op_type, inputs, 1, hint, **attrs)[0]

    def op_multi(self, op_type: str, inputs: Sequence[str], n_out: int, hint: str = "", **attrs: Any) -> list[str]:
        outs = [self.name(hint or op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs


def _save_model(
    path: Path,
    g: _Graph,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> None:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="tests.stand_in_models",
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


# ---------------------------------------------------------------------------------------------
# The greedy decoder graph (docs/models.md §4)
# ---------------------------------------------------------------------------------------------


def make_greedy_decoder(
    path: Path,
    w: NewFCParams,
    steps: int = 20,
    prefix: str = "",
    extra_constants: bool = False,
    input_name: str = "fc_feats",
    padded_to: int | None = None,
) -> None:
    """Write an unrolled greedy decoder graph as torch.onnx would trace it at opset 11.

    Input ``input_name`` float32 (1,F); outputs ``seq`` int64 (1,steps) and ``logprobs`` float32
    (1,steps,V+1). Weights are initializers named after the PyTorch parameters under ``prefix``.
    ``extra_constants`` adds folded constants beside them (zero state, Slice bounds, the BOS word and a
    transposed copy of ``i2h.weight`` used by a MatMul), so readers must look weights up by name.
    ``padded_to`` mimics upstream's own loop traced with an early stop: its outputs were allocated
    for ``padded_to`` steps, so after the ``steps`` computed ones come constant zeros (word 0 and
    all-zero log-probability rows).
    """
    g = _Graph()
    r = w.rnn_size
    p = prefix
    embed = g.init(f"{p}embed.weight", w.embed)
    fc_w = g.init(f"{p}fc_embed.weight", w.fc_embed_w)
    fc_b = g.init(f"{p}fc_embed.bias", w.fc_embed_b)
    i2h_w = g.init(f"{p}_core.i2h.weight", w.i2h_w)
    i2h_b = g.init(f"{p}_core.i2h.bias", w.i2h_b)
    h2h_w = g.init(f"{p}_core.h2h.weight", w.h2h_w)
    h2h_b = g.init(f"{p}_core.h2h.bias", w.h2h_b)
    logit_w = g.init(f"{p}logit.weight", w.logit_w)
    logit_b = g.init(f"{p}logit.bias", w.logit_b)

    zeros = np.zeros((1, r), dtype=np.float32)
    bos = np.zeros((1,), dtype=np.int64)
    if extra_constants:
        # What constant folding leaves behind: anonymous initializers named by the exporter.
        zero_state = g.init("onnx::Zeros_901", zeros)
        bos_word = g.init("onnx::Gather_902", bos)
        i2h_w_t = g.init("onnx::MatMul_903", np.ascontiguousarray(w.i2h_w.T))
        bounds = [
            (
                g.init(f"onnx::Slice_{910 + 3 * k}", np.array([k * r], dtype=np.int64)),
                g.init(f"onnx::Slice_{911 + 3 * k}", np.array([(k + 1) * r], dtype=np.int64)),
            )
            for k in range(5)
        ]
        axis1 = g.init("onnx::Slice_930", np.array([1], dtype=np.int64))
    else:
        zero_state = g.const(zeros, "Zeros")
        bos_word = g.const(bos, "BOS")

    def linear(x: str, weight: str, bias: str, hint: str) -> str:
        # nn.Linear on a 2-D input exports as Gemm(x, W, b, transB=1).
        return g.op("Gemm", [x, weight, bias], hint, alpha=1.0, beta=1.0, transB=1)

    def core(x: str, h: str, c: str, first: bool) -> tuple[str, str]:
        if extra_constants and first:
            # The traced image step went through a folded, pre-transposed weight: MatMul + Add.
            xi = g.op("Add", [g.op("MatMul", [x, i2h_w_t]), i2h_b], "i2h")
        else:
            xi = linear(x, i2h_w, i2h_b, "i2h")
        s = g.op("Add", [xi, linear(h, h2h_w, h2h_b, "h2h")], "all_input_sums")
        if extra_constants:
            chunks = [g.op("Slice", [s, lo, hi, axis1]) for lo, hi in bounds]
        else:
            chunks = g.op_multi("Split", [s], 5, axis=1, split=[r] * 5)
        in_gate, forget_gate, out_gate = (g.op("Sigmoid", [chunks[k]]) for k in range(3))
        candidate = g.op("Max", [chunks[3], chunks[4]], "maxout")
        c_next = g.op("Add", [g.op("Mul", [forget_gate, c]), g.op("Mul", [in_gate, candidate])], "next_c")
        h_next = g.op("Mul", [out_gate, g.op("Tanh", [c_next])], "next_h")
        return h_next, c_next

    e = linear(input_name, fc_w, fc_b, "fc_embed")
    h, c = core(e, zero_state, zero_state, first=True)  # image step; output discarded
    word = bos_word
    zero_word = g.const(np.array(0, dtype=np.int64), "Zero")
    unfinished = ""
    seq_parts: list[str] = []
    lp_parts: list[str] = []
    for t in range(steps):
        x = g.op("Gather", [embed, word], "embed", axis=0)
        h, c = core(x, h, c, first=False)
        lp = g.op("LogSoftmax", [linear(h, logit_w, logit_b, "logit")], "logprobs", axis=1)
        it = g.op("ArgMax", [lp], "it", axis=1, keepdims=0)
        alive = g.op("Greater", [it, zero_word])
        unfinished = alive if t == 0 else g.op("And", [unfinished, alive], "unfinished")
        word = g.op("Mul", [it, g.op("Cast", [unfinished], to=TensorProto.INT64)], "it_masked")
        seq_parts.append(g.op("Unsqueeze", [word], axes=[1]))
        lp_parts.append(g.op("Unsqueeze", [lp], axes=[1]))
    length = max(steps, padded_to or 0)
    if length > steps:
        seq_parts.append(g.const(np.zeros((1, length - steps), np.int64), "SeqPadding"))
        lp_parts.append(g.const(np.zeros((1, length - steps, w.vocab_size + 1), np.float32), "LogprobsPadding"))
    g.nodes.append(helper.make_node("Concat", seq_parts, ["seq"], axis=1))
    g.nodes.append(helper.make_node("Concat", lp_parts, ["logprobs"], axis=1))

    _save_model(
        path,
        g,
        "greedy_decoder",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, w.feat_dim])],
        [
            helper.make_tensor_value_info("seq", TensorProto.INT64, [1, length]),
            helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, [1, length, w.vocab_size + 1]),
        ],
    )


# ---------------------------------------------------------------------------------------------
# Feature models (docs/models.md §2)
# ---------------------------------------------------------------------------------------------


def _he(rng: np.random.Generator, out_ch: int, in_ch: int, k: int, gain: float = 1.0) -> F32:
    """He-normal conv weight: keeps activation variance ~constant through Relu layers."""
    std = gain * np.sqrt(2.0 / (in_ch * k * k))
    return (rng.standard_normal((out_ch, in_ch, k, k), dtype=np.float32) * np.float32(std)).astype(np.float32)


def _feature_io(g: _Graph, last: str, out_dim: int, second_output: bool, name: str, path: Path) -> None:
    """Add the published outputs: fc = spatial mean of the last map (out_dim,), att = the map (C,h,w)."""
    g.nodes.append(helper.make_node("ReduceMean", [last], ["fc"], axes=[0, 2, 3], keepdims=0))
    outputs = [helper.make_tensor_value_info("fc", TensorProto.FLOAT, [out_dim])]
    if second_output:
        g.nodes.append(helper.make_node("Squeeze", [last], ["att"], axes=[0]))
        outputs.append(helper.make_tensor_value_info("att", TensorProto.FLOAT, [out_dim, "h", "w"]))
    _save_model(
        path,
        g,
        name,
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [3, "H", "W"])],
        outputs,
    )


def make_feature_model(path: Path, out_dim: int = 2048, seed: int = 0, second_output: bool = True) -> None:
    """A small, fast conv net with the published feature-model interface.

    Five 3x3 stride-2 convs (padding 1, so even a 1x1 image gives a 1x1 map) bring any image down 32x,
    like ResNet-101, so a 3000x4000 image stays cheap; a final 1x1 conv + Relu makes the out_dim
    channels. He-initialised weights keep fc entries O(1) (non-negative, like ResNet features) for
    inputs normalised as in docs/models.md §3.
    """
    rng = np.random.default_rng(seed)
    g = _Graph()
    x = g.op("Unsqueeze", ["img"], "batch", axes=[0])
    chans = [3, 16, 32, 32, 64, 64]
    for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
        wt = g.init(f"conv{i}.weight", _he(rng, cout, cin, 3))
        bias = g.init(f"conv{i}.bias", (rng.standard_normal(cout) * 0.1).astype(np.float32))
        conv = g.op("Conv", [x, wt, bias], f"conv{i}", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        x = g.op("Relu", [conv])
    wt = g.init("proj.weight", _he(rng, out_dim, chans[-1], 1))
    bias = g.init("proj.bias", (rng.standard_normal(out_dim) * 0.1).astype(np.float32))
    x = g.op("Relu", [g.op("Conv", [x, wt, bias], "proj", kernel_shape=[1, 1])])
    _feature_io(g, x, out_dim, second_output, "feature_model", path)


def make_resnet_stem_model(path: Path, out_dim: int = 2048, seed: int = 0) -> None:
    """The ResNet-101's size arithmetic without its depth: 7x7/2 conv (pad 3), 3/2 max-pool with
    ceil mode and no padding, a stride-2 1x1 conv, spatial mean. Like the published model, it
    cannot take an image with a side under 3 px."""
    rng = np.random.default_rng(seed)
    g = _Graph()
    x = g.op("Unsqueeze", ["img"], "batch", axes=[0])
    wt, bias = g.init("conv1.weight", _he(rng, 16, 3, 7)), g.init("conv1.bias", np.zeros(16, np.float32))
    x = g.op("Relu", [g.op("Conv", [x, wt, bias], "conv1", kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3])])
    x = g.op("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    wt, bias = g.init("proj.weight", _he(rng, out_dim, 16, 1)), g.init("proj.bias", np.zeros(out_dim, np.float32))
    x = g.op("Relu", [g.op("Conv", [x, wt, bias], "proj", kernel_shape=[1, 1], strides=[2, 2])])
    _feature_io(g, x, out_dim, True, "resnet_stem", path)


def make_resnet101(path: Path, seed: int = 0) -> None:
    """A full-size, random-weight Caffe-style ResNet-101 (docs/models.md §2) for benchmarks (~170 MB file).

    BatchNorm is folded into conv biases. Each residual branch's last conv is scaled by 0.2 (on top of
    He init) so the residual stream grows slowly and activations stay finite and O(1) through all layers.
    """
    rng = np.random.default_rng(seed)
    g = _Graph()

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int, pad: int, gain: float = 1.0) -> str:
        wt = g.init(f"{name}.weight", _he(rng, cout, cin, k, gain))
        bias = g.init(f"{name}.bias", (rng.standard_normal(cout) * 0.01).astype(np.float32))
        return g.op("Conv", [x, wt, bias], name, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    x = g.op("Unsqueeze", ["img"], "batch", axes=[0])
    x = g.op("Relu", [conv(x, "conv1", 3, 64, 7, 2, 3)])
    # Caffe-style max pool: no padding, ceil mode.
    x = g.op("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=1)
    cin = 64
    for li, (blocks, width) in enumerate(zip([3, 4, 23, 3], [64, 128, 256, 512], strict=True), start=1):
        cout = width * 4
        for b in range(blocks):
            # Caffe style: the stride sits in the first 1x1 conv of the first block (layers 2-4).
            stride = 2 if (b == 0 and li > 1) else 1
            name = f"layer{li}.{b}"
            y = g.op("Relu", [conv(x, f"{name}.conv1", cin, width, 1, stride, 0)])
            y = g.op("Relu", [conv(y, f"{name}.conv2", width, width, 3, 1, 1)])
            y = conv(y, f"{name}.conv3", width, cout, 1, 1, 0, gain=0.2)
            shortcut = conv(x, f"{name}.downsample", cin, cout, 1, stride, 0) if b == 0 else x
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            cin = cout
    _feature_io(g, x, 2048, True, "resnet101", path)


# ---------------------------------------------------------------------------------------------
# Vocabulary and full model sets (docs/models.md §1, §7)
# ---------------------------------------------------------------------------------------------


def default_words(vocab_size: int) -> list[str]:
    """``vocab_size`` distinct words: common caption words (incl. bad endings), padding, last "UNK"."""
    if vocab_size < 1:
        raise ValueError("vocab_size must be at least 1")
    words = list(_BASE_WORDS[: vocab_size - 1])
    words += [f"w{i}" for i in range(len(words), vocab_size - 1)]
    return [*words, "UNK"]


def write_vocab(path: Path, words: list[str]) -> None:
    """Write the published vocab format: {"1": words[0], ...}; index 0 (BOS/EOS) has no entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(i): wd for i, wd in enumerate(words, start=1)}), encoding="utf-8")


def write_prototxt_placeholder(onnx_path: Path) -> None:
    """The ailia .prototxt beside an ONNX file; a placeholder, since ailia's licence check fails first."""
    Path(f"{onnx_path}.prototxt").write_text(
        f'# placeholder ailia prototxt for {onnx_path.name} (test stand-in)\nname: "{onnx_path.stem}"\n',
        encoding="utf-8",
    )


def make_model_set(
    model_dir: Path,
    vocab_size: int = 12,
    embed: int = 16,
    rnn: int = 16,
    steps: int = 20,
    eos_bias: float = DEFAULT_EOS_BIAS,
    prototxt: bool = True,
) -> dict[str, NewFCParams]:
    """Write the published file set (small stand-ins) into model_dir; return the weights per decoder."""
    model_dir.mkdir(parents=True, exist_ok=True)
    make_feature_model(model_dir / "model_feat.onnx")
    onnx_paths = [model_dir / "model_feat.onnx"]
    weights: dict[str, NewFCParams] = {}
    for seed, name in enumerate(DECODER_NAMES, start=1):
        w = random_decoder_weights(vocab_size, embed, rnn, feat_dim=2048, seed=seed, eos_bias=eos_bias)
        make_greedy_decoder(model_dir / f"model_{name}.onnx", w, steps=steps)
        onnx_paths.append(model_dir / f"model_{name}.onnx")
        weights[name] = w
    write_vocab(model_dir / "vocab.json", default_words(vocab_size))
    if prototxt:
        for p in onnx_paths:
            write_prototxt_placeholder(p)
    return weights
