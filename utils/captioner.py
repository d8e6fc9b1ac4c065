"""The Python API: load a model set once, then caption BGR images."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import DEFAULT_DECODER, ModelFile, default_model_dir, model_set
from utils.decoding.decoder import CaptionDecoder, StepModelFactory
from utils.decoding.graph import GreedyGraphDecoder
from utils.decoding.options import DecodingOptions
from utils.decoding.step_model import OrtStepModel
from utils.errors import CaptionError
from utils.model_files import VerifiedFile, load_model_set
from utils.preprocess import preprocess
from utils.quantization import PRECISIONS, Precision
from utils.quantization.decoder import int8_decoder_model, int8_decoder_pays, int8_step_model
from utils.quantization.features import int8_feature_model
from utils.quantization.methods import cpu_flags, method_for_flags
from utils.runtime import AiliaNetwork, Network, OnnxRuntimeNetwork, RuntimeOptions, first_input, require_ailia
from vocab import Vocabulary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionerOptions:
    model: str = DEFAULT_DECODER
    model_dir: Path | None = None  # None: $IMAGE_CAPTIONING_MODEL_DIR or the project's models/
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    offline: bool = False  # never download; report missing or corrupt files instead
    progress: bool = True  # download progress bars on a terminal; the one-line note while an int8 model is made
    # fp32: the published models, exactly. int8: the feature model quantized for this CPU (made from the
    # fp32 file on first use and cached in the model folder; README, "int8"); ONNX Runtime only.
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")


@dataclass(frozen=True)
class CaptionResult:
    caption: str
    indices: list[int]  # vocabulary indices of the emitted words
    confidence: float | None  # mean log-probability of the emitted words
    timings: dict[str, float]  # milliseconds per stage: preprocess, features, decode
    nbest: list[RankedCaption] | None = None  # with DecodingOptions.nbest: the best captions, best first


@dataclass(frozen=True)
class RankedCaption:
    caption: str
    score: float  # see README, "Decoding options"
    indices: list[int]


@dataclass
class _Networks:
    feature: Network
    decoder: Network
    decoder_file: VerifiedFile  # the published (fp32) decoder file, whose weights beam search recovers
    step_model: StepModelFactory = OrtStepModel  # beam search's step model: int8 beside an int8 decoder


class Captioner:
    """Caption images with one of the published decoders on ailia or ONNX Runtime."""

    def __init__(self, options: CaptionerOptions | None = None) -> None:
        self.options = options or CaptionerOptions()
        start = time.perf_counter()
        model_dir = self.options.model_dir or default_model_dir()
        nets, vocab = _load(self.options, model_dir)
        self.backend = nets.feature.backend
        self.vocab: Vocabulary = vocab
        self._feature = nets.feature
        self._feature_input = first_input(nets.feature)
        self._graph = GreedyGraphDecoder(nets.decoder)
        self._decoder = CaptionDecoder(self._graph, nets.decoder_file.onnx_model(), vocab.words,
                                       name=nets.decoder_file.path.name, step_model=nets.step_model)
        self._check_roles(nets)
        self.load_ms = 1e3 * (time.perf_counter() - start)

    def _check_roles(self, nets: _Networks) -> None:
        """Run both models once on a tiny image, so that a valid model file in the wrong place (a decoder
        where the feature model belongs, a feature model of another width) is found at load, in one
        line naming the file, instead of failing every image."""
        try:
            fc = self.features(np.zeros((8, 8, 3), np.uint8))
        except CaptionError as exc:
            raise CaptionError(f"{exc}; is {nets.feature.name} the feature model (model_feat.onnx)?") from None
        try:
            self._graph.run(fc)
        except CaptionError as exc:
            raise CaptionError(f"{exc}; is {nets.decoder.name} a decoder that takes this feature model's "
                               f"{fc.shape[1]} values?") from None

    @property
    def model(self) -> str:
        return self.options.model

    def features(self, image: np.ndarray) -> np.ndarray:
        """The (1, F) image vector of a BGR image."""
        return self._run_features(preprocess(image))

    def caption_features(self, fc: np.ndarray, options: DecodingOptions | None = None) -> str:
        """The caption of a (1, F) feature vector as ``features`` returns it (to compare feature models)."""
        options = options or DecodingOptions()
        return self.vocab.caption(self._decoder(fc, options).indices, options.remove_bad_endings)

    def _run_features(self, chw: np.ndarray) -> np.ndarray:
        # The published model returns a bare (F,) vector; the decoder takes a batch of one.
        return np.ascontiguousarray(self._feature.run({self._feature_input: chw})[0], np.float32).reshape(1, -1)

    def caption(self, image: np.ndarray, options: DecodingOptions | None = None) -> CaptionResult:
        """Caption one image: BGR (as OpenCV gives it), grey or BGRA, 8- or 16-bit."""
        options = options or DecodingOptions()
        t0 = time.perf_counter()
        chw = preprocess(image)
        t1 = time.perf_counter()
        fc = self._run_features(chw)
        t2 = time.perf_counter()
        decoded = self._decoder(fc, options)
        text = self.vocab.caption(decoded.indices, options.remove_bad_endings)
        nbest = None if options.nbest is None else [
            RankedCaption(self.vocab.caption(c.indices, options.remove_bad_endings), c.score, c.indices)
            for c in decoded.nbest
        ]
        t3 = time.perf_counter()
        return CaptionResult(
            caption=text,
            indices=decoded.indices,
            confidence=decoded.confidence,
            timings={"preprocess": 1e3 * (t1 - t0), "features": 1e3 * (t2 - t1), "decode": 1e3 * (t3 - t2)},
            nbest=nbest,
        )


def _load(options: CaptionerOptions, model_dir: Path) -> tuple[_Networks, Vocabulary]:
    backend = options.runtime.backend
    required = model_set(options.model, with_prototxt=False)
    files = load_model_set(required, model_dir, options.offline, options.progress)
    vocab = files[required.vocab.name].vocabulary()
    feature, decoder = files[required.feature[0].name], files[required.decoder[0].name]
    if options.precision == "int8":
        if backend == "ailia":
            raise CaptionError("int8 precision runs on ONNX Runtime only, not on the ailia SDK; "
                               "use the onnxruntime or auto backend, or fp32 precision")
        if backend == "auto":
            logger.warning("int8 precision runs on ONNX Runtime; the ailia SDK is not tried")
        flags = cpu_flags()  # read once: both choices depend on it
        feature = int8_feature_model(feature, options.progress, method_for_flags(flags))
        if int8_decoder_pays(flags):
            return _onnxruntime_networks(options, feature, int8_decoder_model(decoder, options.progress),
                                         decoder, int8_step_model), vocab
        logger.debug("the decoder stays fp32 on this CPU (no VNNI)")
    elif backend in ("ailia", "auto"):
        try:
            return _load_ailia(options, model_dir, feature, decoder), vocab
        except CaptionError as exc:
            if backend == "ailia":
                raise
            logger.warning("ailia SDK not used: %s. Running on ONNX Runtime instead.", exc)
    return _onnxruntime_networks(options, feature, decoder, decoder), vocab


def _onnxruntime_networks(options: CaptionerOptions, feature: VerifiedFile, decoder: VerifiedFile,
                          published_decoder: VerifiedFile, step_model: StepModelFactory = OrtStepModel) -> _Networks:
    """``decoder`` runs; ``published_decoder`` is the file its weights are recovered from (the same file
    at fp32; for the int8 decoder, the fp32 file it was made from, which ``step_model`` quantizes alike)."""
    return _Networks(
        feature=OnnxRuntimeNetwork(feature.data, options.runtime, name=str(feature.path)),
        decoder=OnnxRuntimeNetwork(decoder.data, options.runtime, name=str(decoder.path)),
        decoder_file=published_decoder,
        step_model=step_model,
    )


def _load_ailia(options: CaptionerOptions, model_dir: Path, feature: VerifiedFile,
                decoder: VerifiedFile) -> _Networks:
    """The ailia SDK opens its files by name: the .prototxt files are only checked here."""
    require_ailia()  # before fetching the .prototxt files only ailia reads
    full = model_set(options.model, with_prototxt=True)
    protos: list[ModelFile] = [f for f in full.all if f.kind == "prototxt"]
    missing = [f.name for f in protos if not (model_dir / f.name).exists()]
    if missing and options.offline and options.runtime.backend == "auto":
        # Said in one line: with ONNX Runtime to fall back on, the download instructions are not needed.
        raise CaptionError(f"{', '.join(missing)} not in {model_dir} and --offline forbids downloading")
    checked = load_model_set(full, model_dir, options.offline, options.progress, files=protos)

    def net(onnx_file: VerifiedFile) -> Network:
        prototxt = checked[onnx_file.path.name + ".prototxt"].path
        return AiliaNetwork(prototxt, onnx_file.path, options.runtime)

    return _Networks(feature=net(feature), decoder=net(decoder), decoder_file=decoder)
