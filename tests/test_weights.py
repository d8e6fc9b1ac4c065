"""Recovering decoder weights from traced graphs (utils/decoding/weights.py) and falling back when it fails."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.reference_search import words_before_end
from tests.stand_in_models import (
    NewFCParams,
    default_words,
    make_greedy_decoder,
    random_decoder_weights,
    reference_greedy,
)
from utils.decoding.decoder import CaptionDecoder
from utils.decoding.graph import GreedyGraphDecoder
from utils.decoding.options import DecodingOptions
from utils.decoding.weights import RecoveryError, recover_weights
from utils.engine.runtime import OnnxRuntimeNetwork

PAIRS = [("embed", "embed"), ("fc_w", "fc_embed_w"), ("fc_b", "fc_embed_b"), ("i2h_w", "i2h_w"), ("i2h_b", "i2h_b"),
         ("h2h_w", "h2h_w"), ("h2h_b", "h2h_b"), ("logit_w", "logit_w"), ("logit_b", "logit_b")]


def weights(seed: int = 4, vocab: int = 12, size: int = 16) -> NewFCParams:
    return random_decoder_weights(vocab, embed=size, rnn=size, seed=seed, eos_bias=3.0)


def assert_recovered(path: Path, w: NewFCParams, source: str, steps: int = 20) -> None:
    got = recover_weights(path.read_bytes())
    assert got.source == source and got.steps == steps
    for mine, theirs in PAIRS:
        np.testing.assert_array_equal(getattr(got, mine), getattr(w, theirs))


def fc_inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [np.maximum(rng.standard_normal((1, 2048)), 0).astype(np.float32) for _ in range(n)]


def decoder(path: Path, w: NewFCParams) -> CaptionDecoder:
    return CaptionDecoder(GreedyGraphDecoder(OnnxRuntimeNetwork(path)), path.read_bytes(), default_words(w.vocab_size),
                          name=path.name)


def edit(path: Path, change: Callable[[onnx.GraphProto], None]) -> None:
    model = onnx.load(str(path))
    change(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def rename_initializers(graph: onnx.GraphProto) -> None:
    """Anonymous names, as an exporter that does not keep parameter names would write."""
    names = {t.name: f"onnx::Init_{i}" for i, t in enumerate(graph.initializer)}
    for t in graph.initializer:
        t.name = names[t.name]
    for node in graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = names.get(name, name)


def logit_weight_name(graph: onnx.GraphProto, w: NewFCParams) -> str:
    """The initializer a Gemm uses as the (V+1, R) logit weight (the embedding has that shape too)."""
    shapes = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    return next(n.input[1] for n in graph.node if n.op_type == "Gemm" and shapes.get(n.input[1]) == w.logit_w.shape)


def logit_as_matmul(graph: onnx.GraphProto, w: NewFCParams, weight_name: str, bias_name: str) -> None:
    """Replace every logit Gemm by MatMul with (in, out) storage plus a separate Add of the bias."""
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.logit_w.T), "onnx::MatMul_logit"))
    nodes = []
    for node in graph.node:
        if node.op_type == "Gemm" and node.input[1] == weight_name:
            product = node.output[0] + "_product"
            nodes += [helper.make_node("MatMul", [node.input[0], "onnx::MatMul_logit"], [product]),
                      helper.make_node("Add", [product, bias_name], [node.output[0]])]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name != weight_name]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def test_by_name_under_any_prefix(tmp_path: Path) -> None:
    w = weights()
    for prefix in ["", "model.", "module.captioner.decoder."]:
        make_greedy_decoder(tmp_path / "d.onnx", w, prefix=prefix)
        assert_recovered(tmp_path / "d.onnx", w, "by name")


def test_by_name_with_folded_constants_beside(tmp_path: Path) -> None:
    w = weights()
    make_greedy_decoder(tmp_path / "d.onnx", w, prefix="wrapper.", extra_constants=True)
    assert_recovered(tmp_path / "d.onnx", w, "by name")


def test_fewer_steps_than_20(tmp_path: Path) -> None:
    w = weights(seed=7)
    path = tmp_path / "d.onnx"
    make_greedy_decoder(path, w, steps=6)
    assert_recovered(path, w, "by name", steps=6)
    dec = decoder(path, w)
    for fc in fc_inputs(4):
        decoded = dec(fc, DecodingOptions(beam_size=3, nbest=3))
        assert dec.last_source == "search"
        assert all(len(c.indices) <= 6 for c in decoded.nbest)  # the default length is the graph's


@pytest.mark.parametrize("extra_constants", [False, True])
def test_by_structure_when_names_do_not_match(tmp_path: Path, extra_constants: bool) -> None:
    w = weights(size=16)  # E = R: i2h and h2h have the same shape and are told apart by their inputs
    path = tmp_path / "d.onnx"
    make_greedy_decoder(path, w, extra_constants=extra_constants, steps=8)
    edit(path, rename_initializers)
    assert_recovered(path, w, "by graph structure", steps=8)
    graph = onnx.load(str(path)).graph
    logit_name = logit_weight_name(graph, w)
    bias = next(n.input[2] for n in graph.node if n.op_type == "Gemm" and n.input[1] == logit_name)
    edit(path, lambda g: logit_as_matmul(g, w, logit_name, bias))
    assert_recovered(path, w, "by graph structure", steps=8)
    dec = decoder(path, w)
    for fc in fc_inputs(3):
        dec(fc, DecodingOptions(beam_size=3))
        assert dec.last_source == "search"


def test_unrecoverable_weights_fall_back_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # logit.weight is computed inside the graph (a MatMul of two constants): no initializer holds it.
    w = weights()
    path = tmp_path / "model_fc_nsc.onnx"
    make_greedy_decoder(path, w)

    def computed_logit(graph: onnx.GraphProto) -> None:
        rename_initializers(graph)
        name = logit_weight_name(graph, w)
        graph.initializer.extend([numpy_helper.from_array(w.logit_w, "factor_a"),
                                  numpy_helper.from_array(np.eye(w.rnn_size, dtype=np.float32), "factor_b")])
        graph.node.insert(0, helper.make_node("MatMul", ["factor_a", "factor_b"], [name]))
        kept = [t for t in graph.initializer if t.name != name]
        del graph.initializer[:]
        graph.initializer.extend(kept)

    edit(path, computed_logit)
    with pytest.raises(RecoveryError, match="logit"):
        recover_weights(path.read_bytes())
    dec = decoder(path, w)
    with caplog.at_level(logging.WARNING):
        for fc in fc_inputs(4):
            decoded = dec(fc, DecodingOptions(beam_size=5, nbest=2))
            assert dec.last_source == "fallback"
            assert decoded.indices == words_before_end(reference_greedy(w, fc)[0][0].tolist())
            assert len(decoded.nbest) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "beam search with beam size 5 is not available for model_fc_nsc.onnx" in warnings[0].getMessage()
    assert "could not be recovered" in warnings[0].getMessage()


def test_weights_that_do_not_replay_fall_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The image step goes through a folded copy of i2h.weight; perturb the copy only: the named
    # weights are recovered, but they no longer compute what the graph computes.
    w = weights()
    path = tmp_path / "d.onnx"
    make_greedy_decoder(path, w, extra_constants=True)

    def perturb(graph: onnx.GraphProto) -> None:
        for i, t in enumerate(graph.initializer):
            if t.name == "onnx::MatMul_903":
                graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))

    edit(path, perturb)
    assert recover_weights(path.read_bytes()).source == "by name"
    dec = decoder(path, w)
    graph = GreedyGraphDecoder(OnnxRuntimeNetwork(path))
    with caplog.at_level(logging.WARNING):
        for fc in fc_inputs(4):
            decoded = dec(fc, DecodingOptions(beam_size=3))
            assert dec.last_source == "fallback"
            assert decoded.indices == graph(fc).indices
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "replaying greedy decoding" in warnings[0]


def test_vocabulary_of_another_size_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = weights()
    path = tmp_path / "d.onnx"
    make_greedy_decoder(path, w)
    dec = CaptionDecoder(GreedyGraphDecoder(OnnxRuntimeNetwork(path)), path.read_bytes(), default_words(11),
                         name=path.name)
    with caplog.at_level(logging.WARNING):
        dec(fc_inputs(1)[0], DecodingOptions())
    assert dec.last_source == "fallback"
    assert "12 words but the vocabulary 11" in caplog.text


def test_not_an_onnx_file(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(RecoveryError, match="cannot read"):
        recover_weights((tmp_path / "x.onnx").read_bytes())
