"""The decoder network one step at a time (docs/models.md §5), from recovered weights.

``OrtStepModel`` (utils.decoding.search.StepModel): a small ONNX graph per step, run by ONNX Runtime. The layers
are written the way torch.onnx traces them (Gemm with transB, Split, Sigmoid, Max, LogSoftmax), so the
arithmetic is that of the published graph. ONNX Runtime pre-packs the constant weights, so a step over
5 beams costs about what one row costs; numpy's BLAS does not, and is several times slower there
(bench/bench_decoding.py measures both; the numpy version lives there).

The word embedding lookup is a plain row copy in numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.decoding.weights import DecoderWeights
from utils.engine.arrays import F32, I64, State

logger = logging.getLogger(__name__)

_OPSET = 11
_IR_VERSION = 7


def step_graph(w: DecoderWeights) -> onnx.ModelProto:
    """x (B, E), h (B, R), c (B, R) -> logprobs (B, V+1), h_out, c_out; weights as initializers."""
    r = w.rnn_size
    inits = [
        numpy_helper.from_array(w.i2h_w, "i2h.weight"),
        numpy_helper.from_array(w.i2h_b, "i2h.bias"),
        numpy_helper.from_array(w.h2h_w, "h2h.weight"),
        numpy_helper.from_array(w.h2h_b, "h2h.bias"),
        numpy_helper.from_array(w.logit_w, "logit.weight"),
        numpy_helper.from_array(w.logit_b, "logit.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "i2h.weight", "i2h.bias"], ["xi"], transB=1),
        helper.make_node("Gemm", ["h", "h2h.weight", "h2h.bias"], ["hh"], transB=1),
        helper.make_node("Add", ["xi", "hh"], ["sums"]),
        helper.make_node("Split", ["sums"], ["s0", "s1", "s2", "s3", "s4"], axis=1, split=[r] * 5),
        helper.make_node("Sigmoid", ["s0"], ["in_gate"]),
        helper.make_node("Sigmoid", ["s1"], ["forget_gate"]),
        helper.make_node("Sigmoid", ["s2"], ["out_gate"]),
        helper.make_node("Max", ["s3", "s4"], ["candidate"]),
        helper.make_node("Mul", ["forget_gate", "c"], ["kept"]),
        helper.make_node("Mul", ["in_gate", "candidate"], ["written"]),
        helper.make_node("Add", ["kept", "written"], ["c_out"]),
        helper.make_node("Tanh", ["c_out"], ["c_tanh"]),
        helper.make_node("Mul", ["out_gate", "c_tanh"], ["h_out"]),
        helper.make_node("Gemm", ["h_out", "logit.weight", "logit.bias"], ["logits"], transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=1),
    ]

    def value(name: str, width: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", width])

    graph = helper.make_graph(
        nodes, "decoder_step",
        [value("x", w.embed.shape[1]), value("h", r), value("c", r)],
        [value("logprobs", w.n_tokens), value("h_out", r), value("c_out", r)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)


def image_graph(w: DecoderWeights) -> onnx.ModelProto:
    """fc (1, F) -> e (1, E): the image embedding, a Gemm as traced."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["fc", "fc_embed.weight", "fc_embed.bias"], ["e"], transB=1)],
        "decoder_image",
        [helper.make_tensor_value_info("fc", TensorProto.FLOAT, [1, w.fc_w.shape[1]])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, w.fc_w.shape[0]])],
        initializer=[numpy_helper.from_array(w.fc_w, "fc_embed.weight"),
                     numpy_helper.from_array(w.fc_b, "fc_embed.bias")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)


class OrtStepModel:
    """docs/models.md §5 as two small ONNX Runtime sessions: the image embedding, and one LSTM + logit step."""

    def __init__(self, w: DecoderWeights, quantize: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None) -> None:
        """``quantize`` rewrites both graphs before their sessions are made: the int8 decoder
        (utils/quantization/decoder.py), which must make them what it made the traced graph they are checked against."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Steps alternate with the traced graph's session and numpy work: threads that spin waiting for
        # the next run only take the cores from them (measured: 24 ms instead of 33 for graph + 20 steps).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        self.n_tokens = w.n_tokens
        self._embed = w.embed
        self._r = w.rnn_size
        image, step = image_graph(w), step_graph(w)
        if quantize is not None:
            image, step = quantize(image), quantize(step)
        self._image = ort.InferenceSession(image.SerializeToString(), opts, providers=providers)
        self._step = ort.InferenceSession(step.SerializeToString(), opts, providers=providers)

    def _run(self, x: F32, h: F32, c: F32) -> tuple[F32, State]:
        lp, h_out, c_out = self._step.run(None, {"x": x, "h": h, "c": c})
        return lp, (h_out, c_out)

    def start(self, fc: np.ndarray) -> tuple[F32, State]:
        e = self._image.run(None, {"fc": np.asarray(fc, np.float32).reshape(1, -1)})[0]
        zeros = np.zeros((1, self._r), np.float32)
        _, state = self._run(e, zeros, zeros)  # the image step: its output is discarded
        return self.step(np.zeros(1, np.int64), state)

    def step(self, words: I64, state: State) -> tuple[F32, State]:
        return self._run(self._embed[words], np.ascontiguousarray(state[0]), np.ascontiguousarray(state[1]))
