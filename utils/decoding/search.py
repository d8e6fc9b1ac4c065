"""Decoding algorithms of the upstream evaluation (docs/models.md §6) over any step model.

Three paths, chosen the way upstream's ``_sample`` chooses them:

- beam search (beam size > 1 with the greedy method), diverse when ``group_size`` > 1;
- diverse sampling (``group_size`` > 1 otherwise): one greedy or sampled caption per group;
- greedy or sampling (everything else), ``rows`` independent captions at once.

The options act where upstream lets them act: ``suppress_unk`` only in beam search, ``block_trigrams``
only outside it; ``decoding_constraint`` and ``remove_bad_endings`` in both. Arithmetic is float32 like
upstream's tensors; the length penalty is applied in Python floats, as upstream does.

A step model (see ``StepModel``) gives log-probabilities (log_softmax) of the next word for a batch of
rows; this module never sees weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
State = tuple[np.ndarray, np.ndarray]  # (h, c), one row per beam

EOS = 0  # index 0 is BOS, EOS and padding at once (docs/models.md §4)
UNK_WORD = "UNK"
UNK_PENALTY = np.float32(1000.0)  # subtracted from UNK's log-probability in beam search
FINISHED_PENALTY = np.float32(1000.0)  # subtracted from a finished beam's running score
# Trigram blocking: upstream adds count x (-0.693 x 2.0), i.e. about 2 ln(1/2) per earlier use.
TRIGRAM_PENALTY = np.float32(-0.693)
TRIGRAM_ALPHA = np.float32(2.0)
# Words after which decoding may not end (the model's list, used while decoding; the caption
# post-processing list in vocab.BAD_ENDINGS is a different one, as upstream has two).
DECODING_BAD_ENDINGS = frozenset(
    ["a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon", "near", "to", "is", "are",
     "am"]
)


class StepModel(Protocol):
    """The decoder network one step at a time (docs/models.md §5)."""

    n_tokens: int  # V + 1

    def start(self, fc: np.ndarray) -> tuple[F32, State]:
        """Image step then BOS step: log-probabilities (1, V+1) of the first word, and the state."""
        ...

    def step(self, words: I64, state: State) -> tuple[F32, State]:
        """Feed one word per row: log-probabilities (rows, V+1) of the next word, and the new state."""
        ...


# ---------------------------------------------------------------------------------------------
# Option values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthPenalty:
    """Upstream's ``penalty_builder``: "" (none), ``wu_A`` or ``avg_A``."""

    kind: str = ""  # "", "wu" or "avg"
    alpha: float = 0.0

    def __call__(self, length: int, logprob: float) -> float:
        if self.kind == "wu":
            modifier = ((5 + length) ** self.alpha) / ((5 + 1) ** self.alpha)
            return logprob / modifier
        if self.kind == "avg":
            return logprob / length
        return logprob

    def largest_divisor(self, lengths: range) -> float:
        """The largest number a score is divided by over ``lengths`` (1.0 without a penalty)."""
        if self.kind == "wu":
            return max(((5 + n) ** self.alpha) / ((5 + 1) ** self.alpha) for n in lengths)
        if self.kind == "avg":
            return float(max(lengths))
        return 1.0

    def __str__(self) -> str:
        return f"{self.kind}_{self.alpha:g}" if self.kind else "none"


def parse_length_penalty(text: str | None) -> LengthPenalty:
    """``wu_A`` or ``avg_A`` (A a number); "" or "none" for no penalty. Raises ValueError."""
    if text is None or text.strip().lower() in ("", "none"):
        return LengthPenalty()
    match = re.fullmatch(r"(wu|avg)_([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", text.strip())
    if not match:
        raise ValueError(f"length penalty {text!r} is not wu_A or avg_A (A a number, e.g. wu_0.5, avg_1)")
    return LengthPenalty(match.group(1), float(match.group(2)))


