"""DecodingOptions: upstream's evaluation options (docs/models.md §6), parsed and checked once.

Option strings (``--sample-method top5``, ``--length-penalty wu_0.5``) are parsed by ``SampleMethod.parse``
and ``LengthPenalty.parse`` where they come in (utils/cli/decoding.py); everything after that holds the
typed values. Which of upstream's three search paths the options take is answered by one property,
``DecodingOptions.path``; everything else that depends on the path derives from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Beam 5: the setting of upstream's published scores (docs/models.md §8); it costs a few per cent of the
# feature model's time (docs/decoding.md).
DEFAULT_BEAM_SIZE = 5

SearchPath = Literal["beam", "diverse", "sample"]

# Limits that keep memory and time bounded whatever the options (docs/limits.md). Each is far beyond
# what upstream's evaluation uses (beam 1-10, 16-20 words, A <= 1, T around 1); past them the arithmetic
# overflows (a length penalty's power, a temperature's division) or the work grows without bound.
MAX_BEAM_SIZE = 1000  # also the most captions (--nbest): a step over 1000 rows takes ~5 GFLOP, ~200 MB
MAX_GROUPS = 100  # groups are decoded one after another: time grows with groups x (length + groups)
MAX_LENGTH = 100  # words
MAX_PENALTY_ALPHA = 10.0  # |A| of wu_A / avg_A
TEMPERATURE_RANGE = (1e-6, 1e6)  # log-probabilities / T stay finite in float32
MAX_DIVERSITY_LAMBDA = 1000.0  # |lambda|
MAX_SEED = 2**63 - 1

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class LengthPenalty:
    """Upstream's ``penalty_builder``: none, ``wu_A`` or ``avg_A``; called on (length, log-probability)."""

    kind: Literal["", "wu", "avg"] = ""  # "": no penalty
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("", "wu", "avg"):
            raise ValueError(f"length penalty kind {self.kind!r} is not '', 'wu' or 'avg'")
        if not abs(self.alpha) <= MAX_PENALTY_ALPHA:  # also refuses nan
            raise ValueError(f"length penalty {self.kind}_{self.alpha:g}: A must be between "
                             f"-{MAX_PENALTY_ALPHA:g} and {MAX_PENALTY_ALPHA:g}")

    @classmethod
    def parse(cls, text: str) -> LengthPenalty:
        """``wu_A`` or ``avg_A`` (A a number); "" or "none" for no penalty. Raises ValueError."""
        if text.strip().lower() in ("", "none"):
            return cls()
        match = re.fullmatch(rf"(wu|avg)_({_NUMBER})", text.strip())
        if not match:
            raise ValueError(f"length penalty {text!r} is not wu_A or avg_A (A a number, e.g. wu_0.5, avg_1)")
        return cls("wu" if match.group(1) == "wu" else "avg", float(match.group(2)))

    def __call__(self, length: int, logprob: float) -> float:
        # Python floats, as upstream computes the penalty outside its tensors.
        if self.kind == "wu":
            return logprob / self._wu(length)
        if self.kind == "avg":
            return logprob / length
        return logprob

    def largest_divisor(self, lengths: range) -> float:
        """The largest number a score is divided by over ``lengths`` (1.0 without a penalty)."""
        if self.kind == "wu":
            return max(self._wu(n) for n in lengths)
        if self.kind == "avg":
            return float(max(lengths))
        return 1.0

    def _wu(self, length: int) -> float:
        return ((5 + length) ** self.alpha) / ((5 + 1) ** self.alpha)


@dataclass(frozen=True)
class SampleMethod:
    """``greedy``, ``sample``, ``topK`` (K an integer >= 1) or ``topP`` (0 < P < 1)."""

    kind: Literal["greedy", "sample", "top_k", "top_p"] = "greedy"
    k: int = 0  # top_k only
    p: float = 0.0  # top_p only

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "sample", "top_k", "top_p"):
            raise ValueError(f"sample method kind {self.kind!r} is not greedy, sample, top_k or top_p")
        if self.kind == "top_k" and self.k < 1:
            raise ValueError(f"top-k sampling needs k >= 1, got {self.k}")
        if self.kind == "top_p" and not 0.0 < self.p < 1.0:
            raise ValueError(f"top-p sampling needs 0 < p < 1, got {self.p}")

    @classmethod
    def parse(cls, text: str) -> SampleMethod:
        """Raises ValueError for anything but greedy, sample, topK or topP."""
        value = text.strip()
        if value == "greedy":
            return cls("greedy")
        if value == "sample":
            return cls("sample")
        match = re.fullmatch(r"top(\d+|\d*\.\d+)", value)
        if match:
            number = float(match.group(1))
            if 0.0 < number < 1.0:
                return cls("top_p", p=number)
            if number >= 1.0 and number == int(number):
                return cls("top_k", k=int(number))
        raise ValueError(
            f"sample method {text!r} is not greedy, sample, topK (an integer K >= 1, e.g. top5) "
            "or topP (0 < P < 1, e.g. top0.9)"
        )

    @property
    def greedy(self) -> bool:
        return self.kind == "greedy"

    def __str__(self) -> str:
        if self.kind == "top_k":
            return f"top{self.k}"
        if self.kind == "top_p":
            return f"top{self.p:g}"
        return self.kind


