"""Captions paired with their references by file name, and what could not be paired."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from utils.evaluation.captions_files import Candidate
from utils.evaluation.files import file_name
from utils.evaluation.references import References
from utils.support.errors import CaptionError
from utils.support.text import shortened

NAMES_SHOWN = 5  # a warning names this many, then gives a count


@dataclass(frozen=True)
class Matching:
    pairs: dict[str, tuple[str, tuple[str, ...]]]  # file name -> (caption, its references), in caption order
    names: dict[str, str]  # file name -> the candidate's name (the input as given)
    without_references: list[str]  # candidates whose file name is not among the references
    without_caption: list[str]  # reference images that no caption was given for (failed inputs' included)
    failed: list[str]  # candidates that have no caption (failed inputs)


def check_distinct_names(names: Iterable[str]) -> None:
    """Refuse inputs that share a file name: references are found by file name, so they would share
    references and one of them would be scored twice. Call it before captioning, too."""
    seen: dict[str, str] = {}
    for name in names:
        key = file_name(name)
        if key in seen:
            raise CaptionError(f"the inputs {shortened(seen[key])} and {shortened(name)} are both named "
                               f"{shortened(key)}; "
                               "references are matched by file name, so each input needs a name of its own")
        seen[key] = name


def match(candidates: Sequence[Candidate], references: References) -> Matching:
    check_distinct_names(c.name for c in candidates if c.key is not None)
    pairs: dict[str, tuple[str, tuple[str, ...]]] = {}
    names: dict[str, str] = {}
    without_references: list[str] = []
    failed: list[str] = []
    for candidate in candidates:
        if candidate.caption is None:
            failed.append(candidate.name)
            continue
        image = None if candidate.key is None else references.images.get(candidate.key)
        if candidate.key is None or image is None:
            without_references.append(candidate.name)
            continue
        pairs[candidate.key] = (candidate.caption, image.captions)
        names[candidate.key] = candidate.name
    without_caption = [name for name in references.images if name not in pairs]
    return Matching(pairs, names, without_references, without_caption, failed)


def unmatched_warnings(matching: Matching, references: References) -> list[str]:
    """One line for the captions that have no references, one for the reference images that have no
    caption, one for the failed inputs: each naming the first few, then a count."""
    lines = []
    if matching.without_references:
        lines.append(f"{_count(matching.without_references, 'caption has', 'captions have')} no references in "
                     f"{references.source}, not scored: {_first_names(matching.without_references)}")
    if matching.without_caption:
        lines.append(f"{_count(matching.without_caption, 'image', 'images')} of {references.source} got no "
                     f"caption, not scored: {_first_names(matching.without_caption)}")
    if matching.failed:
        lines.append(f"{_count(matching.failed, 'input has', 'inputs have')} no caption (failed), not scored: "
                     f"{_first_names(matching.failed)}")
    return lines


def _count(names: list[str], one: str, many: str) -> str:
    return f"1 {one}" if len(names) == 1 else f"{len(names)} {many}"


def _first_names(names: list[str]) -> str:
    shown_names = ", ".join(shortened(name) for name in names[:NAMES_SHOWN])
    rest = len(names) - NAMES_SHOWN
    return shown_names if rest <= 0 else f"{shown_names} and {rest} more"
