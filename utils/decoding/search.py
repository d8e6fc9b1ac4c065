"""Decoding algorithms of the upstream evaluation (docs/models.md §6) over any step model.

Three paths, the one ``DecodingOptions.path`` names (chosen the way upstream's ``_sample`` chooses):

- "beam": beam search (beam size > 1 with the greedy method), diverse when ``group_size`` > 1;
- "diverse": diverse sampling (``group_size`` > 1 otherwise), one greedy or sampled caption per group;
- "sample": greedy decoding or sampling (everything else), ``nbest`` independent captions at once.

The per-step rules on the log-probabilities (temperature, decoding constraint, bad endings, UNK,
trigrams, diversity) are filters (utils/decoding/filters.py), built once per decode; each path applies
the ones upstream applies on it, in its order. Arithmetic is float32 like upstream's tensors; the length
penalty is applied in Python floats, as upstream does.

A step model (see ``StepModel``) gives log-probabilities (log_softmax) of the next word for a batch of
rows; this module never sees weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from utils.decoding.filters import EOS, LogitFilter, Step, apply_filters, log_softmax, logit_filters
from utils.decoding.options import DecodingOptions, LengthPenalty, SampleMethod
from utils.engine.arrays import F32, I64, State

FINISHED_PENALTY = np.float32(1000.0)  # subtracted from a finished beam's running score


class StepModel(Protocol):
    """The decoder network one step at a time (docs/models.md §5)."""

    n_tokens: int  # V + 1

    def start(self, fc: np.ndarray) -> tuple[F32, State]:
        """Image step then BOS step: log-probabilities (1, V+1) of the first word, and the state."""
        ...

    def step(self, words: I64, state: State) -> tuple[F32, State]:
        """Feed one word per row: log-probabilities (rows, V+1) of the next word, and the new state."""
        ...


@dataclass(frozen=True)
class SearchContext:
    """What a search needs besides the options: the length it runs to and the vocabulary's special words."""

    max_length: int  # most words: the option's max_length, else the graph's step count
    unk_index: int | None = None  # the last index when its word is UNK, else None
    bad_endings: tuple[int, ...] = ()  # indices of filters.DECODING_BAD_ENDINGS words


@dataclass(frozen=True)
class Hypothesis:
    """One decoded sequence as upstream records it."""

    tokens: list[int]  # the words, ending with 0 when the caption ended (beams may hold a 0 inside)
    score: float  # beam search: upstream's score (adjusted log-probabilities, length penalty applied)
    raw_logprobs: list[float]  # the model's own log-probability of each token (temperature 1, unmodified)


def search(model: StepModel, fc: np.ndarray, options: DecodingOptions, context: SearchContext,
           rng: np.random.Generator, start: tuple[F32, State] | None = None) -> list[Hypothesis]:
    """Decode on ``options.path``; ``start`` reuses a ``model.start(fc)`` already run.

    Beam search: every group's finished captions, best first within a group (upstream's order).
    Diverse sampling: one caption per group, in group order. Greedy/sampling: ``nbest`` captions, in row order.
    """
    first = start if start is not None else model.start(fc)
    filters = logit_filters(options, context.unk_index, context.bad_endings)
    if options.path == "beam":
        return beam_search(model, first, options, context.max_length, filters)
    if options.path == "diverse":
        return diverse_sample(model, first, options, context.max_length, filters, rng)
    return sample(model, first, options, context.max_length, filters, rng)


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _take_state(state: State, rows: np.ndarray) -> State:
    return state[0][rows], state[1][rows]


def _gumbel_argmax(logits: F32, rng: np.random.Generator) -> I64:
    """One draw per row from Categorical(logits): argmax of logits + Gumbel noise."""
    noise = rng.gumbel(size=logits.shape)
    with np.errstate(invalid="ignore"):
        picked: I64 = np.argmax(logits.astype(np.float64) + noise, axis=1).astype(np.int64)
    return picked


def next_words(logprobs: F32, method: SampleMethod, temperature: float, rng: np.random.Generator) -> I64:
    """Upstream's ``sample_next_word``: argmax, or a draw after temperature and top-k / top-p filtering."""
    if method.greedy:
        best: I64 = np.argmax(logprobs, axis=1).astype(np.int64)
        return best
    scaled = (logprobs / np.float32(temperature)).astype(np.float32)
    if method.kind == "top_k":
        scaled = _top_k(scaled, method.k)
    elif method.kind == "top_p":
        scaled = _top_p(scaled, method.p)
    return _gumbel_argmax(scaled, rng)


def _top_k(scaled: F32, k: int) -> F32:
    """-inf everywhere but each row's k largest values."""
    k = min(k, scaled.shape[1])
    kept = np.full_like(scaled, -np.inf)
    top = np.argpartition(-scaled, k - 1, axis=1)[:, :k]
    rows = np.arange(scaled.shape[0])[:, None]
    kept[rows, top] = scaled[rows, top]
    return kept