@dataclass(frozen=True)
class DecodingOptions:
    """Upstream's evaluation options (docs/models.md §6); see docs/decoding.md.

    One field per decoding flag (utils/cli/decoding.py builds this from the flags field by field).
    Invalid values raise ValueError."""

    remove_bad_endings: bool = False  # no EOS right after a bad-ending word; strip trailing ones from the caption
    beam_size: int = DEFAULT_BEAM_SIZE  # 1: greedy (with the other defaults, exactly the graph's own output)
    nbest: int | None = None  # also return the best K captions with their scores
    length_penalty: LengthPenalty = LengthPenalty()  # how beam search ranks finished captions
    max_length: int | None = None  # most words; None: the decoder graph's step count
    suppress_unk: bool = True  # beam search: UNK's log-probability lowered by 1000
    decoding_constraint: bool = False  # never the same word twice in a row
    block_trigrams: bool = False  # greedy/sampling: a repeated trigram's word lowered by 2 x 0.693 per use
    group_size: int = 1  # diverse beam search (or diverse sampling with beam size 1): number of groups
    diversity_lambda: float = 0.5  # diverse decoding: penalty per earlier group's use of a word
    sample_method: SampleMethod = SampleMethod()  # greedy, sample, top-k or top-p
    temperature: float = 1.0  # sampling (and beam search after the first word, as upstream)
    seed: int | None = None  # sampling: the same seed gives the same caption

    def __post_init__(self) -> None:
        # Typed values only: a string here would otherwise fail deep inside a search.
        for name, kind in (("length_penalty", LengthPenalty), ("sample_method", SampleMethod)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__} (use {kind.__name__}.parse), "
                                f"got {getattr(self, name)!r}")
        for name, most in (("beam_size", MAX_BEAM_SIZE), ("group_size", MAX_GROUPS),
                           ("nbest", MAX_BEAM_SIZE), ("max_length", MAX_LENGTH)):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= most:
                raise ValueError(f"{name.replace('_', ' ')} must be between 1 and {most}, got {value}")
        low, high = TEMPERATURE_RANGE
        if not low <= self.temperature <= high:  # also refuses nan
            raise ValueError(f"temperature must be between {low:g} and {high:g}, got {self.temperature:g}")
        if not abs(self.diversity_lambda) <= MAX_DIVERSITY_LAMBDA:
            raise ValueError(f"diversity lambda must be between -{MAX_DIVERSITY_LAMBDA:g} and "
                             f"{MAX_DIVERSITY_LAMBDA:g}, got {self.diversity_lambda:g}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.path == "beam" and self.group_size > self.beam_size:
            raise ValueError(
                f"group size {self.group_size} needs a beam size of at least {self.group_size} "
                "(each group gets beam size // group size beams)"
            )
        limit = self.captions_available
        if self.nbest is not None and limit is not None and self.nbest > limit:
            raise ValueError(f"{self.nbest} best captions asked for, but {self.method_description} gives {limit}")

    @property
    def path(self) -> SearchPath:
        """Which of upstream's ``_sample`` paths decodes: "beam", "diverse" or "sample" (greedy or sampling).

        As upstream: beam search needs the greedy method (any other method ignores the beam size), and
        groups without beam search mean diverse sampling."""
        if self.beam_size > 1 and self.sample_method.greedy:
            return "beam"
        if self.group_size > 1:
            return "diverse"
        return "sample"

    @property
    def captions_available(self) -> int | None:
        """How many captions the chosen method yields (None: as many as asked, by drawing more samples)."""
        if self.path == "beam":
            return (self.beam_size // self.group_size) * self.group_size
        if self.path == "diverse":
            return self.group_size
        return 1 if self.sample_method.greedy else None

    @property
    def method_description(self) -> str:
        """The method in words, for messages ("beam search with beam size 5", "top5 sampling", ...)."""
        groups = f" in {self.group_size} groups" if self.group_size > 1 else ""
        if self.path == "beam":
            kind = "diverse beam search" if self.group_size > 1 else "beam search"
            return f"{kind} with beam size {self.beam_size}{groups}"
        if self.path == "diverse":
            return f"diverse {self.sample_method} decoding{groups}"
        return "greedy decoding" if self.sample_method.greedy else f"{self.sample_method} sampling"
