"""docs/models.md §5 one step at a time in numpy float32: the alternative to utils.decoding.step_model.OrtStepModel
that bench/bench_decoding.py measures (and the reason the program uses ONNX Runtime instead)."""

from __future__ import annotations

import numpy as np

from utils.decoding.weights import DecoderWeights
from utils.engine.arrays import F32, I64, State


def _sigmoid(x: F32) -> F32:
    out: F32 = (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)
    return out


def _log_softmax(z: F32) -> F32:
    shifted = z - z.max(axis=1, keepdims=True)
    out: F32 = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


class NumpyStepModel:
    """docs/models.md §5 in numpy float32."""

    def __init__(self, w: DecoderWeights) -> None:
        self.n_tokens = w.n_tokens
        self._w = w
        self._r = w.rnn_size
        # Stored (in, out) so each product is a plain row-major matmul.
        self._fc_t = np.ascontiguousarray(w.fc_w.T)
        self._i2h_t = np.ascontiguousarray(w.i2h_w.T)
        self._h2h_t = np.ascontiguousarray(w.h2h_w.T)
        self._logit_t = np.ascontiguousarray(w.logit_w.T)

    def _core(self, x: F32, h: F32, c: F32) -> State:
        r = self._r
        s = (x @ self._i2h_t + self._w.i2h_b) + (h @ self._h2h_t + self._w.h2h_b)
        gates = _sigmoid(s[:, : 3 * r])
        candidate = np.maximum(s[:, 3 * r : 4 * r], s[:, 4 * r :])
        c_next = gates[:, r : 2 * r] * c + gates[:, :r] * candidate
        h_next = gates[:, 2 * r :] * np.tanh(c_next)
        return h_next.astype(np.float32, copy=False), c_next.astype(np.float32, copy=False)

    def _out(self, h: F32) -> F32:
        return _log_softmax(h @ self._logit_t + self._w.logit_b)

    def start(self, fc: np.ndarray) -> tuple[F32, State]:
        e = np.asarray(fc, np.float32).reshape(1, -1) @ self._fc_t + self._w.fc_b
        zeros = np.zeros((1, self._r), np.float32)
        state = self._core(e, zeros, zeros)
        return self.step(np.zeros(1, np.int64), state)

    def step(self, words: I64, state: State) -> tuple[F32, State]:
        h, c = self._core(self._w.embed[words], state[0], state[1])
        return self._out(h), (h, c)
