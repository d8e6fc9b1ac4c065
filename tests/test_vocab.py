"""Turning index rows into captions as upstream does (docs/models.md §7), and vocabulary validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from utils.decoding.graph import greedy_result, split_decoder_outputs
from utils.support.errors import CaptionError
from vocab import Vocabulary, load_vocabulary, parse_vocabulary, strip_bad_endings

VOCAB = Vocabulary(("a", "cat", "on", "the", "table", "sit@@", "ting", "UNK"))


def test_caption_stops_at_first_zero() -> None:
    assert VOCAB.caption([1, 2, 3, 4, 5, 0, 2, 2]) == "a cat on the table"
    assert VOCAB.caption([0, 2, 3]) == ""
    assert VOCAB.caption([2] * 20) == " ".join(["cat"] * 20)


def test_subword_joins_closed() -> None:
    assert VOCAB.caption([2, 6, 7, 3, 1, 5]) == "cat sitting on a table"


def test_bad_endings() -> None:
    assert VOCAB.caption([1, 2, 3, 4], remove_bad_endings=True) == "a cat"
    assert VOCAB.caption([1, 2, 3, 4]) == "a cat on the"
    assert VOCAB.caption([2, 5], remove_bad_endings=True) == "cat table"
    # Upstream keeps a caption made only of bad endings whole rather than emptying it.
    assert strip_bad_endings(["a", "the", "on"]) == ["a", "the", "on"]
    assert strip_bad_endings([]) == []


def test_index_outside_vocabulary() -> None:
    with pytest.raises(CaptionError, match="outside the vocabulary"):
        VOCAB.caption([1, 9])


def test_confidence_is_mean_logprob_of_emitted_words() -> None:
    logprobs = np.log(np.full((5, 9), 1 / 9, dtype=np.float32))
    logprobs[0, 2], logprobs[1, 5], logprobs[2, 0] = -0.5, -1.5, -0.1
    decoded = greedy_result(np.array([2, 5, 0, 0, 0]), logprobs)
    assert decoded.indices == [2, 5]
    assert decoded.confidence == pytest.approx(-1.0)
    assert greedy_result(np.zeros(5, np.int64), logprobs).confidence is None


def test_parse_vocabulary() -> None:
    assert parse_vocabulary({"1": "a", "2": "b"}).words == ("a", "b")
    bad: object
    for bad in ([], {}):
        with pytest.raises(CaptionError, match="not a JSON vocabulary"):
            parse_vocabulary(bad)
    for bad in ({"0": "a", "1": "b"}, {"1": "a", "3": "b"}):
        with pytest.raises(CaptionError, match='keys must be exactly "1".."2"'):
            parse_vocabulary(bad)
    with pytest.raises(CaptionError, match="'1' is not a string"):
        parse_vocabulary({"1": 5})


def test_load_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"2": "b", "1": "a"}))
    assert load_vocabulary(path).words == ("a", "b")
    path.write_text("{not json")
    with pytest.raises(CaptionError, match="not a JSON vocabulary"):
        load_vocabulary(path)


def test_decoder_outputs_found_by_shape_and_float_indices_accepted() -> None:
    logprobs = np.zeros((1, 4, 9), np.float32)
    seq = np.array([[3, 2, 0, 0]], np.int64)
    orders: list[list[np.ndarray]] = [[seq, logprobs], [logprobs, seq], [seq.astype(np.float32), logprobs]]
    for outputs in orders:
        got_seq, got_lp = split_decoder_outputs(outputs)
        assert got_seq.dtype == np.int64 and got_seq.tolist() == seq.tolist() and got_lp is logprobs
    with pytest.raises(CaptionError, match="not the expected word indices"):
        split_decoder_outputs([logprobs])