@dataclass(frozen=True)
class SampleMethod:
    """``greedy``, ``sample``, ``topK`` (K an integer >= 1) or ``topP`` (0 < P < 1)."""

    kind: str = "greedy"  # "greedy", "sample", "top_k" or "top_p"
    k: int = 0
    p: float = 0.0

    def __str__(self) -> str:
        if self.kind == "top_k":
            return f"top{self.k}"
        if self.kind == "top_p":
            return f"top{self.p:g}"
        return self.kind


def parse_sample_method(text: str) -> SampleMethod:
    """Raises ValueError for anything but greedy, sample, topK or topP."""
    value = text.strip()
    if value in ("greedy", "sample"):
        return SampleMethod(value)
    match = re.fullmatch(r"top(\d+|\d*\.\d+)", value)
    if match:
        number = float(match.group(1))
        if 0.0 < number < 1.0:
            return SampleMethod("top_p", p=number)
        if number >= 1.0 and number == int(number):
            return SampleMethod("top_k", k=int(number))
    raise ValueError(
        f"sample method {text!r} is not greedy, sample, topK (an integer K >= 1, e.g. top5) "
        "or topP (0 < P < 1, e.g. top0.9)"
    )


@dataclass(frozen=True)
class SearchSettings:
    max_length: int = 20
    beam_size: int = 1
    group_size: int = 1
    diversity_lambda: float = 0.5
    sample_method: SampleMethod = SampleMethod()
    temperature: float = 1.0
    length_penalty: LengthPenalty = LengthPenalty()
    suppress_unk: bool = False
    decoding_constraint: bool = False
    remove_bad_endings: bool = False
    block_trigrams: bool = False
    rows: int = 1  # independent captions on the greedy/sampling path (upstream's sample_n)
    unk_index: int | None = None  # the last index when its word is UNK, else None
    bad_ending_indices: tuple[int, ...] = ()  # indices of DECODING_BAD_ENDINGS words

    @property
    def path(self) -> str:
        """Which of upstream's paths these settings take: "beam", "diverse" or "sample"."""
        if self.beam_size > 1 and self.sample_method.kind == "greedy":
            return "beam"
        if self.group_size > 1:
            return "diverse"
        return "sample"


@dataclass(frozen=True)
class Hypothesis:
    """One decoded sequence as upstream records it."""

    tokens: list[int]  # the words, ending with 0 when the caption ended (beams may hold a 0 inside)
    score: float  # beam search: upstream's score (adjusted log-probabilities, length penalty applied)
    raw_logprobs: list[float]  # the model's own log-probability of each token (temperature 1, unmodified)


def vocabulary_indices(words: Sequence[str]) -> tuple[int | None, tuple[int, ...]]:
    """(UNK index or None, indices of the decoding bad endings) for words[i - 1] = word of index i."""
    unk = len(words) if words and words[-1] == UNK_WORD else None
    bad = tuple(i for i, w in enumerate(words, start=1) if w in DECODING_BAD_ENDINGS)
    return unk, bad


def search(model: StepModel, fc: np.ndarray, settings: SearchSettings, rng: np.random.Generator,
           start: tuple[F32, State] | None = None) -> list[Hypothesis]:
    """Decode with upstream's path for ``settings``; ``start`` reuses a ``model.start(fc)`` already run.

    Beam search: every group's finished captions, best first within a group (upstream's order).
    Diverse sampling: one caption per group, in group order. Greedy/sampling: ``rows`` captions, in row order.
    """
    first = start if start is not None else model.start(fc)
    if settings.path == "beam":
        return beam_search(model, first, settings)
    if settings.path == "diverse":
        return diverse_sample(model, first, settings, rng)
    return sample(model, first, settings, rng)


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def log_softmax(z: F32) -> F32:
    shifted = z - z.max(axis=-1, keepdims=True)
    out: F32 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out.astype(np.float32, copy=False)


def _take_state(state: State, rows: np.ndarray) -> State:
    return state[0][rows], state[1][rows]


def _forbid_repeats(logprobs: F32, previous: I64) -> None:
    """decoding_constraint: the word just emitted may not come again (in place)."""
    logprobs[np.arange(len(previous)), previous] = -np.inf


