"""Command-line flags for the decoding options (README, "Decoding options"), shared by -i and -v."""

from __future__ import annotations

import argparse

from utils.arg_types import number, positive_int, positive_number
from utils.decoding.options import DEFAULT_BEAM_SIZE, DecodingOptions
from utils.decoding.search import parse_length_penalty, parse_sample_method


def _length_penalty(text: str) -> str:
    try:
        return str(parse_length_penalty(text)).replace("none", "")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sample_method(text: str) -> str:
    try:
        return str(parse_sample_method(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (upstream's evaluation options; see README, Decoding options)")
    g.add_argument("--beam-size", type=positive_int, default=DEFAULT_BEAM_SIZE, metavar="N",
                   help=f"beam search width; 1 is greedy decoding, exactly the published graph's output "
                        f"(default {DEFAULT_BEAM_SIZE}, as upstream's published scores)")
    g.add_argument("--nbest", type=positive_int, default=None, metavar="K",
                   help="also give the K best captions with their scores (JSON: an 'nbest' list); "
                        "at most the beam size with beam search")
    g.add_argument("--length-penalty", type=_length_penalty, default="", metavar="wu_A|avg_A",
                   help="beam search ranking: wu_A divides a caption's log-probability by ((5+len)/6)^A, "
                        "avg_A by its length (default: none)")
    g.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                   help="most words in a caption (default: the decoder's step count, 20)")
    g.add_argument("--suppress-unk", dest="suppress_unk", action="store_true", default=True,
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
    g.add_argument("--group-size", type=positive_int, default=1, metavar="G",
                   help="diverse beam search: split the beams into G groups (beam size // G beams each); "
                        "with --beam-size 1 or sampling, G diverse captions (default 1)")
    g.add_argument("--diversity-lambda", type=number, default=0.5, metavar="L",
                   help="diverse decoding: penalty for each earlier group's use of a word at the same "
                        "step (default 0.5)")
    g.add_argument("--sample-method", type=_sample_method, default="greedy", metavar="METHOD",
                   help="greedy (default), sample, topK (keep the K likeliest words, e.g. top5) or topP "
                        "(nucleus, e.g. top0.9); anything but greedy samples and ignores --beam-size")
    g.add_argument("--temperature", type=positive_number, default=1.0, metavar="T",
                   help="sampling temperature (default 1); beam search also applies it after the first "
                        "word, as upstream")
    g.add_argument("--seed", type=int, default=None, metavar="N",
                   help="random seed for sampling: the same seed gives the same captions "
                        "(default: a new one each run)")


def decoding_options(args: argparse.Namespace) -> DecodingOptions:
    """DecodingOptions from parsed flags; ValueError for a combination that does not work."""
    return DecodingOptions(
        remove_bad_endings=args.remove_bad_endings,
        beam_size=args.beam_size,
        nbest=args.nbest,
        length_penalty=args.length_penalty,
        max_length=args.max_length,
        suppress_unk=args.suppress_unk,
        decoding_constraint=args.decoding_constraint,
        block_trigrams=args.block_trigrams,
        group_size=args.group_size,
        diversity_lambda=args.diversity_lambda,
        sample_method=args.sample_method,
        temperature=args.temperature,
        seed=args.seed,
    )


def decoding_usage_error(args: argparse.Namespace) -> str | None:
    """Why the decoding flags do not go together, or None."""
    try:
        decoding_options(args)
    except ValueError as exc:
        return str(exc)
    return None
