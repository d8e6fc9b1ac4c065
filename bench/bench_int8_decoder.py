#!/usr/bin/env python3
"""int8 decoder candidates against fp32, at the published size, in one process (utils/quantization/decoder.py).

    python3 bench/bench_int8_decoder.py [--models bench/models] [--images 8] [--rounds 3] [--inputs 100]
                                        [--cold flush|features] [--sections 1234] [--only "NAME;NAME"]

Builds the 512-wide, V = 9487, 20-step bench decoder of bench/bench_decoding.py in a temporary folder and
compares quantizations of the traced greedy graph and of the beam-search step model (the same recipe on
both, from the same fp32 weights):

- fp32, as published;
- ``dynamic``: onnxruntime.quantization.quantize_dynamic (DynamicQuantizeLinear + MatMulInteger: one
  activation scale per tensor), per-tensor or per-channel weights, on i2h, h2h and logit (rewritten
  Gemm -> MatMul + Add first: the tool quantizes MatMul only);
- ``nbits``: MatMulNBits with 8-bit weights (utils/quantization/decoder.py) on several layer sets and
  block sizes, accuracy_level 4 (int8 compute) and, for one, 0 (fp32 compute: weight-only); one with the
  graph's BOS step left to ONNX Runtime's constant folding (without ``run_every_layer``).

Tables:

2. (made first) the whole decode through CaptionDecoder as the program runs it, beam 5 (graph + replay +
   search) and greedy (the graph), each after the feature model on a 640x480 photo (``--cold features``)
   or after 64 MB of writes (default: the decoder's weights are out of the caches either way); fp32 and one
   candidate loaded at a time, alternating; and how busy other processes kept the CPUs meanwhile (the
   machine may be shared: compare ratios from runs where that is near 0);
1. per variant: one greedy-graph run (cold and warm), one step of 1 and of 6 rows (warm);
3. the replay check on ``--replay-inputs`` random feature vectors: the step model, batched with 5 other
   rows as in the search, against the graph (mismatches, largest log-probability difference on the
   graph's words), and how much a row's step result changes when run alone;
4. quality against fp32 on ``--inputs`` random relu feature vectors: identical greedy and beam-5 captions,
   score and log-probability differences, the largest fp32 top-two gap where a greedy word changed; beside
   it fp32 weights rounded to fp16, to show how sensitive this random-weight decoder is.
"""

from __future__ import annotations

import argparse
import functools
import logging
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fc_inputs, prebuilt, timed_ms  # noqa: E402
from bench.photos import sample_crops  # noqa: E402
from tests.stand_in_models import (  # noqa: E402
    BENCH_EOS_BIAS,
    default_words,
    make_greedy_decoder,
    make_resnet101,
    random_decoder_weights,
)
from utils.decoding.decoder import CaptionDecoder, Replay  # noqa: E402
from utils.decoding.graph import GreedyGraphDecoder  # noqa: E402
from utils.decoding.options import DecodingOptions  # noqa: E402
from utils.decoding.step_model import OrtStepModel  # noqa: E402
from utils.decoding.weights import DecoderWeights, recover_weights  # noqa: E402
from utils.engine.preprocess import preprocess  # noqa: E402
from utils.engine.runtime import OnnxRuntimeNetwork  # noqa: E402
from utils.quantization.decoder import (  # noqa: E402
    BLOCK_SIZE,
    QUANTIZED_LAYERS,
    quantize_decoder_graph,
    quantize_linear_layers,
    quantize_step_graph,
    run_every_layer,
)

VOCAB = 9487
WIDTH = 512
FLUSH_FLOATS = 16 * 1024 * 1024  # 64 MB: more than the 32 MB L3 that could hold the decoder's weights

Transform = Callable[[onnx.ModelProto, DecoderWeights], onnx.ModelProto]


@dataclass(frozen=True)
class Variant:
    name: str
    transform: Transform | None  # the same function makes the graph and the step-model graphs
    timed: bool = True  # in the whole-decode timing (table 2)
    checked: bool = True  # in the replay and quality tables (3, 4)


