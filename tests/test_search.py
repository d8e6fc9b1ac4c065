"""Decoding options (utils/decoding/decoder.py, utils/decoding/search.py) against tests/reference_search.py.

Each test builds a small traced decoder with known weights, decodes random feature vectors with the
program (weights recovered from the graph, ONNX Runtime step model) and with the plain reference
(float64, one beam at a time), and compares captions and scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests import reference_search as ref
from tests.stand_in_models import (
    NewFCParams,
    default_words,
    make_greedy_decoder,
    random_decoder_weights,
    reference_greedy,
)
from utils.decoding.decoder import CaptionDecoder
from utils.decoding.graph import GreedyGraphDecoder
from utils.decoding.options import DecodingOptions, LengthPenalty, SampleMethod
from utils.decoding.search import SearchContext, search
from utils.decoding.step_model import OrtStepModel
from utils.decoding.weights import recover_weights
from utils.engine.runtime import OnnxRuntimeNetwork

BAD = {"a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon", "near", "to", "is", "are",
       "am"}


def fc_inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.maximum(0.7 * rng.standard_normal((1, 2048)) + 0.2, 0.0).astype(np.float32) for _ in range(n)]


class Built:
    """A traced decoder file, the program's decoder on it, and the reference network."""

    def __init__(self, folder: Path, w: NewFCParams, words: list[str] | None = None, steps: int = 20,
                 padded_to: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "model_fc_nsc.onnx"
        make_greedy_decoder(self.path, w, steps=steps, padded_to=padded_to)
        self.w = w
        self.words = words or default_words(w.vocab_size)
        self.steps = steps
        self.graph = GreedyGraphDecoder(OnnxRuntimeNetwork(self.path))
        self.decoder = CaptionDecoder(self.graph, self.path.read_bytes(), self.words, name=self.path.name)
        self.net = ref.Net(w)

    def ref_options(self, o: DecodingOptions) -> ref.Options:
        last = len(self.words)
        return ref.Options(
            beam_size=o.beam_size, group_size=o.group_size, diversity_lambda=o.diversity_lambda,
            max_length=o.max_length or self.steps, suppress_unk=o.suppress_unk,
            unk_index=last if self.words[-1] == "UNK" else None,
            decoding_constraint=o.decoding_constraint, remove_bad_endings=o.remove_bad_endings,
            bad_indices=[i for i, word in enumerate(self.words, start=1) if word in BAD],
            block_trigrams=o.block_trigrams, penalty=(o.length_penalty.kind, o.length_penalty.alpha),
            temperature=o.temperature,
        )

    def program(self, fc: np.ndarray, o: DecodingOptions) -> list[tuple[list[int], float]]:
        """The program's n-best list: (word indices, score)."""
        decoded = self.decoder(fc, o)
        assert self.decoder.last_source in ("search", "graph")
        assert decoded.nbest and decoded.nbest[0].indices == decoded.indices
        return [(c.indices, c.score) for c in decoded.nbest]

    def reference(self, fc: np.ndarray, o: DecodingOptions) -> list[tuple[list[int], float]]:
        """The reference's n-best list: duplicates (a finished beam extended) dropped, like the program."""
        ro = self.ref_options(o)
        if o.beam_size > 1:
            records = ref.beam_search(self.net, fc, ro)
        else:
            tokens = ref.greedy(self.net, fc, ro)
            records = [(tokens, float(sum(lp[t] for lp, t in zip(ref.replay_logprobs(self.net, fc, tokens), tokens,
                                                                strict=True))))]
        out: list[tuple[list[int], float]] = []
        for tokens, score in records:
            words = ref.words_before_end(tokens)
            if all(words != seen for seen, _ in out):
                out.append((words, score))
        return out[: o.nbest]


def assert_same(program: Sequence[tuple[list[int], float]], reference: Sequence[tuple[list[int], float]]) -> None:
    assert [p[0] for p in program] == [r[0] for r in reference]
    assert [p[1] for p in program] == pytest.approx([r[1] for r in reference], abs=2e-4)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("plain"), random_decoder_weights(12, seed=5, eos_bias=3.0))


# ---------------------------------------------------------------------------------------------
# Beam size 1, beam search, n-best
# ---------------------------------------------------------------------------------------------


