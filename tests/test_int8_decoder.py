"""The int8 decoder (utils/quantization/decoder.py) on ONNX Runtime, with decoders built by tests/stand_in_models.py.

What the program relies on: the quantized graph keeps the published interface (docs/models.md §4); a
row's step-model result does not depend on the other rows of its batch (the replay rides along as one
extra row of the search's batch, utils/decoding/decoder.py); the replay passes on the int8 pair and
still catches a wrong weight; the same input always gives the same bytes (the result is cached under
a SHA-256 record).
"""

from __future__ import annotations

import collections
import dataclasses
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.stand_in_models import default_words, make_greedy_decoder, random_decoder_weights
from tests.test_search import fc_inputs
from utils.decoding.decoder import CaptionDecoder, Replay, replay_mismatch
from utils.decoding.graph import GreedyGraphDecoder
from utils.decoding.options import DecodingOptions
from utils.decoding.step_model import OrtStepModel, image_graph, step_graph
from utils.decoding.weights import DecoderWeights, recover_weights
from utils.engine.runtime import OnnxRuntimeNetwork
from utils.quantization.decoder import (
    BLOCK_SIZE,
    MAX_FIRST_WORD_DIFFERENCE,
    QUANTIZED_LAYERS,
    DecoderQuantizationError,
    first_word_difference,
    int8_decoder_path,
    int8_step_model,
    quantize_decoder_graph,
    quantize_linear_layers,
    quantize_matrix,
    quantize_step_graph,
    run_every_layer,
)

VOCAB = 40
WIDTH = 64  # two 32-input blocks per weight row
STEPS = 20


class Int8Pair:
    """A traced decoder file, its int8 graph, and the program's decoder on the int8 pair."""

    def __init__(self, folder: Path, width: int = WIDTH, extra_constants: bool = False, seed: int = 3) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "model_fc_nsc.onnx"
        make_greedy_decoder(self.path, random_decoder_weights(VOCAB, width, width, seed=seed, eos_bias=3.0),
                            steps=STEPS, extra_constants=extra_constants)
        self.fp32 = onnx.load_from_string(self.path.read_bytes())
        self.weights = recover_weights(self.fp32)
        self.int8 = quantize_decoder_graph(self.fp32)
        self.graph = GreedyGraphDecoder(OnnxRuntimeNetwork(self.int8.SerializeToString()))
        self.decoder = CaptionDecoder(self.graph, self.path.read_bytes(), default_words(VOCAB), name=self.path.name,
                                      step_model=int8_step_model)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Int8Pair:
    return Int8Pair(tmp_path_factory.mktemp("int8"))


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# The quantized graph
# ---------------------------------------------------------------------------------------------


def test_quantized_graph_keeps_the_published_interface(pair: Int8Pair) -> None:
    onnx.checker.check_model(pair.int8)
    assert [i.name for i in pair.int8.graph.input] == ["fc_feats"]
    assert [o.name for o in pair.int8.graph.output] == ["seq", "logprobs"]
    for fc in fc_inputs(4):
        seq, logprobs = _session(pair.int8).run(None, {"fc_feats": fc})
        assert seq.dtype == np.int64 and seq.shape == (1, STEPS)
        assert logprobs.dtype == np.float32 and logprobs.shape == (1, STEPS, VOCAB + 1)
        np.testing.assert_allclose(np.logaddexp.reduce(logprobs[0], axis=1), 0.0, atol=1e-4)  # log_softmax rows
        words = np.argmax(logprobs[0], axis=1)
        ended = np.cumsum(words == 0) > 0
        np.testing.assert_array_equal(seq[0], np.where(ended, 0, words))


def test_i2h_h2h_and_logit_are_int8_and_the_rest_is_not(pair: Int8Pair) -> None:
    assert QUANTIZED_LAYERS == ("i2h_w", "h2h_w", "logit_w")
    ops = _ops(pair.int8)
    # Every step: i2h, h2h, logit; plus the image step's i2h and h2h. fc_embed stays a Gemm.
    assert ops["MatMulNBits"] == 3 * STEPS + 2 and ops["Gemm"] == 1
    names = {t.name for t in pair.int8.graph.initializer}
    assert {"_core.i2h.weight", "_core.h2h.weight", "logit.weight"}.isdisjoint(names)
    assert {"embed.weight", "fc_embed.weight", "_core.i2h.bias", "_core.h2h.bias", "logit.bias"} <= names
    nbits = [n for n in pair.int8.graph.node if n.op_type == "MatMulNBits"]
    attrs = {(a.name, helper.get_attribute_value(a)) for n in nbits for a in n.attribute}
    assert {("bits", 8), ("block_size", BLOCK_SIZE), ("accuracy_level", 4)} <= attrs
    # One int8 copy of each weight, shared by all the steps.
    assert len({n.input[1] for n in nbits}) == 3


