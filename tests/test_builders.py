"""The stand-in model builders are only useful if they are right: check them against each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from tests.stand_in_models import (
    DECODER_NAMES,
    NewFCParams,
    default_words,
    lstm_step,
    make_feature_model,
    make_greedy_decoder,
    make_model_set,
    random_decoder_weights,
    reference_greedy,
    write_vocab,
)

PARAM_NAMES = (
    "embed.weight",
    "fc_embed.weight",
    "fc_embed.bias",
    "_core.i2h.weight",
    "_core.i2h.bias",
    "_core.h2h.weight",
    "_core.h2h.bias",
    "logit.weight",
    "logit.bias",
)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _fc_inputs(n: int, seed: int) -> list[np.ndarray]:
    """Half normal noise, half non-negative ResNet-like vectors, as (1, 2048) float32."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        z = rng.standard_normal((1, 2048))
        fc = z if k % 2 == 0 else np.maximum(0.7 * z + 0.2, 0.0)
        out.append(fc.astype(np.float32))
    return out


def _longest_run(row: np.ndarray) -> int:
    """Length of the longest run of one repeated word."""
    best = run = 0
    for i, word in enumerate(row):
        run = run + 1 if i and word == row[i - 1] else 1
        best = max(best, run)
    return best


def _lengths(seqs: list[np.ndarray]) -> np.ndarray:
    return np.array([int((s[0] > 0).sum()) for s in seqs])


# ---------------------------------------------------------------------------------------------
# The numpy reference on its own
# ---------------------------------------------------------------------------------------------


def test_lstm_step_by_hand() -> None:
    """With zero weights only the biases act, so the docs/models.md §5 formulas can be evaluated by hand."""
    r, e = 2, 3
    w = random_decoder_weights(4, embed=e, rnn=r, feat_dim=5)
    w.i2h_w[:] = 0
    w.h2h_w[:] = 0
    w.h2h_b[:] = 0
    # chunks: input, forget, output, maxout half 1, maxout half 2
    w.i2h_b[:] = np.array([0.0, 1.0, 2.0, -1.0, 0.5, 0.0, 3.0, -2.0, -4.0, 1.0], dtype=np.float32)
    c_prev = np.array([[0.5, -1.0]])
    h, c = lstm_step(w, np.zeros((1, e)), np.zeros((1, r)), c_prev)

    def sig(v: float) -> float:
        return float(1 / (1 + np.exp(-v)))

    cand = [max(3.0, -4.0), max(-2.0, 1.0)]  # maxout, no tanh
    want_c = [sig(2.0) * 0.5 + sig(0.0) * cand[0], sig(-1.0) * -1.0 + sig(1.0) * cand[1]]
    want_h = [sig(0.5) * np.tanh(want_c[0]), sig(0.0) * np.tanh(want_c[1])]
    np.testing.assert_allclose(c[0], want_c, rtol=1e-12)
    np.testing.assert_allclose(h[0], want_h, rtol=1e-12)