def test_beam_size_1_is_the_graph_output(plain: Built) -> None:
    model = OrtStepModel(recover_weights(plain.path.read_bytes()))
    for fc in fc_inputs(6):
        seq, _ = reference_greedy(plain.w, fc)
        want = ref.words_before_end(seq[0].tolist())
        for suppress in (True, False):
            decoded = plain.decoder(fc, DecodingOptions(beam_size=1, suppress_unk=suppress))
            assert decoded.indices == want and plain.decoder.last_source == "graph"
        # The step model's own greedy path gives the same words as the graph.
        greedy = DecodingOptions(beam_size=1)
        (hyp,) = search(model, fc, greedy, SearchContext(max_length=20), np.random.default_rng(0))
        assert ref.words_before_end(hyp.tokens) == want
        graph_seq, _ = plain.graph.run(fc)
        assert hyp.tokens == graph_seq[: len(hyp.tokens)].tolist()


@pytest.mark.parametrize("beam", [2, 3, 5])
def test_beam_search_matches_the_reference(plain: Built, beam: int) -> None:
    options = DecodingOptions(beam_size=beam, nbest=beam)
    for fc in fc_inputs(4, seed=beam):
        assert_same(plain.program(fc, options), plain.reference(fc, options))


def test_trace_stopped_early_with_padded_outputs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Upstream's own loop traced with an early stop: 6 computed steps, outputs padded with zeros to 20.
    w = random_decoder_weights(12, seed=5, eos_bias=0.0)
    built = Built(tmp_path, w, steps=6, padded_to=20)
    assert recover_weights(built.path.read_bytes()).steps == 6
    for fc in fc_inputs(5, seed=4):
        seq, _ = built.graph.run(fc)
        assert seq.shape == (20,) and not seq[6:].any()
        greedy = built.decoder(fc, DecodingOptions(beam_size=1))
        assert greedy.indices == ref.words_before_end(reference_greedy(w, fc, steps=6)[0][0].tolist())
        options = DecodingOptions(beam_size=5, nbest=3)
        assert_same(built.program(fc, options), built.reference(fc, options))
        assert built.decoder.last_source == "search"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_nbest_is_sorted_and_distinct(plain: Built) -> None:
    for fc in fc_inputs(5, seed=9):
        decoded = plain.decoder(fc, DecodingOptions(beam_size=5, nbest=5))
        scores = [c.score for c in decoded.nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(c.indices) for c in decoded.nbest}) == len(decoded.nbest) >= 2
        assert decoded.nbest[0].indices == decoded.indices
        assert decoded.confidence == pytest.approx(decoded.nbest[0].confidence)


def test_a_beam_wider_than_every_candidate_finds_the_exhaustive_best(tmp_path: Path) -> None:
    # Three words, four steps: 121 captions in all, every one kept by a 256-wide beam.
    built = Built(tmp_path, random_decoder_weights(3, embed=8, rnn=8, seed=2, eos_bias=1.0),
                  words=["cat", "dog", "sat"], steps=4)
    options = DecodingOptions(beam_size=256, nbest=10)
    for fc in fc_inputs(4, seed=3):
        every = ref.exhaustive(built.net, fc, max_length=4)
        program = built.program(fc, options)
        assert [p[0] for p in program] == [ref.words_before_end(t) for t, _ in every[:10]]
        assert [p[1] for p in program] == pytest.approx([s for _, s in every[:10]], abs=1e-4)