def _depends_on_input(model: onnx.ModelProto) -> set[str]:
    constants = {t.name for t in model.graph.initializer}
    dependent = {i.name for i in model.graph.input if i.name not in constants}
    for node in model.graph.node:
        if any(i in dependent for i in node.input):
            dependent.update(node.output)
    return dependent


def test_every_layer_is_computed_at_run_time(pair: Int8Pair) -> None:
    # ONNX Runtime folds a layer on constants at load time with another kernel than it runs, in other last
    # bits than the step model's run-time step: the graph must run them all, as the step model does.
    linear = ("Gemm", "MatMul", "MatMulNBits")
    fp32_constant = [n for n in pair.fp32.graph.node
                     if n.op_type in linear and n.input[0] not in _depends_on_input(pair.fp32)]
    assert len(fp32_constant) == 2  # the image step's h2h (zero state), the BOS step's i2h (word 0)
    dependent = _depends_on_input(pair.int8)
    assert all(n.input[0] in dependent for n in pair.int8.graph.node if n.op_type in linear)
    # Nothing else changes: an fp32 graph made to run every layer gives the published graph's outputs.
    fp32, every = _session(pair.fp32), _session(run_every_layer(pair.fp32))
    for fc in fc_inputs(4, seed=11):
        (seq_a, lp_a), (seq_b, lp_b) = fp32.run(None, {"fc_feats": fc}), every.run(None, {"fc_feats": fc})
        np.testing.assert_array_equal(seq_a, seq_b)
        np.testing.assert_allclose(lp_a, lp_b, atol=1e-5)
    assert run_every_layer(pair.int8).SerializeToString() == pair.int8.SerializeToString()  # nothing left to do


def test_int8_graph_stays_close_to_fp32(pair: Int8Pair) -> None:
    # The first word's distribution (later ones follow different words once a word differs).
    differences = [first_word_difference(pair.fp32, pair.int8, fc) for fc in fc_inputs(8, seed=1)]
    assert max(differences) < 0.5 < MAX_FIRST_WORD_DIFFERENCE
    assert first_word_difference(pair.fp32, pair.int8) == pytest.approx(first_word_difference(pair.fp32, pair.int8))
    # A kernel that read the weights wrongly (here: logit scales 3x too large) is far off.
    broken = onnx.ModelProto()
    broken.CopyFrom(pair.int8)
    scales = next(t for t in broken.graph.initializer if t.name.startswith("logit.weight") and "scales" in t.name)
    scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales) * np.float32(3), scales.name))
    assert first_word_difference(pair.fp32.SerializeToString(), broken.SerializeToString()) > MAX_FIRST_WORD_DIFFERENCE


@pytest.mark.parametrize("layers", [QUANTIZED_LAYERS, ("h2h_w", "logit_w")])
def test_a_graph_with_folded_constants_beside(tmp_path: Path, layers: tuple[str, ...]) -> None:
    # The image step runs i2h as a MatMul on a transposed copy of the weight, among other folded constants.
    built = Int8Pair(tmp_path, extra_constants=True)
    int8 = quantize_decoder_graph(built.fp32, layers=layers)
    assert ("MatMul" in _ops(int8)) == ("i2h_w" not in layers)
    graph = GreedyGraphDecoder(OnnxRuntimeNetwork(int8.SerializeToString()))

    def factory(w: DecoderWeights) -> OrtStepModel:
        return OrtStepModel(w, quantize=partial(quantize_step_graph, weights=w, layers=layers))

    decoder = CaptionDecoder(graph, built.path.read_bytes(), default_words(VOCAB), step_model=factory)
    for fc in fc_inputs(5, seed=2):
        decoder(fc, DecodingOptions(beam_size=3))
        assert decoder.last_source == "search"


def test_inputs_narrower_than_a_block(tmp_path: Path) -> None:
    built = Int8Pair(tmp_path, width=16)  # K = 16 < BLOCK_SIZE: one zero-padded block
    for fc in fc_inputs(5, seed=3):
        built.decoder(fc, DecodingOptions(beam_size=5))
        assert built.decoder.last_source == "search"


def test_matrix_layout_and_rounding() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 80)).astype(np.float32)  # 80 inputs: 3 blocks, the last one padded
    w[2] = 0.0
    q = quantize_matrix(w)
    assert q.packed.shape == (7, 3, BLOCK_SIZE) and q.packed.dtype == np.uint8
    assert q.scales.shape == (7, 3) and q.scales.dtype == np.float32
    assert (q.packed[:, -1, 80 - 2 * BLOCK_SIZE :] == 128).all()  # padding is zero
    assert (q.packed[2] == 128).all() and (q.scales[2] == 0).all()
    assert q.packed.min() >= 1 and q.packed.max() <= 255  # symmetric: -127..127 around 128
    step = np.repeat(q.scales, BLOCK_SIZE, axis=1)[:, :80]
    assert (np.abs(q.dequantized() - w) <= step / 2 + 1e-7).all()