def test_reference_shapes_and_masking() -> None:
    w = random_decoder_weights(10, seed=3, eos_bias=4.0)
    for fc in _fc_inputs(10, seed=1):
        seq, lp = reference_greedy(w, fc, steps=20)
        assert seq.dtype == np.int64 and seq.shape == (1, 20)
        assert lp.dtype == np.float32 and lp.shape == (1, 20, 11)
        row = seq[0]
        first_zero = int(np.argmax(row == 0)) if (row == 0).any() else 20
        assert (row[first_zero:] == 0).all() and (row[:first_zero] > 0).all()
        # Log-probabilities are still computed after the end: every step is a distribution.
        np.testing.assert_allclose(np.exp(lp[0].astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)
        # Before the end, each word is the argmax of its step.
        np.testing.assert_array_equal(row[:first_zero], lp[0, :first_zero].argmax(axis=1))


def test_random_weights_give_varied_captions() -> None:
    """Words depend on the image, change along the caption, and the caption does not end at once."""
    for seed in (1, 2, 3):
        w = random_decoder_weights(10, seed=seed, eos_bias=0.0)
        seqs = [reference_greedy(w, fc)[0] for fc in _fc_inputs(12, seed=seed)]
        assert len({tuple(s[0]) for s in seqs}) >= 8
        for s in seqs:
            row = s[0][s[0] > 0]
            assert len(row) >= 2
            assert len(set(row.tolist())) >= 3
            assert _longest_run(row) < 6


def test_eos_bias_ends_captions_early() -> None:
    inputs = _fc_inputs(16, seed=7)
    for seed in (1, 2, 3):
        no_bias = _lengths([reference_greedy(random_decoder_weights(10, seed=seed), fc)[0] for fc in inputs])
        biased_w = random_decoder_weights(10, seed=seed, eos_bias=4.0)
        biased = _lengths([reference_greedy(biased_w, fc)[0] for fc in inputs])
        assert (biased < 20).all() and (biased >= 1).all()
        assert no_bias.mean() > biased.mean() + 3
    # With no bias most captions run to the step limit.
    all_no_bias = [
        reference_greedy(random_decoder_weights(10, seed=seed), fc)[0] for seed in (1, 2, 3) for fc in inputs
    ]
    assert (_lengths(all_no_bias) == 20).mean() > 0.5


# ---------------------------------------------------------------------------------------------
# The ONNX decoder graph against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "prefix", "extra", "eos_bias"),
    [(20, "", False, 0.0), (20, "", False, 4.0), (7, "", False, 0.0), (20, "model.", True, 3.0), (7, "m.", True, 0.0)],
)
def test_decoder_graph_matches_reference(tmp_path: Path, steps: int, prefix: str, extra: bool, eos_bias: float) -> None:
    w = random_decoder_weights(10, seed=5, eos_bias=eos_bias)
    path = tmp_path / "dec.onnx"
    make_greedy_decoder(path, w, steps=steps, prefix=prefix, extra_constants=extra)
    sess = _session(path)
    ended = 0
    for fc in _fc_inputs(6, seed=11):
        seq, lp = sess.run(None, {"fc_feats": fc})
        want_seq, want_lp = reference_greedy(w, fc, steps=steps)
        assert seq.dtype == np.int64 and lp.dtype == np.float32
        np.testing.assert_array_equal(seq, want_seq)
        np.testing.assert_allclose(lp, want_lp, atol=1e-4)
        ended += int((seq == 0).any())
    if eos_bias >= 3.0:
        assert ended == 6  # the masking path (rows that emitted 0 stay 0) was exercised


def test_decoder_graph_interface(tmp_path: Path) -> None:
    w = random_decoder_weights(10, embed=8, rnn=12, seed=2)
    plain, extra = tmp_path / "plain.onnx", tmp_path / "extra.onnx"
    make_greedy_decoder(plain, w, steps=7)
    make_greedy_decoder(extra, w, steps=7, prefix="model.", extra_constants=True)
    for path, prefix in ((plain, ""), (extra, "model.")):
        model = onnx.load(str(path))
        assert model.ir_version == 7
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 11)]
        g = model.graph
        assert [i.name for i in g.input] == ["fc_feats"]
        assert [o.name for o in g.output] == ["seq", "logprobs"]
        dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in g.output]
        assert dims == [[1, 7], [1, 7, 11]]
        assert [o.type.tensor_type.elem_type for o in g.output] == [TensorProto.INT64, TensorProto.FLOAT]
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for name, array in zip(PARAM_NAMES, _arrays(w), strict=True):
            np.testing.assert_array_equal(inits[prefix + name], array)
        extras = set(inits) - {prefix + n for n in PARAM_NAMES}
        assert bool(extras) == (path == extra)
        ops = {n.op_type for n in g.node}
        assert {"Gemm", "Gather", "ArgMax", "LogSoftmax", "Max", "Sigmoid", "Tanh"} <= ops
        argmax = [n for n in g.node if n.op_type == "ArgMax"]
        assert len(argmax) == 7
        assert all({a.name: a.i for a in n.attribute} == {"axis": 1, "keepdims": 0} for n in argmax)
    sess = _session(extra)
    assert [i.name for i in sess.get_inputs()] == ["fc_feats"]


def test_decoder_custom_input_name(tmp_path: Path) -> None:
    w = random_decoder_weights(6, seed=4)
    path = tmp_path / "dec.onnx"
    make_greedy_decoder(path, w, steps=5, input_name="feats")
    fc = _fc_inputs(1, seed=0)[0]
    seq, _ = _session(path).run(None, {"feats": fc})
    np.testing.assert_array_equal(seq, reference_greedy(w, fc, steps=5)[0])


def _arrays(w: NewFCParams) -> list[np.ndarray]:
    return [w.embed, w.fc_embed_w, w.fc_embed_b, w.i2h_w, w.i2h_b, w.h2h_w, w.h2h_b, w.logit_w, w.logit_b]


