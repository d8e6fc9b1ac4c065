"""Decoding the published decoders: traced greedy graphs (docs/models.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.engine.runtime import Network, first_input
from utils.support.errors import CaptionError
from vocab import caption_indices


@dataclass(frozen=True)
class Candidate:
    """One of the n best captions."""

    indices: list[int]  # the emitted words, without the closing 0
    score: float  # beam search: upstream's ranking score; otherwise the summed log-probability (see docs/decoding.md)
    confidence: float | None  # mean log-probability of the emitted words


@dataclass(frozen=True)
class Decoded:
    indices: list[int]  # the emitted words, without the closing 0
    confidence: float | None  # mean log-probability of the emitted words; None for an empty caption
    nbest: tuple[Candidate, ...] = ()  # best first; the first is this caption (filled when n-best is asked)


class GreedyGraphDecoder:
    """Runs a traced greedy decoder: one call gives the whole word sequence and its distributions."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.input_name = first_input(net)

    def run(self, fc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's word row (T,) and log-probabilities (T, V+1) for one (1, F) image vector."""
        seq, logprobs = split_decoder_outputs(self.net.run({self.input_name: fc}))
        return seq[0], logprobs[0]

    def __call__(self, fc: np.ndarray) -> Decoded:
        return greedy_result(*self.run(fc))


def split_decoder_outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Find the word row (1, T) and the log-probabilities (1, T, V+1) by shape, not by name.

    The ailia SDK hands every blob through a float32 buffer, so the indices may arrive as floats."""
    seq = next((o for o in outputs if o.ndim == 2), None)
    logprobs = next((o for o in outputs if o.ndim == 3 and np.issubdtype(o.dtype, np.floating)), None)
    if seq is None or logprobs is None or seq.shape[1] != logprobs.shape[1]:
        shapes = ", ".join(f"{o.dtype}{list(o.shape)}" for o in outputs)
        raise CaptionError(
            f"the decoder's outputs ({shapes}) are not the expected word indices (1, T) and "
            "log-probabilities (1, T, V+1); is this a published decoder file?"
        )
    if not np.issubdtype(seq.dtype, np.integer):
        seq = np.rint(seq).astype(np.int64)
    return seq, logprobs


def greedy_result(seq: np.ndarray, logprobs: np.ndarray) -> Decoded:
    words = caption_indices(seq.tolist())
    if not words:
        return Decoded(words, None)
    picked = logprobs[np.arange(len(words)), words]
    return Decoded(words, float(np.mean(picked, dtype=np.float64)))