def test_confidence_is_the_mean_log_probability_of_the_words(plain: Built) -> None:
    for fc in fc_inputs(3, seed=4):
        decoded = plain.decoder(fc, DecodingOptions(beam_size=3))
        steps = ref.replay_logprobs(plain.net, fc, [*decoded.indices, 0])
        assert decoded.confidence == pytest.approx(np.mean([steps[t][w] for t, w in enumerate(decoded.indices)]),
                                                   abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Each option, on a model built to show it
# ---------------------------------------------------------------------------------------------


def _boosted(word: int, by: float, seed: int = 5, eos_bias: float = 3.0, vocab: int = 12) -> NewFCParams:
    w = random_decoder_weights(vocab, seed=seed, eos_bias=eos_bias)
    w.logit_b[word] += np.float32(by)
    return w


def test_suppress_unk(tmp_path: Path) -> None:
    built = Built(tmp_path, _boosted(12, 2.5))  # UNK (the last word) favoured
    unk = 12
    inputs = fc_inputs(6)
    greedy = [built.decoder(fc, DecodingOptions(beam_size=1)).indices for fc in inputs]
    assert any(unk in g for g in greedy)  # the model shows it
    on, off = DecodingOptions(beam_size=3, nbest=3), DecodingOptions(beam_size=3, nbest=3, suppress_unk=False)
    with_unk = 0
    for fc in inputs:
        kept = built.program(fc, on)
        assert all(unk not in words for words, _ in kept)
        assert_same(kept, built.reference(fc, on))
        free = built.program(fc, off)
        assert_same(free, built.reference(fc, off))
        with_unk += unk in free[0][0]
    assert with_unk > 0


def test_decoding_constraint(tmp_path: Path) -> None:
    built = Built(tmp_path, _boosted(2, 15.0))  # "cat" wanted again and again
    inputs = fc_inputs(5)
    plain_runs = [built.decoder(fc, DecodingOptions(beam_size=1)).indices for fc in inputs]
    assert all(any(a == b for a, b in zip(g, g[1:], strict=False)) for g in plain_runs)
    for beam in (1, 3):
        options = DecodingOptions(beam_size=beam, nbest=1, decoding_constraint=True)
        for fc in inputs:
            got = built.program(fc, options)
            assert not any(a == b for a, b in zip(got[0][0], got[0][0][1:], strict=False))
            assert_same(got, built.reference(fc, options))


def test_remove_bad_endings_while_decoding(tmp_path: Path) -> None:
    words = ["a", "the", "with", "of", "on", "cat", "dog", "sat", "in", "to", "table", "UNK"]
    built = Built(tmp_path, random_decoder_weights(12, seed=7, eos_bias=4.0), words=words)
    bad = {i for i, word in enumerate(words, start=1) if word in BAD}
    inputs = fc_inputs(8)
    assert any(g and g[-1] in bad for g in (built.decoder(fc, DecodingOptions(beam_size=1)).indices for fc in inputs))
    for beam in (1, 3):
        options = DecodingOptions(beam_size=beam, nbest=1, remove_bad_endings=True)
        for fc in inputs:
            got = built.program(fc, options)
            ended = len(got[0][0]) < built.steps
            assert not (ended and got[0][0] and got[0][0][-1] in bad)
            assert_same(got, built.reference(fc, options))


def _repeats_a_trigram(words: list[int]) -> bool:
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(trigrams)) < len(trigrams)


def test_block_trigrams_in_greedy_decoding_only(tmp_path: Path) -> None:
    built = Built(tmp_path, random_decoder_weights(12, seed=11, eos_bias=0.0))  # long captions, cycles
    inputs = fc_inputs(6)
    greedy = [built.decoder(fc, DecodingOptions(beam_size=1)).indices for fc in inputs]
    assert any(_repeats_a_trigram(g) for g in greedy)
    blocked = DecodingOptions(beam_size=1, nbest=1, block_trigrams=True)
    changed = 0
    for fc, g in zip(inputs, greedy, strict=True):
        got = built.program(fc, blocked)
        assert_same(got, built.reference(fc, blocked))
        changed += got[0][0] != g
        beam_plain = built.decoder(fc, DecodingOptions(beam_size=3)).indices
        assert built.decoder(fc, DecodingOptions(beam_size=3, block_trigrams=True)).indices == beam_plain
    assert changed > 0


@pytest.mark.parametrize("penalty", ["avg_1", "wu_0.9", "wu_-0.5"])
def test_length_penalty(plain: Built, penalty: str) -> None:
    options = DecodingOptions(beam_size=4, nbest=4, length_penalty=LengthPenalty.parse(penalty))
    changed = 0
    for fc in fc_inputs(6, seed=12):
        got = plain.program(fc, options)
        assert_same(got, plain.reference(fc, options))
        changed += got != plain.program(fc, replace(options, length_penalty=LengthPenalty()))
    assert changed > 0


def test_diverse_beam_search(plain: Built) -> None:
    options = DecodingOptions(beam_size=6, group_size=3, diversity_lambda=2.0, nbest=6)
    firsts = set()
    for fc in fc_inputs(4, seed=13):
        got = plain.program(fc, options)
        assert_same(got, plain.reference(fc, options))
        firsts.add(len({words[0] for words, _ in got if words}))
    assert max(firsts) > 1  # groups start differently


def test_diverse_greedy_groups(plain: Built) -> None:
    # Beam size 1 with groups: upstream's diverse sampling, greedy; group 0 is plain greedy decoding.
    options = DecodingOptions(beam_size=1, group_size=3, diversity_lambda=3.0, nbest=3)
    distinct = 0
    for fc in fc_inputs(4, seed=14):
        decoded = plain.decoder(fc, options)
        assert decoded.indices == plain.decoder(fc, DecodingOptions(beam_size=1)).indices
        want = _reference_diverse_greedy(plain, fc, groups=3, lam=3.0)
        assert [list(c.indices) for c in decoded.nbest] == [w for i, w in enumerate(want) if w not in want[:i]]
        distinct += len(decoded.nbest) > 1
    assert distinct > 0


