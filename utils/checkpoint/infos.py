"""The ``infos_<id>.pkl`` file that upstream's training writes beside each checkpoint (docs/models.md §10)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoint import unpickler
from utils.checkpoint.torch_format import LEGACY_MAGIC, MAX_PICKLE_BYTES, ZIP_MAGIC
from utils.checkpoint.unpickler import shown
from utils.support.errors import CaptionError
from vocab import parse_vocabulary

logger = logging.getLogger(__name__)

# A hundred times the vocabularies upstream trains with (COCO's 9,487 words, Flickr30k's ~7,000): the
# decoder's embedding and output layers grow with it, and at 1 million words and upstream's 512-wide
# layers they alone are 4 GB of float32, the most a checkpoint may be (torch_format.MAX_FILE_BYTES).
MAX_VOCABULARY = 1_000_000
# The largest size (vocab_size, input_encoding_size, rnn_size, fc_feat_size) an infos file may give, so
# that sizes stay numbers a message can print: upstream's layers are 512 to 2048 wide, and an LSTM 32
# times wider than 512 already has more than 4 GB of weights.
MAX_SIZE = 1 << 20


@dataclass(frozen=True)
class Infos:
    """What the importer needs from an infos file; sizes are None where ``opt`` lacks them."""

    path: Path
    caption_model: str
    vocab_size: int
    words: tuple[str, ...]  # words[i - 1] is index i
    input_encoding_size: int | None
    rnn_size: int | None
    fc_feat_size: int | None
    num_layers: int | None
    logit_layers: int | None


def _swapped(path: Path) -> CaptionError:
    return CaptionError(f"{path} is a torch checkpoint, not an infos file: give MODEL.pth first, then INFOS.pkl")


def read_infos(path: Path) -> Infos:
    """Read and check ``path``; CaptionError (naming the file) when it is not an upstream infos file."""
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:  # an infos file is a few MB: its options, vocabulary and loader state
            raise CaptionError(f"{path} is {size} bytes, larger than any infos file ({MAX_PICKLE_BYTES >> 20} MB)")
        data = path.read_bytes()
    except OSError as error:
        raise CaptionError(f"cannot read {path}: {error.strerror or error}") from None
    if data.startswith(ZIP_MAGIC):
        raise _swapped(path)
    value, _ = unpickler.load(data, path)
    if isinstance(value, int) and value == LEGACY_MAGIC:
        raise _swapped(path)
    if not isinstance(value, dict) or "opt" not in value or "vocab" not in value:
        raise CaptionError(f"{path} is not an ImageCaptioning.pytorch infos file (no 'opt' and 'vocab' in it)")
    opt = _options(value["opt"], path)
    words = _words(value["vocab"], path)
    caption_model = opt.get("caption_model")
    if not isinstance(caption_model, str):
        raise CaptionError(f"{path}: opt has no caption_model")
    vocab_size = _size(opt, "vocab_size", path)
    if vocab_size is None:
        vocab_size = len(words)  # set while the model is built, so old files may lack it
    elif vocab_size != len(words):
        raise CaptionError(f"{path}: opt.vocab_size is {vocab_size} but its vocab has {len(words)} words")
    return Infos(
        path=path,
        caption_model=caption_model,
        vocab_size=vocab_size,
        words=words,
        input_encoding_size=_size(opt, "input_encoding_size", path),
        rnn_size=_size(opt, "rnn_size", path),
        fc_feat_size=_size(opt, "fc_feat_size", path),
        num_layers=_size(opt, "num_layers", path),
        logit_layers=_size(opt, "logit_layers", path),
    )


def _options(opt: Any, path: Path) -> dict[str, Any]:
    if isinstance(opt, argparse.Namespace):
        return vars(opt)
    if isinstance(opt, dict):  # some forks save the options as a plain dict
        return opt
    raise CaptionError(f"{path}: opt is a {type(opt).__name__}, not the training options (argparse.Namespace)")


def _size(opt: dict[str, Any], name: str, path: Path) -> int | None:
    value = opt.get(name)
    if value is None:
        return None
    # numpy integers arrive from some training scripts; bool is an int but never a size.
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise CaptionError(f"{path}: opt.{name} is {shown(value)}, not a whole number")
    number = int(value)
    if number < 0:
        raise CaptionError(f"{path}: opt.{name} is {number}")
    if number > MAX_SIZE:
        raise CaptionError(f"{path}: opt.{name} is {shown(number)}, more than any FC decoder has ({MAX_SIZE})")
    return number


def _words(vocab: Any, path: Path) -> tuple[str, ...]:
    """The index -> word map with keys exactly "1".."N" (docs/models.md §7), as a tuple."""
    if not isinstance(vocab, dict):
        raise CaptionError(f"{path}: vocab is a {type(vocab).__name__}, not an index -> word map")
    if len(vocab) > MAX_VOCABULARY:
        raise CaptionError(f"{path}: its vocab has {len(vocab)} words, more than any captioning model's "
                           f"(at most {MAX_VOCABULARY:,} are read)")
    odd = next((k for k in vocab if not _may_be_index(k)), None)
    if odd is not None:
        raise CaptionError(f"{path}: the vocab has a key {shown(odd)}, not an index from 1 to the vocabulary size")
    as_text = {str(k): v for k, v in vocab.items()}
    if len(as_text) != len(vocab):
        raise CaptionError(f"{path}: the vocab has the same index twice")
    try:
        return parse_vocabulary(as_text).words
    except CaptionError as error:
        raise CaptionError(f"{path}: {error}") from None


def _may_be_index(key: Any) -> bool:
    """Whether ``key`` can be a vocabulary index ("1".."N", or the number): checked before keys are turned
    into text, which for an arbitrary value from the file could be huge or never end."""
    if isinstance(key, str):
        return len(key) <= len(str(MAX_VOCABULARY))
    return not isinstance(key, bool) and hasattr(key, "__index__") and 0 <= int(key) <= MAX_VOCABULARY