def _forbid_bad_endings(logprobs: F32, previous: I64, bad: tuple[int, ...]) -> None:
    """remove_bad_endings: no EOS right after a bad-ending word (in place)."""
    if bad:
        logprobs[np.isin(previous, bad), EOS] = -np.inf


class _Trigrams:
    """Upstream's trigram blocking for one row: remember each (a, b) -> c, penalise c after (a, b) again."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], list[int]] = {}

    def penalise(self, logprobs_row: F32, seq_row: I64, t: int) -> None:
        # Record the trigram completed at the last step, then lower its continuations of the last two words.
        key = (int(seq_row[t - 3]), int(seq_row[t - 2]))
        self.seen.setdefault(key, []).append(int(seq_row[t - 1]))
        continuations = self.seen.get((int(seq_row[t - 2]), int(seq_row[t - 1])))
        if continuations:
            counts = np.zeros(logprobs_row.shape, dtype=np.float32)
            np.add.at(counts, continuations, np.float32(1.0))
            logprobs_row += (counts * TRIGRAM_PENALTY) * TRIGRAM_ALPHA


def _gumbel_argmax(logits: F32, rng: np.random.Generator) -> I64:
    """One draw per row from Categorical(logits): argmax of logits + Gumbel noise."""
    noise = rng.gumbel(size=logits.shape)
    with np.errstate(invalid="ignore"):
        picked: I64 = np.argmax(logits.astype(np.float64) + noise, axis=1).astype(np.int64)
    return picked


def next_words(logprobs: F32, method: SampleMethod, temperature: float, rng: np.random.Generator) -> I64:
    """Upstream's ``sample_next_word``: argmax, or a draw after temperature and top-k / top-p filtering."""
    if method.kind == "greedy":
        best: I64 = np.argmax(logprobs, axis=1).astype(np.int64)
        return best
    scaled = (logprobs / np.float32(temperature)).astype(np.float32)
    if method.kind == "top_k":
        k = min(method.k, scaled.shape[1])
        kept = np.full_like(scaled, -np.inf)
        top = np.argpartition(-scaled, k - 1, axis=1)[:, :k]
        rows = np.arange(scaled.shape[0])[:, None]
        kept[rows, top] = scaled[rows, top]
        scaled = kept
    elif method.kind == "top_p":
        probs = np.exp(log_softmax(scaled))
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        below = np.cumsum(sorted_probs, axis=1) < np.float32(method.p)
        # Keep every word whose predecessors' mass is still short of p: the smallest set reaching p.
        keep = np.concatenate([np.ones_like(below[:, :1]), below[:, :-1]], axis=1)
        sorted_probs = sorted_probs * keep
        sorted_probs = sorted_probs / sorted_probs.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            filtered = np.log(sorted_probs).astype(np.float32)
        scaled = np.empty_like(scaled)
        np.put_along_axis(scaled, order, filtered, axis=1)
    return _gumbel_argmax(scaled, rng)


def _finished_tokens(row: I64) -> list[int]:
    """Tokens up to and including the first 0, or all of them."""
    ends = np.flatnonzero(row == EOS)
    return [int(x) for x in (row[: ends[0] + 1] if len(ends) else row)]


# ---------------------------------------------------------------------------------------------
# Greedy and sampling (upstream AttModel._sample)
# ---------------------------------------------------------------------------------------------


def sample(model: StepModel, start: tuple[F32, State], s: SearchSettings, rng: np.random.Generator) -> list[Hypothesis]:
    rows, length = s.rows, s.max_length
    logprobs, state = start
    logprobs = np.repeat(logprobs, rows, axis=0)
    state = (np.repeat(state[0], rows, axis=0), np.repeat(state[1], rows, axis=0))
    seq = np.zeros((rows, length), dtype=np.int64)
    raw = np.zeros((rows, length), dtype=np.float32)
    trigrams = [_Trigrams() for _ in range(rows)]
    unfinished = np.ones(rows, dtype=bool)
    everyone = np.arange(rows)
    for t in range(length):
        if t > 0:
            logprobs, state = model.step(seq[:, t - 1], state)
        adjusted = logprobs.copy()
        if t > 0 and s.decoding_constraint:
            _forbid_repeats(adjusted, seq[:, t - 1])
        if t > 0 and s.remove_bad_endings:
            _forbid_bad_endings(adjusted, seq[:, t - 1], s.bad_ending_indices)
        if t >= 3 and s.block_trigrams:
            for r in range(rows):
                trigrams[r].penalise(adjusted[r], seq[r], t)
        words = next_words(adjusted, s.sample_method, s.temperature, rng)
        raw[:, t] = logprobs[everyone, words]
        if t > 0:
            words[~unfinished] = EOS
        unfinished &= words != EOS
        seq[:, t] = words
        if not unfinished.any():
            break
    return [_scored(seq[r], raw[r], s.length_penalty) for r in range(rows)]