def _top_p(scaled: F32, p: float) -> F32:
    """Log-probabilities renormalised over the smallest set of likeliest words whose mass reaches p."""
    probs = np.exp(log_softmax(scaled))
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    below = np.cumsum(sorted_probs, axis=1) < np.float32(p)
    # Keep every word whose predecessors' mass is still short of p: the smallest set reaching p.
    keep = np.concatenate([np.ones_like(below[:, :1]), below[:, :-1]], axis=1)
    sorted_probs = sorted_probs * keep
    sorted_probs = sorted_probs / sorted_probs.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        filtered = np.log(sorted_probs).astype(np.float32)
    out = np.empty_like(scaled)
    np.put_along_axis(out, order, filtered, axis=1)
    return out


def _finished_tokens(row: I64) -> list[int]:
    """Tokens up to and including the first 0, or all of them."""
    ends = np.flatnonzero(row == EOS)
    return [int(x) for x in (row[: ends[0] + 1] if len(ends) else row)]


def _scored(row: I64, raw_row: F32, penalty: LengthPenalty) -> Hypothesis:
    """A greedy or sampled caption, scored by the model's own log-probabilities and the length penalty."""
    tokens = _finished_tokens(row)
    raw = [float(x) for x in raw_row[: len(tokens)]]
    total = float(np.sum(raw_row[: len(tokens)], dtype=np.float32))
    return Hypothesis(tokens, penalty(len(tokens), total), raw)


# ---------------------------------------------------------------------------------------------
# Greedy and sampling (upstream AttModel._sample)
# ---------------------------------------------------------------------------------------------


def sample(model: StepModel, start: tuple[F32, State], options: DecodingOptions, length: int,
           filters: Sequence[LogitFilter], rng: np.random.Generator) -> list[Hypothesis]:
    rows = options.nbest or 1  # upstream's sample_n: one row per caption asked for
    logprobs, state = start
    logprobs = np.repeat(logprobs, rows, axis=0)
    state = (np.repeat(state[0], rows, axis=0), np.repeat(state[1], rows, axis=0))
    seq = np.zeros((rows, length), dtype=np.int64)
    raw = np.zeros((rows, length), dtype=np.float32)
    unfinished = np.ones(rows, dtype=bool)
    everyone = np.arange(rows)
    for t in range(length):
        if t > 0:
            logprobs, state = model.step(seq[:, t - 1], state)
        adjusted = apply_filters(filters, logprobs, Step(t, seq))
        words = next_words(adjusted, options.sample_method, options.temperature, rng)
        raw[:, t] = logprobs[everyone, words]
        if t > 0:
            words[~unfinished] = EOS
        unfinished &= words != EOS
        seq[:, t] = words
        if not unfinished.any():
            break
    return [_scored(seq[r], raw[r], options.length_penalty) for r in range(rows)]


# ---------------------------------------------------------------------------------------------
# Diverse sampling (upstream AttModel._diverse_sample)
# ---------------------------------------------------------------------------------------------


def diverse_sample(model: StepModel, start: tuple[F32, State], options: DecodingOptions, length: int,
                   filters: Sequence[LogitFilter], rng: np.random.Generator) -> list[Hypothesis]:
    groups = options.group_size
    seqs = np.zeros((groups, length), dtype=np.int64)
    raw = np.zeros((groups, length), dtype=np.float32)
    states: list[State] = [start[1]] * groups
    for tt in range(length + groups):
        for g in range(groups):
            t = tt - g
            if not 0 <= t <= length - 1:
                continue
            if t == 0:
                model_lp = start[0]  # every group starts from the image and BOS
            else:
                model_lp, states[g] = model.step(seqs[g, t - 1 : t], states[g])
            earlier = tuple(seqs[e, t : t + 1] for e in range(g))
            logprobs = apply_filters(filters, model_lp, Step(t, seqs[g : g + 1], earlier))
            word = int(next_words(logprobs, options.sample_method, 1.0, rng)[0])  # temperature: a filter here
            raw[g, t] = model_lp[0, word]
            if t > 0 and seqs[g, t - 1] == EOS:
                word = EOS  # finished (or padding): stays padding
            seqs[g, t] = word
    return [_scored(seqs[g], raw[g], options.length_penalty) for g in range(groups)]


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
    model_lp: F32  # (beams, V+1) the model's own distribution for the next word
    done: list[Hypothesis]


def beam_search(model: StepModel, start: tuple[F32, State], options: DecodingOptions, length: int,
                filters: Sequence[LogitFilter]) -> list[Hypothesis]:
    groups = options.group_size
    width = options.beam_size // groups  # beams per group
    n_tokens = model.n_tokens
    table = [
        _Group(
            seq=np.zeros((1, 0), dtype=np.int64),
            raw=np.zeros((1, 0), dtype=np.float32),
            sums=np.zeros(1, dtype=np.float32),
            state=start[1],
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
            earlier = tuple(table[e].seq[:, local] for e in range(d))
            logprobs = apply_filters(filters, grp.model_lp, Step(local, grp.seq, earlier))
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
                    score=options.length_penalty(local + 1, float(grp.sums[v])),
                    raw_logprobs=[float(x) for x in grp.raw[v]],
                ))
            grp.sums[ended] -= FINISHED_PENALTY
            if local == length - 1:
                continue  # this group is complete
            if groups == 1 and _settled(grp, width, local, length, options.length_penalty):
                settled = True  # only with one group: later groups would need this one's words
                break
            grp.model_lp, grp.state = model.step(grp.seq[:, local], grp.state)
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
