"""Command-line flags for the decoding options (docs/decoding.md), shared by -i and -v."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import TypeVar

from utils.cli.arg_types import number, positive_int, positive_number
from utils.decoding.options import DEFAULT_BEAM_SIZE, DecodingOptions, LengthPenalty, SampleMethod

T = TypeVar("T")

# Each flag's default is its field's, so the two cannot disagree.
_DEFAULTS = DecodingOptions()


def _parsed_by(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type: the option's own parser, its ValueError as a one-line usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per DecodingOptions field, its dest the field's name (``options`` relies on it)."""
    g = p.add_argument_group("decoding (upstream's evaluation options; see docs/decoding.md)")
    g.add_argument("--beam-size", type=positive_int, default=_DEFAULTS.beam_size, metavar="N",
                   help=f"beam search width; 1 is greedy decoding, exactly the published graph's output "
                        f"(default {DEFAULT_BEAM_SIZE}, as upstream's published scores)")
    g.add_argument("--nbest", type=positive_int, default=_DEFAULTS.nbest, metavar="K",
                   help="also give the K best captions with their scores (JSON: an 'nbest' list); "
                        "at most the beam size with beam search")
    g.add_argument("--length-penalty", type=_parsed_by(LengthPenalty.parse), default=_DEFAULTS.length_penalty,
                   metavar="wu_A|avg_A",
                   help="beam search ranking: wu_A divides a caption's log-probability by ((5+len)/6)^A, "
                        "avg_A by its length (default: none)")
    g.add_argument("--max-length", type=positive_int, default=_DEFAULTS.max_length, metavar="N",
                   help="most words in a caption (default: the decoder's step count, 20)")
    g.add_argument("--suppress-unk", dest="suppress_unk", action="store_true", default=_DEFAULTS.suppress_unk,
                   help="beam search never picks the UNK word: its log-probability is lowered by 1000 "
                        "(default on, as upstream; greedy decoding and sampling ignore it, as upstream)")
    g.add_argument("--no-suppress-unk", dest="suppress_unk", action="store_false",
                   help="let beam search pick UNK")
    g.add_argument("--decoding-constraint", action="store_true",
                   help="never emit the same word twice in a row")
    g.add_argument("--remove-bad-endings", action="store_true",
                   help="never end a caption right after 'a', 'the', 'with', ... while decoding, and drop "
                        "trailing such words from the caption, as upstream does")
    g.add_argument("--block-trigrams", action="store_true",
                   help="greedy decoding and sampling: lower a word that would repeat a trigram "
                        "(beam search ignores it, as upstream)")
    g.add_argument("--group-size", type=positive_int, default=_DEFAULTS.group_size, metavar="G",
                   help="diverse beam search: split the beams into G groups (beam size // G beams each); "
                        "with --beam-size 1 or sampling, G diverse captions (default 1)")
    g.add_argument("--diversity-lambda", type=number, default=_DEFAULTS.diversity_lambda, metavar="L",
                   help="diverse decoding: penalty for each earlier group's use of a word at the same "
                        "step (default 0.5)")
    g.add_argument("--sample-method", type=_parsed_by(SampleMethod.parse), default=_DEFAULTS.sample_method,
                   metavar="METHOD",
                   help="greedy (default), sample, topK (keep the K likeliest words, e.g. top5) or topP "
                        "(nucleus, e.g. top0.9); anything but greedy samples and ignores --beam-size")
    g.add_argument("--temperature", type=positive_number, default=_DEFAULTS.temperature, metavar="T",
                   help="sampling temperature (default 1); beam search also applies it after the first "
                        "word, as upstream")
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed, metavar="N",
                   help="random seed for sampling: the same seed gives the same captions "
                        "(default: a new one each run)")


def options(args: argparse.Namespace) -> DecodingOptions:
    """DecodingOptions from parsed flags, field by field; ValueError for a combination that does not work."""
    return DecodingOptions(**{f.name: getattr(args, f.name) for f in fields(DecodingOptions)})


def usage_error(args: argparse.Namespace) -> str | None:
    """Why the decoding flags do not go together, or None."""
    try:
        options(args)
    except ValueError as exc:
        return str(exc)
    return None
