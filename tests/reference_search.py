"""A plain, slow reference of upstream's decoding options (docs/models.md §5, §6), for checking
utils/decoding/search.py.

Written from upstream's behaviour, not from this program's code: one beam at a time in Python lists,
float64 arithmetic, the network from tests.stand_in_models.lstm_step. Shares nothing with utils/.

Upstream particulars followed here (ruotianluo/ImageCaptioning.pytorch, CaptionModel.beam_search and
AttModel._sample):
- beam search starts from one beam; candidates are ranked by running score + adjusted log-probability
  (equal scores in beam-then-word order); a beam whose new word is 0, or that reaches the length
  limit, is recorded with its score after the length penalty, and its running score drops by 1000;
  each group's records are sorted by score and its best (beams per group) kept, group after group;
- suppress_UNK only in beam search, trigram blocking only in greedy decoding; decoding_constraint and
  remove_bad_endings in both, from the second word on;
- temperature in beam search applies from the second word on (log_softmax of log-probabilities / T);
- diversity: each beam of group g pays lambda for every beam of an earlier group that chose the word
  at the same position.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tests.stand_in_models import NewFCParams, lstm_step

DECODE_BAD_ENDINGS = ["a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon", "near",
                      "to", "is", "are", "am"]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = float(np.max(z))
    return z - m - math.log(float(np.sum(np.exp(z - m))))


class Net:
    """The NewFCModel network in float64, one row at a time."""

    def __init__(self, w: NewFCParams) -> None:
        self.w = w

    def start(self, fc: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Log-probabilities of the first word, and the state after the image and BOS steps."""
        w = self.w
        f = np.asarray(fc, dtype=np.float64).reshape(1, -1)
        e = f @ w.fc_embed_w.astype(np.float64).T + w.fc_embed_b.astype(np.float64)
        zero = np.zeros((1, w.rnn_size))
        state = lstm_step(w, e, zero, zero)
        return self.step(state, 0)

    def step(self, state: tuple[np.ndarray, np.ndarray], word: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        w = self.w
        x = w.embed.astype(np.float64)[word : word + 1]
        h, c = lstm_step(w, x, state[0], state[1])
        logits = h @ w.logit_w.astype(np.float64).T + w.logit_b.astype(np.float64)
        return log_softmax(logits[0]), (h, c)


def penalised(kind: str, alpha: float, length: int, score: float) -> float:
    if kind == "wu":
        return score / (((5 + length) ** alpha) / (6**alpha))
    if kind == "avg":
        return score / length
    return score


@dataclass
class Options:
    beam_size: int = 1
    group_size: int = 1
    diversity_lambda: float = 0.5
    max_length: int = 20
    suppress_unk: bool = False  # needs unk_index
    unk_index: int | None = None
    decoding_constraint: bool = False
    remove_bad_endings: bool = False
    bad_indices: Sequence[int] = ()
    block_trigrams: bool = False
    penalty: tuple[str, float] = ("", 0.0)
    temperature: float = 1.0


@dataclass
class Beam:
    tokens: list[int]
    score: float
    state: tuple[np.ndarray, np.ndarray]
    logprobs: np.ndarray = field(default_factory=lambda: np.zeros(0))


def greedy(net: Net, fc: np.ndarray, o: Options) -> list[int]:
    """Upstream's greedy path: tokens, ending with 0 if the caption ended within max_length."""
    logprobs, state = net.start(fc)
    tokens: list[int] = []
    for t in range(o.max_length):
        if t > 0:
            logprobs, state = net.step(state, tokens[-1])
        adjusted = logprobs.copy()
        if t > 0 and o.decoding_constraint:
            adjusted[tokens[-1]] = -math.inf
        if t > 0 and o.remove_bad_endings and tokens[-1] in o.bad_indices:
            adjusted[0] = -math.inf
        if o.block_trigrams and t >= 3:
            # every earlier trigram (a, b, c) whose (a, b) are the last two words lowers c once more
            for i in range(t - 2):
                if (tokens[i], tokens[i + 1]) == (tokens[t - 2], tokens[t - 1]):
                    adjusted[tokens[i + 2]] -= 0.693 * 2.0
        word = int(np.argmax(adjusted))
        tokens.append(word)
        if word == 0:
            break
    return tokens


def beam_search(net: Net, fc: np.ndarray, o: Options) -> list[tuple[list[int], float]]:
    """Upstream's (diverse) beam search: the kept finished captions, (tokens, score), in upstream's order."""
    per_group = o.beam_size // o.group_size
    first, state = net.start(fc)
    groups = [[Beam([], 0.0, state, first.copy())] for _ in range(o.group_size)]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(o.group_size)]
    for t in range(o.max_length + o.group_size - 1):
        for g in range(o.group_size):
            local = t - g
            if local < 0 or local >= o.max_length:
                continue
            candidates = []
            for b, beam in enumerate(groups[g]):
                lp = beam.logprobs.copy()
                if local > 0 and o.decoding_constraint:
                    lp[beam.tokens[-1]] = -math.inf
                if local > 0 and o.remove_bad_endings and beam.tokens[-1] in o.bad_indices:
                    lp[0] = -math.inf
                if o.suppress_unk and o.unk_index is not None:
                    lp[o.unk_index] -= 1000.0
                for earlier in range(g):
                    for other in groups[earlier]:
                        lp[other.tokens[local]] -= o.diversity_lambda
                for word in range(len(lp)):
                    candidates.append((beam.score + lp[word], b, word))
            candidates.sort(key=lambda c: -c[0])  # stable: ties stay in (beam, word) order
            new = [Beam(groups[g][b].tokens + [word], score, groups[g][b].state)
                   for score, b, word in candidates[:per_group]]
            for beam in new:
                if beam.tokens[-1] == 0 or local == o.max_length - 1:
                    finished[g].append((beam.tokens, penalised(*o.penalty, local + 1, beam.score)))
                    beam.score -= 1000.0
                raw, beam.state = net.step(beam.state, beam.tokens[-1])
                beam.logprobs = log_softmax(raw / o.temperature)
            groups[g] = new
    ranked: list[tuple[list[int], float]] = []
    for records in finished:
        ranked += sorted(records, key=lambda r: -r[1])[:per_group]
    return ranked


def words_before_end(tokens: Sequence[int]) -> list[int]:
    out = []
    for t in tokens:
        if t == 0:
            break
        out.append(int(t))
    return out


def exhaustive(net: Net, fc: np.ndarray, max_length: int) -> list[tuple[list[int], float]]:
    """Every caption of at most max_length tokens with its summed log-probability, best first.

    A caption is words then 0, or max_length words without 0 (cut at the limit).
    """
    n_tokens = net.w.vocab_size + 1
    results = []
    for length in range(1, max_length + 1):
        for words in itertools.product(range(1, n_tokens), repeat=length - 1):
            for ending in ([0] if length < max_length else [0, *range(1, n_tokens)]):
                tokens = [*words, ending]
                logprobs, state = net.start(fc)
                total = 0.0
                for i, word in enumerate(tokens):
                    if i > 0:
                        logprobs, state = net.step(state, tokens[i - 1])
                    total += logprobs[word]
                results.append((tokens, total))
    results.sort(key=lambda r: -r[1])
    return results


def replay_logprobs(net: Net, fc: np.ndarray, tokens: Sequence[int]) -> list[np.ndarray]:
    """The model's distribution before each token of ``tokens``."""
    logprobs, state = net.start(fc)
    out = [logprobs]
    for word in tokens[:-1]:
        logprobs, state = net.step(state, word)
        out.append(logprobs)
    return out