def _scored(row: I64, raw_row: F32, penalty: LengthPenalty) -> Hypothesis:
    tokens = _finished_tokens(row)
    raw = [float(x) for x in raw_row[: len(tokens)]]
    total = float(np.sum(raw_row[: len(tokens)], dtype=np.float32))
    return Hypothesis(tokens, penalty(len(tokens), total), raw)


# ---------------------------------------------------------------------------------------------
# Diverse sampling (upstream AttModel._diverse_sample)
# ---------------------------------------------------------------------------------------------


def diverse_sample(model: StepModel, start: tuple[F32, State], s: SearchSettings,
                   rng: np.random.Generator) -> list[Hypothesis]:
    groups, length = s.group_size, s.max_length
    seqs = np.zeros((groups, length), dtype=np.int64)
    raw = np.zeros((groups, length), dtype=np.float32)
    states: list[State] = [start[1]] * groups
    trigrams = [_Trigrams() for _ in range(groups)]
    temperature = np.float32(s.temperature)
    lam = np.float32(s.diversity_lambda)
    for tt in range(length + groups):
        for g in range(groups):
            t = tt - g
            if not 0 <= t <= length - 1:
                continue
            if t == 0:
                model_lp = start[0]  # every group starts from the image and BOS
            else:
                model_lp, states[g] = model.step(seqs[g, t - 1 : t], states[g])
            logprobs = log_softmax((model_lp / temperature).astype(np.float32))
            for earlier in range(g):
                logprobs[0, seqs[earlier, t]] -= lam
            previous = seqs[g, t - 1 : t]
            if t > 0 and s.decoding_constraint:
                _forbid_repeats(logprobs, previous)
            if t > 0 and s.remove_bad_endings:
                _forbid_bad_endings(logprobs, previous, s.bad_ending_indices)
            if t >= 3 and s.block_trigrams:
                trigrams[g].penalise(logprobs[0], seqs[g], t)
            word = int(next_words(logprobs, s.sample_method, 1.0, rng)[0])
            raw[g, t] = model_lp[0, word]
            if t > 0 and seqs[g, t - 1] == EOS:
                word = EOS  # finished (or padding): stays padding
            seqs[g, t] = word
    return [_scored(seqs[g], raw[g], s.length_penalty) for g in range(groups)]


# ---------------------------------------------------------------------------------------------
# Beam search, diverse when group_size > 1 (upstream CaptionModel.beam_search)
# ---------------------------------------------------------------------------------------------


def _top(flat: F32, k: int) -> I64:
    """Indices of the k largest values, largest first; equal values in index order (a stable sort)."""
    if k >= flat.size:
        order: I64 = np.argsort(-flat, kind="stable").astype(np.int64)
        return order
    kth = np.partition(flat, flat.size - k)[flat.size - k]
    above = np.flatnonzero(flat > kth)
    ties = np.flatnonzero(flat == kth)[: k - len(above)]
    chosen = np.concatenate([above, ties])
    ranked: I64 = chosen[np.lexsort((chosen, -flat[chosen]))].astype(np.int64)
    return ranked


@dataclass
class _Group:
    seq: I64  # (beams, t) words so far
    raw: F32  # (beams, t) the model's log-probability of each word
    sums: F32  # (beams,) running scores
    state: State
    logprobs: F32  # (beams, V+1) adjusted distribution for the next word (temperature applied)
    model_lp: F32  # (beams, V+1) the model's own distribution for the next word
    done: list[Hypothesis]


