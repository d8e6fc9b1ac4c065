"""The vocabulary: index -> word, and turning a decoder's index row into a caption (docs/models.md §7)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.support.errors import CaptionError

# Words upstream strips from the end of a caption when bad endings are removed, in its order.
BAD_ENDINGS = ("with", "in", "on", "of", "a", "at", "to", "for", "an", "this", "his", "her", "that", "the")


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # words[i - 1] is index i; index 0 is BOS/EOS/padding

    def __len__(self) -> int:
        return len(self.words)

    def word(self, index: int) -> str:
        if not 1 <= index <= len(self.words):
            raise CaptionError(
                f"the decoder emitted word index {index}, outside the vocabulary's 1..{len(self.words)}; "
                "the vocabulary does not belong to this model"
            )
        return self.words[index - 1]

    def caption(self, indices: Sequence[int], remove_bad_endings: bool = False) -> str:
        """Words up to the first 0, joined; sub-word joins ("@@ ") closed as upstream does."""
        words = [self.word(int(i)) for i in caption_indices(indices)]
        if remove_bad_endings:
            words = strip_bad_endings(words)
        return " ".join(words).replace("@@ ", "")


def caption_indices(indices: Sequence[int]) -> list[int]:
    """The emitted words of a row: everything before the first 0 (EOS)."""
    out: list[int] = []
    for i in indices:
        if int(i) == 0:
            break
        out.append(int(i))
    return out


def strip_bad_endings(words: list[str]) -> list[str]:
    """Drop trailing bad-ending words; like upstream, a caption made only of them is kept whole."""
    for keep in range(len(words), 0, -1):
        if words[keep - 1] not in BAD_ENDINGS:
            return words[:keep]
    return words


def parse_vocabulary(data: object) -> Vocabulary:
    """Validate the published layout: a JSON object with keys "1".."N" and string words.

    Messages give only the reason; callers name the file."""
    if not isinstance(data, dict) or not data:
        raise CaptionError("not a JSON vocabulary (expected a non-empty object of index -> word)")
    n = len(data)
    expected = {str(i) for i in range(1, n + 1)}
    if data.keys() != expected:
        missing = sorted(expected - data.keys(), key=int)[:3]
        unexpected = sorted(data.keys() - expected)[:3]
        raise CaptionError(
            f'vocabulary keys must be exactly "1".."{n}": missing {_quoted(missing)}, unexpected {_quoted(unexpected)}'
        )
    words = tuple(data[str(i)] for i in range(1, n + 1))
    bad = next((str(i) for i, w in enumerate(words, start=1) if not isinstance(w, str)), None)
    if bad is not None:
        raise CaptionError(f"vocabulary entry {bad!r} is not a string")
    return Vocabulary(words)


def _quoted(keys: list[str]) -> str:
    return ", ".join(json.dumps(key) for key in keys) or "none"


def vocabulary_from_bytes(content: bytes) -> Vocabulary:
    """A vocabulary file's content, validated; CaptionError with the reason (callers name the file)."""
    try:
        data = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionError(f"not a JSON vocabulary ({str(exc).splitlines()[0]})") from exc
    return parse_vocabulary(data)


def load_vocabulary(path: Path) -> Vocabulary:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise CaptionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return vocabulary_from_bytes(content)