def _reference_diverse_greedy(built: Built, fc: np.ndarray, groups: int, lam: float) -> list[list[int]]:
    """Upstream _diverse_sample with greedy choice: group g pays lam per earlier group's word at step t."""
    seqs: list[list[int]] = [[] for _ in range(groups)]
    first, start_state = built.net.start(fc)
    states = [start_state] * groups
    for tt in range(built.steps + groups):
        for g in range(groups):
            t = tt - g
            if not 0 <= t < built.steps:
                continue
            if t == 0:
                lp, states[g] = first, start_state
            else:
                lp, states[g] = built.net.step(states[g], seqs[g][-1])
            lp = ref.log_softmax(lp).copy()
            for earlier in range(g):
                lp[seqs[earlier][t]] -= lam
            word = int(np.argmax(lp))
            if t > 0 and seqs[g][-1] == 0:
                word = 0
            seqs[g].append(word)
    return [ref.words_before_end(s) for s in seqs]


def test_max_length(tmp_path: Path, plain: Built) -> None:
    for fc in fc_inputs(3, seed=15):
        full = plain.decoder(fc, DecodingOptions(beam_size=1)).indices
        assert plain.decoder(fc, DecodingOptions(beam_size=1, max_length=3)).indices == full[:3]
        assert len(plain.decoder(fc, DecodingOptions(beam_size=3, max_length=4)).indices) <= 4
    # Longer than the graph's steps: decoded by the step model, and equal to the reference.
    built = Built(tmp_path, random_decoder_weights(12, seed=11, eos_bias=0.0), steps=20)
    long = DecodingOptions(beam_size=1, max_length=26, nbest=1)
    lengths = []
    for fc in fc_inputs(3, seed=16):
        got = built.program(fc, long)
        assert built.decoder.last_source == "search"
        assert_same(got, built.reference(fc, long))
        lengths.append(len(got[0][0]))
    assert max(lengths) > 20


def test_temperature_in_beam_search(plain: Built) -> None:
    options = DecodingOptions(beam_size=3, nbest=3, temperature=2.5)
    for fc in fc_inputs(3, seed=17):
        assert_same(plain.program(fc, options), plain.reference(fc, options))


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_caption_different_seeds_differ(plain: Built) -> None:
    fc = fc_inputs(1, seed=18)[0]
    options = DecodingOptions(sample_method=SampleMethod.parse("sample"), temperature=2.0, seed=1)
    first = plain.decoder(fc, options).indices
    assert all(plain.decoder(fc, options).indices == first for _ in range(3))
    others = {tuple(plain.decoder(fc, replace(options, seed=s)).indices) for s in range(2, 10)}
    assert len(others | {tuple(first)}) > 2
    unseeded = {tuple(plain.decoder(fc, replace(options, seed=None)).indices) for _ in range(6)}
    assert len(unseeded) > 1


@pytest.mark.parametrize("method", ["top1", "sample"])
def test_top1_and_cold_sampling_are_greedy(plain: Built, method: str) -> None:
    temperature = 1.0 if method == "top1" else 1e-4
    for fc in fc_inputs(3, seed=19):
        greedy = plain.decoder(fc, DecodingOptions(beam_size=1)).indices
        options = DecodingOptions(sample_method=SampleMethod.parse(method), temperature=temperature, seed=3)
        sampled = plain.decoder(fc, options)
        assert sampled.indices == greedy


@pytest.mark.parametrize("method", ["top3", "top0.6"])
def test_top_k_and_top_p_draw_only_allowed_words(plain: Built, method: str) -> None:
    drawn = set()
    for seed in range(6):
        fc = fc_inputs(1, seed=20 + seed)[0]
        options = DecodingOptions(sample_method=SampleMethod.parse(method), temperature=1.5, seed=seed, nbest=4)
        decoded = plain.decoder(fc, options)
        assert 1 <= len(decoded.nbest) <= 4
        for cand in decoded.nbest:
            tokens = [*cand.indices, 0] if len(cand.indices) < plain.steps else cand.indices
            for lp, word in zip(ref.replay_logprobs(plain.net, fc, tokens), tokens, strict=True):
                allowed = _allowed(lp / 1.5, method)
                assert word in allowed
                drawn.add(len(allowed) > 1 and word != int(np.argmax(lp)))
    assert True in drawn  # not just greedy


def _allowed(scaled: np.ndarray, method: str) -> set[int]:
    order = list(np.argsort(-scaled, kind="stable"))
    number = float(method[3:])
    if number >= 1:
        return {int(i) for i in order[: int(number)]}
    probs = np.exp(ref.log_softmax(scaled))
    kept, mass = set(), 0.0
    for i in order:
        kept.add(int(i))
        mass += probs[i]
        if mass >= number:
            break
    return kept