def beam_search(model: StepModel, start: tuple[F32, State], s: SearchSettings) -> list[Hypothesis]:
    groups, length = s.group_size, s.max_length
    width = s.beam_size // groups  # beams per group
    n_tokens = model.n_tokens
    temperature = np.float32(s.temperature)
    lam = np.float32(s.diversity_lambda)
    table = [
        _Group(
            seq=np.zeros((1, 0), dtype=np.int64),
            raw=np.zeros((1, 0), dtype=np.float32),
            sums=np.zeros(1, dtype=np.float32),
            state=start[1],
            logprobs=start[0].copy(),  # the first step has no temperature, as upstream
            model_lp=start[0],
            done=[],
        )
        for _ in range(groups)
    ]
    settled = False
    for t in range(length + groups - 1):
        for d in range(groups):
            local = t - d
            if not 0 <= local <= length - 1:
                continue
            grp = table[d]
            logprobs = grp.logprobs
            if local > 0 and s.decoding_constraint:
                _forbid_repeats(logprobs, grp.seq[:, local - 1])
            if local > 0 and s.remove_bad_endings:
                _forbid_bad_endings(logprobs, grp.seq[:, local - 1], s.bad_ending_indices)
            if s.suppress_unk and s.unk_index is not None:
                logprobs[:, s.unk_index] -= UNK_PENALTY
            if d > 0:
                # Hamming diversity: each use of a word by an earlier group's beams at this time costs lambda.
                change = np.zeros(n_tokens, dtype=np.float32)
                for earlier in range(d):
                    np.add.at(change, table[earlier].seq[:, local], np.float32(1.0))
                logprobs = logprobs - change * lam
            # One step of beam search: the best `width` of (beam, word) by running score + log-probability.
            candidates = (grp.sums[:, None] + logprobs).ravel()
            picked = _top(candidates, width)
            beam, word = np.divmod(picked, n_tokens)
            grp.sums = candidates[picked].astype(np.float32)
            grp.seq = np.concatenate([grp.seq[beam], word[:, None]], axis=1)
            grp.raw = np.concatenate([grp.raw[beam], grp.model_lp[beam, word][:, None]], axis=1)
            grp.state = _take_state(grp.state, beam)
            ended = word == EOS
            if local == length - 1:
                ended[:] = True
            for v in np.flatnonzero(ended):
                grp.done.append(Hypothesis(
                    tokens=[int(x) for x in grp.seq[v]],
                    score=s.length_penalty(local + 1, float(grp.sums[v])),
                    raw_logprobs=[float(x) for x in grp.raw[v]],
                ))
            grp.sums[ended] -= FINISHED_PENALTY
            if local == length - 1:
                continue  # this group is complete
            if groups == 1 and _settled(grp, width, local, length, s.length_penalty):
                settled = True  # only with one group: later groups would need this one's words
                break
            grp.model_lp, grp.state = model.step(grp.seq[:, local], grp.state)
            # Upstream takes log_softmax of the (already normalised) log-probabilities over the temperature.
            grp.logprobs = log_softmax((grp.model_lp / temperature).astype(np.float32))
        if settled:
            break
    ranked: list[Hypothesis] = []
    for grp in table:
        ranked += sorted(grp.done, key=lambda h: -h.score)[:width]
    return ranked


def _settled(grp: _Group, width: int, local: int, length: int, penalty: LengthPenalty) -> bool:
    """True when no later finished beam can enter this group's best ``width`` any more.

    Log-probabilities are at most 0, so a beam's score can only fall; the length penalty divides a
    (negative) score by at most its largest divisor over the lengths still possible. A later beam equal
    to the current ``width``-th best would sort after it, so equality also settles.
    """
    if len(grp.done) < width or local >= length - 1:
        return False
    kth = sorted((h.score for h in grp.done), reverse=True)[width - 1]
    divisor = penalty.largest_divisor(range(local + 2, length + 1))
    best = float(np.max(grp.sums))
    bound = best / divisor if best <= 0 else math.inf
    return bound <= kth