def test_weight_shapes() -> None:
    w = random_decoder_weights(9, embed=6, rnn=10, feat_dim=32)
    assert (w.vocab_size, w.feat_dim, w.rnn_size) == (9, 32, 10)
    shapes = [a.shape for a in _arrays(w)]
    assert shapes == [(10, 6), (6, 32), (6,), (50, 6), (50,), (50, 10), (50,), (10, 10), (10,)]
    assert all(a.dtype == np.float32 for a in _arrays(w))


# ---------------------------------------------------------------------------------------------
# Feature model
# ---------------------------------------------------------------------------------------------


def test_feature_model_interface_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "feat.onnx"
    make_feature_model(path)
    sess = _session(path)
    (inp,) = sess.get_inputs()
    assert inp.name == "img" and inp.shape == [3, "H", "W"]
    assert [o.name for o in sess.get_outputs()] == ["fc", "att"]
    rng = np.random.default_rng(0)
    outs = {}
    for h, w in ((1, 1), (37, 53), (480, 640)):
        img = rng.standard_normal((3, h, w)).astype(np.float32)
        fc, att = sess.run(None, {"img": img})
        assert fc.shape == (2048,) and fc.dtype == np.float32 and np.isfinite(fc).all()
        assert att.ndim == 3 and att.shape[0] == 2048
        np.testing.assert_allclose(fc, att.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
        outs[(h, w)] = fc
    assert 0.05 < float(outs[(480, 640)].mean()) < 5.0  # O(1) for normalised input
    # Different images give clearly different vectors.
    flat = np.full((3, 480, 640), 0.5, dtype=np.float32)
    (fc_flat, _) = sess.run(None, {"img": flat})
    other = rng.standard_normal((3, 480, 640)).astype(np.float32)
    (fc_other, _) = sess.run(None, {"img": other})
    for a, b in ((fc_flat, outs[(480, 640)]), (fc_other, outs[(480, 640)]), (outs[(37, 53)], outs[(480, 640)])):
        assert np.abs(a - b).mean() > 1e-3 * (np.abs(a).mean() + np.abs(b).mean())
    assert np.abs(fc_flat - outs[(480, 640)]).mean() > 0.1


def test_feature_model_single_output(tmp_path: Path) -> None:
    path = tmp_path / "feat.onnx"
    make_feature_model(path, out_dim=64, seed=3, second_output=False)
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == ["fc"]
    (fc,) = sess.run(None, {"img": np.zeros((3, 10, 20), dtype=np.float32)})
    assert fc.shape == (64,)


# ---------------------------------------------------------------------------------------------
# Vocabulary and the full model set
# ---------------------------------------------------------------------------------------------


def test_default_words() -> None:
    words = default_words(12)
    assert len(words) == 12 and len(set(words)) == 12 and words[-1] == "UNK"
    assert {"a", "the", "with", "of", "on", "in"} <= set(words)
    assert {"cat", "dog", "sitting", "table"} <= set(words)
    assert all(wd == wd.lower() for wd in words[:-1])
    big = default_words(500)
    assert len(big) == 500 and len(set(big)) == 500 and big[-1] == "UNK"
    assert default_words(1) == ["UNK"]


def test_write_vocab(tmp_path: Path) -> None:
    write_vocab(tmp_path / "vocab.json", ["cat", "dog", "UNK"])
    assert json.loads((tmp_path / "vocab.json").read_text()) == {"1": "cat", "2": "dog", "3": "UNK"}


@pytest.mark.parametrize("prototxt", [True, False])
def test_model_set(tmp_path: Path, prototxt: bool) -> None:
    weights = make_model_set(tmp_path, vocab_size=12, steps=20, prototxt=prototxt)
    onnx_names = ["model_feat.onnx", *(f"model_{n}.onnx" for n in DECODER_NAMES)]
    expected = {*onnx_names, "vocab.json"} | ({f"{n}.prototxt" for n in onnx_names} if prototxt else set())
    assert {p.name for p in tmp_path.iterdir()} == expected
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert list(vocab) == [str(i) for i in range(1, 13)] and vocab["12"] == "UNK"
    assert set(weights) == set(DECODER_NAMES)
    assert len({float(w.logit_w.sum()) for w in weights.values()}) == 3  # three different seeds
    if not prototxt:
        return
    (fc, _) = _session(tmp_path / "model_feat.onnx").run(None, {"img": np.ones((3, 48, 64), np.float32)})
    for name, w in weights.items():
        assert w.vocab_size == 12
        seq, _ = _session(tmp_path / f"model_{name}.onnx").run(None, {"fc_feats": fc[None]})
        np.testing.assert_array_equal(seq, reference_greedy(w, fc[None])[0])
