"""The imported decoder as an ONNX graph of the published form (docs/models.md §4, §5).

The same unrolled greedy loop that torch.onnx traced for the published decoders, at opset 11: one
image step whose output is dropped, then ``steps`` word steps, each choosing its word with an ArgMax
over the log-probabilities and zeroing every word after the first 0. The weights are initializers
named after upstream's parameters (``PARAMETER_NAMES``), so utils/decoding/weights.py recovers them by
name for beam search and sampling, and the int8 quantizer finds its layers as in a published file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.decoding.weights import PARAMETER_NAMES

OPSET = 11  # the published files' opset
# ONNX Runtime refuses an IR version newer than it knows; 7 is the one that came with opset 11.
IR_VERSION = 7
DEFAULT_STEPS = 20  # upstream evaluation's max_length (docs/models.md §5)
INPUT_NAME = "fc_feats"


class _Builder:
    """Nodes in order, with fresh value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        self._count += 1
        outputs = [f"{op_type.lower()}_{self._count}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=f"{op_type}_{self._count}", **attrs))
        return outputs

    def one(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.op(op_type, inputs, **attrs)[0]

    def constant(self, array: np.ndarray) -> str:
        return self.one("Constant", [], value=numpy_helper.from_array(array))


def decoder_graph(arrays: Mapping[str, np.ndarray], steps: int = DEFAULT_STEPS,
                  producer: str = "image_captioning_pytorch --import-checkpoint") -> onnx.ModelProto:
    """The greedy decoder for NewFCModel parameters ``arrays`` (keyed by role, PyTorch layouts)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    n_tokens, _ = arrays["embed"].shape
    features = int(arrays["fc_w"].shape[1])
    rnn = int(arrays["h2h_w"].shape[1])
    names = PARAMETER_NAMES
    initializers = [numpy_helper.from_array(np.ascontiguousarray(arrays[role], np.float32), names[role])
                    for role in PARAMETER_NAMES]
    b = _Builder()

    def linear(x: str, weight: str, bias: str) -> str:
        # nn.Linear on a (1, in) input, as torch.onnx exports it.
        return b.one("Gemm", [x, names[weight], names[bias]], alpha=1.0, beta=1.0, transB=1)

    def core(x: str, h: str, c: str) -> tuple[str, str]:
        sums = b.one("Add", [linear(x, "i2h_w", "i2h_b"), linear(h, "h2h_w", "h2h_b")])
        chunks = b.op("Split", [sums], n_out=5, axis=1, split=[rnn] * 5)
        in_gate, forget_gate, out_gate = (b.one("Sigmoid", [chunks[k]]) for k in range(3))
        candidate = b.one("Max", [chunks[3], chunks[4]])  # maxout, no tanh
        c_next = b.one("Add", [b.one("Mul", [forget_gate, c]), b.one("Mul", [in_gate, candidate])])
        return b.one("Mul", [out_gate, b.one("Tanh", [c_next])]), c_next

    zero_state = b.constant(np.zeros((1, rnn), np.float32))
    h, c = core(linear(INPUT_NAME, "fc_w", "fc_b"), zero_state, zero_state)  # the image step
    word = b.constant(np.zeros((1,), np.int64))  # BOS
    zero = b.constant(np.array(0, np.int64))
    alive = ""
    words: list[str] = []
    logprobs: list[str] = []
    for t in range(steps):
        h, c = core(b.one("Gather", [names["embed"], word], axis=0), h, c)
        step_logprobs = b.one("LogSoftmax", [linear(h, "logit_w", "logit_b")], axis=1)
        chosen = b.one("ArgMax", [step_logprobs], axis=1, keepdims=0)
        # Once a row has emitted 0 (EOS), every later word is 0 (docs/models.md §4).
        nonzero = b.one("Greater", [chosen, zero])
        alive = nonzero if t == 0 else b.one("And", [alive, nonzero])
        word = b.one("Mul", [chosen, b.one("Cast", [alive], to=TensorProto.INT64)])
        words.append(b.one("Unsqueeze", [word], axes=[1]))
        logprobs.append(b.one("Unsqueeze", [step_logprobs], axes=[1]))
    b.nodes.append(helper.make_node("Concat", words, ["seq"], name="Concat_seq", axis=1))
    b.nodes.append(helper.make_node("Concat", logprobs, ["logprobs"], name="Concat_logprobs", axis=1))
    graph = helper.make_graph(
        b.nodes, "imported_newfc_decoder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("seq", TensorProto.INT64, [1, steps]),
         helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, [1, steps, n_tokens])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name=producer)
    onnx.checker.check_model(model)
    return model
