"""Decoding the published decoders: traced greedy graphs (FACTS §4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.errors import CaptionError
from utils.runtime import Network, first_input
from vocab import caption_indices


@dataclass(frozen=True)
class DecodingOptions:
    remove_bad_endings: bool = False  # strip trailing "a", "the", "with", ... as upstream does


@dataclass(frozen=True)
class Decoded:
    indices: list[int]  # the emitted words, without the closing 0
    confidence: float | None  # mean log-probability of the emitted words; None for an empty caption


class GreedyGraphDecoder:
    """Runs a traced greedy decoder: one call gives the whole word sequence and its distributions."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.input_name = first_input(net)

    def __call__(self, fc: np.ndarray) -> Decoded:
        seq, logprobs = _split_outputs(self.net.run({self.input_name: fc}))
        return greedy_result(seq[0], logprobs[0])


def _split_outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Find the word row (integers) and the log-probabilities (floats, one row per step) by type."""
    seq = next((o for o in outputs if np.issubdtype(o.dtype, np.integer) and o.ndim == 2), None)
    logprobs = next((o for o in outputs if np.issubdtype(o.dtype, np.floating) and o.ndim == 3), None)
    if seq is None or logprobs is None:
        shapes = ", ".join(f"{o.dtype}{list(o.shape)}" for o in outputs)
        raise CaptionError(
            f"the decoder's outputs ({shapes}) are not the expected word indices (1, T) and "
            "log-probabilities (1, T, V+1); is this a published decoder file?"
        )
    return seq, logprobs


def greedy_result(seq: np.ndarray, logprobs: np.ndarray) -> Decoded:
    words = caption_indices(seq.tolist())
    if not words:
        return Decoded(words, None)
    picked = logprobs[np.arange(len(words)), words]
    return Decoded(words, float(np.mean(picked, dtype=np.float64)))