def test_layer_computes_x_times_the_dequantized_weight() -> None:
    rng = np.random.default_rng(1)
    n, k = 50, 96
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    int8 = quantize_linear_layers(model, [w])
    assert _ops(int8) == {"MatMulNBits": 1, "Add": 1}
    x = np.tanh(rng.standard_normal((4, k))).astype(np.float32)
    want = x @ quantize_matrix(w).dequantized().T + b
    got = _session(int8).run(None, {"x": x})[0]
    # The activations are rounded to int8 per row and block (accuracy_level 4): about 1/254 of a block's largest.
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# The step model, and the replay check
# ---------------------------------------------------------------------------------------------


def test_step_graphs_get_the_same_int8_weights_as_the_graph(pair: Int8Pair) -> None:
    step = quantize_step_graph(step_graph(pair.weights), pair.weights)
    assert _ops(step)["MatMulNBits"] == 3 and "Gemm" not in _ops(step)

    def int8_arrays(model: onnx.ModelProto) -> list[bytes]:
        return sorted(t.raw_data for t in model.graph.initializer if t.name.endswith(("_int8", "_int8_scales")))

    assert int8_arrays(step) == int8_arrays(pair.int8)
    image = image_graph(pair.weights)  # fc_embed is not quantized
    assert quantize_step_graph(image, pair.weights).SerializeToString() == image.SerializeToString()


def test_a_row_does_not_depend_on_the_rest_of_its_batch(pair: Int8Pair) -> None:
    # The replay is one extra row of the search's batch, checked against the graph's single row: each row
    # must come out exactly as it would alone, whatever the other rows and its position.
    model = int8_step_model(pair.weights)
    rng = np.random.default_rng(5)
    for _ in range(5):
        words = rng.integers(1, VOCAB + 1, 6)
        h = np.tanh(rng.standard_normal((6, WIDTH))).astype(np.float32)
        c = rng.standard_normal((6, WIDTH)).astype(np.float32)
        logprobs, (h_out, c_out) = model.step(words, (h, c))
        for i in range(6):
            alone, (h_alone, c_alone) = model.step(words[i : i + 1], (h[i : i + 1], c[i : i + 1]))
            np.testing.assert_array_equal(logprobs[i], alone[0])
            np.testing.assert_array_equal(h_out[i], h_alone[0])
            np.testing.assert_array_equal(c_out[i], c_alone[0])
        reordered, _ = model.step(words[::-1].copy(), (h[::-1].copy(), c[::-1].copy()))
        np.testing.assert_array_equal(reordered[::-1], logprobs)


def test_replay_passes_on_the_int8_pair(pair: Int8Pair) -> None:
    model = int8_step_model(pair.weights)
    for fc in fc_inputs(12, seed=4):
        seq, logprobs = pair.graph.run(fc)
        assert replay_mismatch(model, model.start(fc), seq, logprobs) is None
        # And as the program runs it: one row beside the beams, deciding whether the search is used.
        for beam in (2, 5):
            decoded = pair.decoder(fc, DecodingOptions(beam_size=beam, nbest=beam))
            assert pair.decoder.last_source == "search"
            assert decoded.nbest[0].indices == decoded.indices


LAYER_SETS = [QUANTIZED_LAYERS, ("logit_w",), ("i2h_w", "logit_w"), ("h2h_w", "logit_w")]


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_the_replay_reproduces_the_graph_exactly(pair: Int8Pair, layers: tuple[str, ...]) -> None:
    graph = GreedyGraphDecoder(OnnxRuntimeNetwork(quantize_decoder_graph(pair.fp32, layers=layers).SerializeToString()))
    model = OrtStepModel(pair.weights, quantize=partial(quantize_step_graph, weights=pair.weights, layers=layers))
    rng = np.random.default_rng(12)
    for fc in fc_inputs(8, seed=12):
        seq, logprobs = graph.run(fc)
        start = model.start(fc)
        replay = Replay(model, start, seq)
        rows = (np.repeat(start[1][0], 5, 0), np.repeat(start[1][1], 5, 0))
        while not replay.done:  # beside 5 other rows, as in the search
            _, rows = replay.step(rng.integers(1, VOCAB + 1, 5), rows)
        assert replay.mismatch(logprobs) is None
        for t, word in enumerate(replay.words.tolist()):
            assert replay.logprobs[t][word] == logprobs[t, word]


