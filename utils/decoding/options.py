"""DecodingOptions: upstream's evaluation options, checked once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.decoding.search import parse_length_penalty, parse_sample_method

# Beam 5: the setting of upstream's published scores (docs/models.md §8); it costs a few per cent of the
# feature model's time (README, "Decoding options").
DEFAULT_BEAM_SIZE = 5


@dataclass(frozen=True)
class DecodingOptions:
    """Upstream's evaluation options (docs/models.md §6); see README, "Decoding options".

    Invalid values raise ValueError."""

    remove_bad_endings: bool = False  # no EOS right after a bad-ending word; strip trailing ones from the caption
    beam_size: int = DEFAULT_BEAM_SIZE  # 1: greedy (with the other defaults, exactly the graph's own output)
    nbest: int | None = None  # also return the best K captions with their scores
    length_penalty: str = ""  # "" (none), "wu_A" or "avg_A"
    max_length: int | None = None  # most words; None: the decoder graph's step count
    suppress_unk: bool = True  # beam search: UNK's log-probability lowered by 1000
    decoding_constraint: bool = False  # never the same word twice in a row
    block_trigrams: bool = False  # greedy/sampling: a repeated trigram's word lowered by 2 x 0.693 per use
    group_size: int = 1  # diverse beam search (or diverse sampling with beam size 1): number of groups
    diversity_lambda: float = 0.5  # diverse decoding: penalty per earlier group's use of a word
    sample_method: str = "greedy"  # greedy, sample, topK (e.g. top5) or topP (e.g. top0.9)
    temperature: float = 1.0  # sampling (and beam search after the first word, as upstream)
    seed: int | None = None  # sampling: the same seed gives the same caption

    def __post_init__(self) -> None:
        for name in ("beam_size", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("nbest", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not (0 < self.temperature < float("inf")):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not np.isfinite(self.diversity_lambda):
            raise ValueError(f"diversity_lambda must be a number, got {self.diversity_lambda}")
        parse_length_penalty(self.length_penalty)
        method = parse_sample_method(self.sample_method)
        beam = self.beam_size > 1 and method.kind == "greedy"
        if beam and self.group_size > self.beam_size:
            raise ValueError(
                f"group size {self.group_size} needs a beam size of at least {self.group_size} "
                "(each group gets beam size // group size beams)"
            )
        limit = self.captions_available
        if self.nbest is not None and limit is not None and self.nbest > limit:
            raise ValueError(f"{self.nbest} best captions asked for, but {self.method_description} gives {limit}")

    @property
    def captions_available(self) -> int | None:
        """How many captions the chosen method yields (None: as many as asked, by drawing more samples)."""
        method = parse_sample_method(self.sample_method)
        if self.beam_size > 1 and method.kind == "greedy":
            return (self.beam_size // self.group_size) * self.group_size
        if self.group_size > 1:
            return self.group_size
        return 1 if method.kind == "greedy" else None

    @property
    def method_description(self) -> str:
        method = parse_sample_method(self.sample_method)
        if self.beam_size > 1 and method.kind == "greedy":
            kind = "diverse beam search" if self.group_size > 1 else "beam search"
            return f"{kind} with beam size {self.beam_size}" + (
                f" in {self.group_size} groups" if self.group_size > 1 else "")
        if self.group_size > 1:
            return f"diverse {method} decoding in {self.group_size} groups"
        return "greedy decoding" if method.kind == "greedy" else f"{method} sampling"
