"""Upstream's per-step rules on the next word's log-probabilities, as small filter objects.

Each rule is a ``LogitFilter`` with one ``apply`` method (the idea of openai/whisper's LogitFilter).
``logit_filters`` builds, once per decode, the filters the options ask for on their search path, in
the order upstream applies them there (docs/models.md §6). Upstream's three paths do not share one
order, and the order matters: these are float32 operations, and another order rounds differently.

- beam search (``CaptionModel.beam_search``): the temperature from the second word on (upstream takes
  ``log_softmax(logprobs / T)`` of the next step's output), decoding constraint, bad endings,
  UNK suppression, then the groups' Hamming diversity;
- diverse sampling (``_diverse_sample``): the temperature from the first word on, diversity, decoding
  constraint, bad endings, trigram blocking;
- greedy decoding and sampling (``_sample``): decoding constraint, bad endings, trigram blocking; the
  temperature comes after, in the sampler (``search.next_words``), together with top-k / top-p.

So UNK suppression acts only in beam search and trigram blocking only outside it, as upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from utils.decoding.options import DecodingOptions
from utils.engine.arrays import F32, I64

EOS = 0  # index 0 is BOS, EOS and padding at once (docs/models.md §4)
UNK_WORD = "UNK"
UNK_PENALTY = np.float32(1000.0)  # subtracted from UNK's log-probability in beam search
# Trigram blocking: upstream adds count x (-0.693 x 2.0), i.e. about 2 ln(1/2) per earlier use.
TRIGRAM_PENALTY = np.float32(-0.693)
TRIGRAM_ALPHA = np.float32(2.0)
# Words after which decoding may not end (the model's list, used while decoding; the caption
# post-processing list in vocab.BAD_ENDINGS is a different one, as upstream has two).
DECODING_BAD_ENDINGS = frozenset(
    ["a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon", "near", "to", "is", "are",
     "am"]
)


@dataclass(frozen=True)
class Step:
    """What the filters see of the decoding so far, for the rows choosing their word at position ``t``."""

    t: int  # position of the word being chosen (within its group, for diverse decoding)
    seq: I64  # (rows, >= t) the rows' words; only seq[:, :t] is decoded yet
    earlier: tuple[I64, ...] = ()  # diverse decoding: the words each earlier group chose at position t


class LogitFilter(Protocol):
    def apply(self, logprobs: F32, step: Step) -> F32:
        """The adjusted (rows, V+1) log-probabilities: ``logprobs`` changed in place, or a new array."""
        ...


def apply_filters(filters: Sequence[LogitFilter], logprobs: F32, step: Step) -> F32:
    """``filters`` in order on a copy of ``logprobs`` (the model's own values are kept for the scores)."""
    adjusted = logprobs.copy()
    for f in filters:
        adjusted = f.apply(adjusted, step)
    return adjusted


def log_softmax(z: F32) -> F32:
    shifted = z - z.max(axis=-1, keepdims=True)
    out: F32 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Temperature:
    """log_softmax(logprobs / T), from position ``first`` on; applied at T = 1 too, as upstream does."""

    temperature: float
    first: int  # beam search: 1 (its first step has no temperature); diverse sampling: 0

    def apply(self, logprobs: F32, step: Step) -> F32:
        if step.t < self.first:
            return logprobs
        return log_softmax((logprobs / np.float32(self.temperature)).astype(np.float32))


@dataclass(frozen=True)
class DecodingConstraint:
    """decoding_constraint: the word just emitted may not come again."""

    def apply(self, logprobs: F32, step: Step) -> F32:
        if step.t > 0:
            logprobs[np.arange(len(logprobs)), step.seq[:, step.t - 1]] = -np.inf
        return logprobs


@dataclass(frozen=True)
class BadEndings:
    """remove_bad_endings: no EOS right after a word of DECODING_BAD_ENDINGS."""

    indices: tuple[int, ...]

    def apply(self, logprobs: F32, step: Step) -> F32:
        if step.t > 0:
            logprobs[np.isin(step.seq[:, step.t - 1], self.indices), EOS] = -np.inf
        return logprobs


@dataclass(frozen=True)
class SuppressUnk:
    """suppress_UNK: UNK's log-probability lowered by 1000, so beam search never picks it."""

    index: int

    def apply(self, logprobs: F32, step: Step) -> F32:
        logprobs[:, self.index] -= UNK_PENALTY
        return logprobs


@dataclass(frozen=True)
class BeamDiversity:
    """Diverse beam search: a word costs lambda for each beam of an earlier group that chose it at ``t``.

    Upstream's ``add_diversity``: the uses are counted first, then subtracted once as count x lambda."""

    diversity_lambda: float

    def apply(self, logprobs: F32, step: Step) -> F32:
        if not step.earlier:
            return logprobs
        change = np.zeros(logprobs.shape[-1], dtype=np.float32)
        for words in step.earlier:
            np.add.at(change, words, np.float32(1.0))
        out: F32 = logprobs - change * np.float32(self.diversity_lambda)
        return out


@dataclass(frozen=True)
class SampleDiversity:
    """Diverse sampling: a word costs lambda for each earlier group that chose it at ``t``.

    Upstream's ``_diverse_sample`` subtracts lambda once per earlier group, group after group (which rounds
    differently from beam search's count x lambda)."""

    diversity_lambda: float

    def apply(self, logprobs: F32, step: Step) -> F32:
        rows = np.arange(len(logprobs))
        for words in step.earlier:
            logprobs[rows, words] -= np.float32(self.diversity_lambda)
        return logprobs


@dataclass(frozen=True)
class BlockTrigrams:
    """block_trigrams: each earlier use of a trigram lowers its third word after the same two words.

    Upstream remembers every trigram as it is completed; the same list is read here from the row's own
    words, so a filter holds no state between steps."""

    def apply(self, logprobs: F32, step: Step) -> F32:
        t = step.t
        if t < 3:
            return logprobs
        for r, row in enumerate(step.seq[:, :t].tolist()):
            last = (row[t - 2], row[t - 1])
            continuations = [row[i + 2] for i in range(t - 2) if (row[i], row[i + 1]) == last]
            if continuations:
                counts = np.zeros(logprobs.shape[-1], dtype=np.float32)
                np.add.at(counts, continuations, np.float32(1.0))
                logprobs[r] += (counts * TRIGRAM_PENALTY) * TRIGRAM_ALPHA
        return logprobs


def vocabulary_indices(words: Sequence[str]) -> tuple[int | None, tuple[int, ...]]:
    """(UNK index or None, indices of the decoding bad endings) for words[i - 1] = word of index i."""
    unk = len(words) if words and words[-1] == UNK_WORD else None
    bad = tuple(i for i, w in enumerate(words, start=1) if w in DECODING_BAD_ENDINGS)
    return unk, bad


def logit_filters(options: DecodingOptions, unk_index: int | None,
                  bad_endings: tuple[int, ...]) -> tuple[LogitFilter, ...]:
    """The filters ``options`` ask for on their search path, in upstream's order there (module docstring)."""
    constraint: list[LogitFilter] = [DecodingConstraint()] if options.decoding_constraint else []
    endings: list[LogitFilter] = [BadEndings(bad_endings)] if options.remove_bad_endings and bad_endings else []
    if options.path == "beam":
        unk: list[LogitFilter] = [SuppressUnk(unk_index)] if options.suppress_unk and unk_index is not None else []
        diversity: list[LogitFilter] = [BeamDiversity(options.diversity_lambda)] if options.group_size > 1 else []
        return (Temperature(options.temperature, first=1), *constraint, *endings, *unk, *diversity)
    trigrams: list[LogitFilter] = [BlockTrigrams()] if options.block_trigrams else []
    if options.path == "diverse":
        return (Temperature(options.temperature, first=0), SampleDiversity(options.diversity_lambda),
                *constraint, *endings, *trigrams)
    return (*constraint, *endings, *trigrams)