def test_the_fp32_step_model_does_not_pass_against_the_int8_graph(pair: Int8Pair) -> None:
    # The check compares like with like: int8 steps against the int8 graph, not against fp32 steps.
    model = OrtStepModel(pair.weights)
    problems = []
    for fc in fc_inputs(6, seed=6):
        seq, logprobs = pair.graph.run(fc)
        problems.append(replay_mismatch(model, model.start(fc), seq, logprobs))
    assert any(p is not None for p in problems)


@pytest.mark.parametrize("wrong", ["logit_b", "h2h_w", "i2h_w"])
def test_replay_catches_a_wrong_weight(pair: Int8Pair, wrong: str, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(8)
    value = getattr(pair.weights, wrong)
    perturbed = (value + rng.standard_normal(value.shape).astype(np.float32) * np.float32(0.05 * value.std()))
    bad = dataclasses.replace(pair.weights, **{wrong: perturbed.astype(np.float32)})
    model = int8_step_model(bad)
    for fc in fc_inputs(4, seed=7):
        seq, logprobs = pair.graph.run(fc)
        problem = replay_mismatch(model, model.start(fc), seq, logprobs)
        assert problem is not None and "replaying greedy decoding" in problem

    def wrong_factory(w: DecoderWeights) -> OrtStepModel:
        return int8_step_model(dataclasses.replace(w, **{wrong: perturbed.astype(np.float32)}))

    decoder = CaptionDecoder(pair.graph, pair.path.read_bytes(), default_words(VOCAB), step_model=wrong_factory)
    fc = fc_inputs(1, seed=9)[0]
    decoded = decoder(fc, DecodingOptions(beam_size=5))
    assert decoder.last_source == "fallback"
    assert decoded.indices == pair.decoder(fc, DecodingOptions(beam_size=1)).indices
    assert any("not available" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# ---------------------------------------------------------------------------------------------
# Determinism and errors
# ---------------------------------------------------------------------------------------------


def test_quantizing_twice_gives_identical_bytes(pair: Int8Pair) -> None:
    data = pair.path.read_bytes()
    first = quantize_decoder_graph(onnx.load_from_string(data)).SerializeToString()
    assert quantize_decoder_graph(data).SerializeToString() == first
    assert quantize_decoder_graph(onnx.load_from_string(data), recover_weights(data)).SerializeToString() == first
    assert first == pair.int8.SerializeToString()
    step = step_graph(pair.weights)
    assert (quantize_step_graph(step, pair.weights).SerializeToString()
            == quantize_step_graph(step_graph(recover_weights(data)), recover_weights(data)).SerializeToString())


def test_the_source_model_is_not_modified(pair: Int8Pair) -> None:
    before = pair.fp32.SerializeToString()
    quantize_decoder_graph(pair.fp32)
    assert pair.fp32.SerializeToString() == before


def test_a_graph_without_decoder_weights_is_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["fc_feats"], ["y"])], "other",
        [helper.make_tensor_value_info("fc_feats", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    with pytest.raises(DecoderQuantizationError, match="could not be recovered"):
        quantize_decoder_graph(model)
    with pytest.raises(DecoderQuantizationError, match="cannot read"):
        quantize_decoder_graph(b"not an onnx file")


def test_weights_of_another_model_are_refused(pair: Int8Pair, tmp_path: Path) -> None:
    other = Int8Pair(tmp_path, seed=11)
    with pytest.raises(DecoderQuantizationError, match="no linear layer with the recovered"):
        quantize_decoder_graph(pair.fp32, other.weights)


def test_the_captioner_runs_beam_search_on_the_cached_int8_decoder(models: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--precision int8 end to end in the API: the int8 decoder is made once, cached with its record, and beam
    search runs on it with the int8 step model (the replay check passes: no fall-back to the greedy graph).
    Forced on, so that a CPU without VNNI (where the program keeps the fp32 decoder) still tests the path."""
    import utils.quantization.models as int8_plan
    from utils.engine.captioner import Captioner, CaptionerOptions
    from utils.engine.preprocess import read_image
    from utils.engine.runtime import RuntimeOptions

    monkeypatch.setattr(int8_plan, "int8_decoder_pays", lambda flags: True)
    options = CaptionerOptions(model_dir=models, offline=True, progress=False, precision="int8",
                               runtime=RuntimeOptions(backend="onnxruntime"))
    image = read_image(Path(__file__).resolve().parent.parent / "samples" / "chelsea.png")
    made = Captioner(options)
    cached = int8_decoder_path(models / "model_fc_nsc.onnx")
    assert cached.exists() and cached.with_suffix(".json").exists()
    stamp = cached.stat().st_mtime_ns
    reused = Captioner(options)
    assert cached.stat().st_mtime_ns == stamp
    for captioner in (made, reused):
        result = captioner.caption(image, DecodingOptions(beam_size=5, nbest=3))
        assert result.caption and captioner._workers[0].decoder.last_source == "search"
    assert made.caption(image).caption == reused.caption(image).caption