def _is_traced_graph(model: onnx.ModelProto) -> bool:
    return any(i.name == "fc_feats" for i in model.graph.input)


def _layers(names: tuple[str, ...], block: int = BLOCK_SIZE, accuracy: int = 4, run_time: bool = True) -> Transform:
    """MatMulNBits on the layers ``names`` (DecoderWeights fields); for the traced graph, every layer then
    computed at run time (run_every_layer) unless ``run_time`` is False."""
    def transform(model: onnx.ModelProto, w: DecoderWeights) -> onnx.ModelProto:
        if block == BLOCK_SIZE and accuracy == 4 and run_time:
            if _is_traced_graph(model):
                return quantize_decoder_graph(model, w, names)  # what the program does
            return quantize_step_graph(model, w, names)
        q = quantize_linear_layers(model, [getattr(w, n) for n in names], block)
        for node in q.graph.node:
            for a in node.attribute:
                if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                    a.i = accuracy
        return run_every_layer(q) if run_time and _is_traced_graph(q) else q
    return transform


def _dynamic(per_channel: bool) -> Transform:
    def transform(model: onnx.ModelProto, w: DecoderWeights) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        rewritten = _gemm_to_matmul(model, [getattr(w, n) for n in CORE])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "q.onnx"
            quantize_dynamic(rewritten, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"])
            q = onnx.load(str(out))
            return run_every_layer(q) if _is_traced_graph(q) else q
    return transform


def _gemm_to_matmul(model: onnx.ModelProto, matrices: list[np.ndarray]) -> onnx.ModelProto:
    """Gemm(transB=1) layers whose weight is one of ``matrices`` as MatMul(W^T) + Add."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    nodes, added = [], set()
    for node in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "Gemm" and node.input[1] in inits else None
        if w is None or attrs.get("transB", 0) != 1 or not any(np.array_equal(w, t) for t in matrices):
            nodes.append(node)
            continue
        name = node.input[1] + "_t"
        if name not in added:
            m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
            added.add(name)
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [node.output[0] + "_mm"]))
        nodes.append(helper.make_node("Add", [node.output[0] + "_mm", node.input[2]], [node.output[0]]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in m.graph.node for i in n.input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m


def _fp16_weights(model: onnx.ModelProto, w: DecoderWeights) -> onnx.ModelProto:
    """Sensitivity reference: every float initializer rounded to fp16 and back (still an fp32 graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    return m


LOGIT = ("logit_w",)
LOGIT_I2H = ("i2h_w", "logit_w")
CORE = ("i2h_w", "h2h_w", "logit_w")  # QUANTIZED_LAYERS
VARIANTS = [
    Variant("fp32", None),
    Variant("dynamic per-tensor, 3 layers", _dynamic(False)),
    Variant("dynamic per-channel, 3 layers", _dynamic(True), timed=False, checked=False),
    Variant("nbits logit b32", _layers(LOGIT)),
    Variant("nbits logit b32, folded BOS step", _layers(LOGIT, run_time=False), timed=False),
    Variant("nbits i2h+logit b32", _layers(LOGIT_I2H)),
    Variant("nbits h2h+logit b32", _layers(("h2h_w", "logit_w"))),
    Variant("nbits i2h+h2h+logit b32 (program)", _layers(QUANTIZED_LAYERS)),
    Variant("nbits i2h+h2h+logit b64", _layers(CORE, 64)),
    Variant("nbits i2h+h2h+logit b128", _layers(CORE, 128), timed=False),
    Variant("nbits 4 layers b32 (+fc_embed)", _layers((*CORE, "fc_w")), timed=False),
    Variant("nbits i2h+h2h+logit b32 acc0", _layers(CORE, accuracy=0), timed=False, checked=False),
]
SENSITIVITY = "fp32, weights rounded to fp16"


class TransformedStepModel(OrtStepModel):
    def __init__(self, w: DecoderWeights, transform: Transform | None) -> None:
        super().__init__(w, quantize=None if transform is None else functools.partial(_swap, transform, w))


def _swap(transform: Transform, w: DecoderWeights, model: onnx.ModelProto) -> onnx.ModelProto:
    return transform(model, w)


class Built:
    def __init__(self, variant: Variant, fp32: onnx.ModelProto, fp32_bytes: bytes, w: DecoderWeights,
                 words: list[str]) -> None:
        self.variant = variant
        graph_model = fp32 if variant.transform is None else variant.transform(fp32, w)
        self.graph = GreedyGraphDecoder(OnnxRuntimeNetwork(graph_model.SerializeToString()))
        self.step_model = TransformedStepModel(w, variant.transform)
        self.decoder = CaptionDecoder(self.graph, fp32_bytes, words, name="bench decoder",
                                      step_model=functools.partial(prebuilt, self.step_model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models",
                        help="folder with model_feat.onnx (a ResNet-101 is built if missing)")
    parser.add_argument("--images", type=int, default=8, help="640x480 photos for the decode timing (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument("--replay-inputs", type=int, default=50, help="feature vectors for the replay check")
    parser.add_argument("--inputs", type=int, default=100, help="feature vectors for the quality comparison")
    parser.add_argument("--only", default="",
                        help="variant names, separated by ';', to compare with fp32 (default: all)")
    parser.add_argument("--sections", default="1234", help="which of the four tables to make (default 1234)")
    parser.add_argument("--cold", choices=("flush", "features"), default="flush",
                        help="before each decode timing: 64 MB of writes (default), or the feature model on the photo "
                             "as in the program (~1 s each on 2 cores)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # replay fallbacks are counted here, not logged

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"CPU: {cpu}; onnxruntime {ort.__version__}, onnx {onnx.__version__}\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        feat_path = args.models / "model_feat.onnx"
        if not feat_path.exists():
            feat_path = folder / "model_feat.onnx"
            make_resnet101(feat_path)
        decoder_path = folder / "model_fc_nsc.onnx"
        make_greedy_decoder(decoder_path, random_decoder_weights(VOCAB, WIDTH, WIDTH, seed=3, eos_bias=BENCH_EOS_BIAS),
                            steps=20)
        fp32_bytes = decoder_path.read_bytes()
        fp32 = onnx.load_from_string(fp32_bytes)
        w = recover_weights(fp32)
        words = default_words(VOCAB)
        chosen = [v for v in VARIANTS if v.name == "fp32" or not args.only or v.name in args.only.split(";")]

        feature = ort.InferenceSession(str(feat_path), providers=["CPUExecutionProvider"])
        feat_in = feature.get_inputs()[0].name
        photos = [preprocess(p) for p in sample_crops(args.images)]
        photo_fcs = [np.asarray(feature.run(None, {feat_in: x})[0], np.float32).reshape(1, -1) for x in photos]

        if "2" in args.sections:
            # First, and with only fp32 and one candidate loaded at a time, as the program has one decoder:
            # with every variant's sessions in the process, fp32 measured 30-60% slower.
            before = "the feature model run" if args.cold == "features" else "64 MB written"
            print(f"2. decode through CaptionDecoder (beam 5: graph + replay + search; greedy: the graph), {before} "
                  f"before each; fp32 and one candidate at a time, alternating; {len(photos)} photos x {args.rounds} "
                  "rounds, medians (q1: lower quartiles)")
            print(f"   {'candidate':<34}{'fp32 beam 5':>12}{'int8':>8}{'ratio':>7}{'q1':>6}"
                  f"{'fp32 greedy':>13}{'int8':>7}{'ratio':>7}{'q1':>6}{'replay passed':>15}{'others busy':>13}")
            for variant in chosen:
                if variant.name != "fp32" and variant.timed:
                    pair = {v.name: Built(v, fp32, fp32_bytes, w, words) for v in (VARIANTS[0], variant)}
                    _decodes(pair, photos, photo_fcs, feature if args.cold == "features" else None, args.rounds)
                    del pair
            print()
        built = {v.name: Built(v, fp32, fp32_bytes, w, words) for v in chosen}
        if "1" in args.sections:
            _parts(built, photo_fcs, args.rounds)
        beam5 = DecodingOptions(beam_size=5)
        # 3. replay check
        if "3" not in args.sections and "4" not in args.sections:
            return 0
        print(f"\n3. replay: int8 step model (batched with 5 other rows) against the int8 graph, "
              f"{args.replay_inputs} random feature vectors")
        print(f"   {'variant':<34}{'word/lp mismatches':>19}{'max |dlp|':>11}{'row dependence':>16}")
        rng = np.random.default_rng(7)
        checked = {k: b for k, b in built.items() if b.variant.checked}
        for name, b in checked.items():
            mismatches, worst, dependence = 0, 0.0, 0.0
            for fc in fc_inputs(args.replay_inputs, seed=1):
                problem, diff, dep = _replay(b, fc, rng)
                mismatches += problem is not None
                worst, dependence = max(worst, diff), max(dependence, dep)
            print(f"   {name:<34}{mismatches:>19}{worst:11.2g}{dependence:16.2g}")

        # 4. quality
        print(f"\n4. against fp32, {args.inputs} random relu feature vectors")
        inputs = fc_inputs(args.inputs, seed=2)
        reference = [_quality_run(built["fp32"], fc, beam5) for fc in inputs]
        others = {k: b for k, b in checked.items() if k != "fp32"}
        rounded = _fp16_weights(fp32, w)  # an fp32 model of its own: its weights are recovered from it
        others[SENSITIVITY] = Built(Variant(SENSITIVITY, None), rounded, rounded.SerializeToString(),
                                    recover_weights(rounded), words)
        print(f"   {'variant':<34}{'greedy same':>12}{'beam5 same':>11}{'searched':>9}{'|d score|':>10}"
              f"{'|dlp| step 1':>13}{'flip margin':>12}")
        for name, b in others.items():
            runs = [_quality_run(b, fc, beam5) for fc in inputs]
            pairs = list(zip(runs, reference, strict=True))
            same_greedy = sum(a.greedy == r.greedy for a, r in pairs)
            same_beam = sum(a.beam == r.beam for a, r in pairs)
            searched = sum(a.searched for a, _ in pairs)
            score = statistics.median(abs(a.score - r.score) for a, r in pairs)
            first = statistics.median(float(np.abs(a.logprobs[0] - r.logprobs[0]).max()) for a, r in pairs)
            margins = [_flip_margin(a, r) for a, r in pairs if a.greedy != r.greedy]
            margin = max(margins) if margins else float("nan")
            print(f"   {name:<34}{same_greedy:>8}/{len(inputs)}{same_beam:>7}/{len(inputs)}{searched:>9}{score:10.3g}"
                  f"{first:13.3g}{margin:12.3g}")
        print("   greedy/beam5 same: identical word sequences; searched: beam 5 passed the replay (else greedy);\n"
              "   |d score|: median beam-5 score difference; |dlp| step 1: median over inputs of the largest\n"
              "   first-word log-probability difference; flip margin: the largest fp32 top-two gap at the first\n"
              "   greedy word that changed")
        gaps = np.concatenate([_margins(r) for r in reference])
        print("   fp32's greedy steps with a top-two gap under 0.05 / 0.1 / 0.25 / 0.5 nats: "
              + " / ".join(f"{100 * float(np.mean(gaps < t)):.0f}%" for t in (0.05, 0.1, 0.25, 0.5)))
    return 0


def _flush(buffer: np.ndarray = np.zeros(FLUSH_FLOATS, np.float32)) -> None:  # noqa: B008 (one buffer, kept)
    buffer += 1.0


def _parts(built: dict[str, Built], fcs: list[np.ndarray], rounds: int) -> None:
    """Table 1: a greedy-graph run cold and warm, a step of 1 and 6 rows; variants alternate, medians."""
    print("1. one greedy-graph run (cold: after 64 MB of writes; warm: repeated) and one step (warm), medians")
    graph_cold: dict[str, list[float]] = {k: [] for k in built}
    graph_warm: dict[str, list[float]] = {k: [] for k in built}
    step1: dict[str, list[float]] = {k: [] for k in built}
    step6: dict[str, list[float]] = {k: [] for k in built}
    state = built["fp32"].step_model.start(fcs[0])[1]
    six = (np.repeat(state[0], 6, 0), np.repeat(state[1], 6, 0))
    words6 = np.array([5, 17, 230, 1200, 4000, 9000], np.int64)
    for r in range(rounds):
        order = list(built) if r % 2 == 0 else list(built)[::-1]
        for name in order:
            b = built[name]
            for fc in fcs:
                _flush()
                graph_cold[name].append(timed_ms(functools.partial(b.graph.run, fc)))
            b.graph.run(fcs[0])
            graph_warm[name] += [timed_ms(functools.partial(b.graph.run, fc)) for fc in fcs]
            for _ in range(20):
                step1[name].append(timed_ms(functools.partial(b.step_model.step, words6[:1], (state[0], state[1]))))
                step6[name].append(timed_ms(functools.partial(b.step_model.step, words6, six)))
    base_cold = statistics.median(graph_cold["fp32"])
    print(f"   {'variant':<34}{'graph cold':>11}{'ratio':>7}{'warm':>9}{'step 1 row':>12}{'6 rows':>9}")
    for name in built:
        cold = statistics.median(graph_cold[name])
        print(f"   {name:<34}{cold:9.1f}ms{cold / base_cold:7.2f}{statistics.median(graph_warm[name]):7.1f}ms"
              f"{statistics.median(step1[name]):10.2f}ms{statistics.median(step6[name]):7.2f}ms")


def _decodes(pair: dict[str, Built], photos: list[np.ndarray], fcs: list[np.ndarray],
             feature: ort.InferenceSession | None, rounds: int) -> None:
    """One row of table 2: fp32 and one candidate, whole decodes as the program runs them, each after the
    feature model (or a cache flush)."""
    beam5 = DecodingOptions(beam_size=5)
    passed = {k: sum(_decode_source(b, fc, beam5) == "search" for fc in fcs) for k, b in pair.items()}
    decode: dict[str, list[float]] = {k: [] for k in pair}
    greedy: dict[str, list[float]] = {k: [] for k in pair}
    with OtherLoad() as load:
        _decode_rounds(pair, photos, fcs, feature, rounds, decode, greedy)
    fp32, name = list(pair)
    cells = []
    for times in (decode, greedy):
        a, b = statistics.median(times[fp32]), statistics.median(times[name])
        q1 = _lower_quartile(times[name]) / _lower_quartile(times[fp32])
        cells.append(f"{a:10.1f}ms{b:6.1f}ms{b / a:7.2f}{q1:6.2f}")
    print(f"   {name:<34}{cells[0]}{cells[1]:>33}{passed[name]:>13}/{len(fcs)}{100 * load.share:12.0f}%")


class OtherLoad:
    """How busy other processes kept the CPUs meanwhile (the machine may be shared), from /proc."""

    def __enter__(self) -> OtherLoad:
        self._start = self._ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._ticks()
        busy, own, total = (b - a for a, b in zip(self._start, end, strict=True))
        self.share = max(busy - own, 0) / total if total > 0 else float("nan")

    @staticmethod
    def _ticks() -> tuple[int, int, int]:
        """(busy ticks of all CPUs, this process's ticks, all ticks of all CPUs); zeros where /proc is missing."""
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0, 0, 0
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
        return sum(cpu) - idle, int(fields[11]) + int(fields[12]), sum(cpu)


def _decode_rounds(timed: dict[str, Built], photos: list[np.ndarray], fcs: list[np.ndarray],
                   feature: ort.InferenceSession | None, rounds: int, decode: dict[str, list[float]],
                   greedy: dict[str, list[float]]) -> None:
    beam5, greedy_options = DecodingOptions(beam_size=5), DecodingOptions(beam_size=1)
    for r in range(rounds):
        order = list(timed) if r % 2 == 0 else list(timed)[::-1]
        for x, fc in zip(photos, fcs, strict=True):
            for name in order:
                for options, times in ((beam5, decode), (greedy_options, greedy)):
                    if feature is not None:
                        feature.run(None, {feature.get_inputs()[0].name: x})
                    else:
                        _flush()
                    times[name].append(timed_ms(functools.partial(timed[name].decoder, fc, options)))


def _lower_quartile(values: list[float]) -> float:
    return float(np.percentile(values, 25))


def _decode_source(b: Built, fc: np.ndarray, options: DecodingOptions) -> str:
    b.decoder(fc, options)
    return b.decoder.last_source


def _replay(b: Built, fc: np.ndarray, rng: np.random.Generator) -> tuple[str | None, float, float]:
    """The replay as CaptionDecoder runs it (one extra row beside 5 search rows), its worst difference
    from the graph on the graph's words, and the most a row's step output changed when run alone."""
    model = b.step_model
    seq, logprobs = b.graph.run(fc)
    start = model.start(fc)
    replay = Replay(model, start, seq)
    rows = (np.repeat(start[1][0], 5, 0), np.repeat(start[1][1], 5, 0))
    while not replay.done:
        _, rows = replay.step(rng.integers(1, model.n_tokens, 5), rows)
    problem = replay.mismatch(logprobs)
    diff = max(abs(float(lp[word]) - float(logprobs[t, word]))
               for t, (word, lp) in enumerate(zip(replay.words.tolist(), replay.logprobs, strict=True)))
    # Row independence on fresh states: each row alone against the same row inside a batch of 6.
    width = start[1][0].shape[1]
    h = np.tanh(rng.standard_normal((6, width))).astype(np.float32)
    c = rng.standard_normal((6, width)).astype(np.float32)
    words6 = rng.integers(1, model.n_tokens, 6)
    batched = model.step(words6, (h, c))
    dependence = 0.0
    for i in range(6):
        alone = model.step(words6[i : i + 1], (h[i : i + 1], c[i : i + 1]))
        dependence = max(dependence, float(np.abs(batched[0][i] - alone[0][0]).max()),
                         float(np.abs(batched[1][0][i] - alone[1][0][0]).max()),
                         float(np.abs(batched[1][1][i] - alone[1][1][0]).max()))
    return problem, diff, dependence


@dataclass(frozen=True)
class Run:
    greedy: list[int]  # the graph's greedy caption
    logprobs: np.ndarray  # the graph's log-probabilities (T, V+1)
    beam: list[int]  # the beam-5 caption
    score: float  # its score
    searched: bool  # beam search was used (the replay passed)


def _quality_run(b: Built, fc: np.ndarray, options: DecodingOptions) -> Run:
    _, logprobs = b.graph.run(fc)
    greedy = b.decoder(fc, DecodingOptions(beam_size=1))
    decoded = b.decoder(fc, DecodingOptions(beam_size=options.beam_size, nbest=1))
    return Run(greedy.indices, logprobs, decoded.indices, decoded.nbest[0].score if decoded.nbest else 0.0,
               b.decoder.last_source == "search")


def _flip_margin(changed: Run, fp32: Run) -> float:
    """fp32's top-two gap at the first position where the other greedy caption differs."""
    a, r = [*changed.greedy, 0], [*fp32.greedy, 0]
    t = next(i for i in range(min(len(a), len(r))) if a[i] != r[i])
    top = np.sort(fp32.logprobs[t])[-2:]
    return float(top[1] - top[0])


def _margins(run: Run) -> np.ndarray:
    """fp32's top-two gap at each word of its greedy caption (and its end)."""
    steps = min(len(run.greedy) + 1, len(run.logprobs))
    top = np.sort(run.logprobs[:steps], axis=1)[:, -2:]
    return np.asarray(top[:, 1] - top[:, 0])


if __name__ == "__main__":
    sys.exit(main())
