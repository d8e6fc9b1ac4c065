"""The Python API: load a model set once, then caption BGR images."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar, overload

import numpy as np

from models import ModelFile, default_model_dir, imported_names, is_imported, model_choices, model_set
from utils.decoding.decoder import CaptionDecoder, StepModelFactory
from utils.decoding.graph import GreedyGraphDecoder
from utils.decoding.options import DecodingOptions
from utils.decoding.step_model import OrtStepModel
from utils.engine.caption_types import (  # noqa: F401  (MAX_WORKERS, default_workers: the API's, from here too)
    MAX_WORKERS,
    CaptionerOptions,
    CaptionResult,
    RankedCaption,
    available_cores,
    combination,
    default_workers,
)
from utils.engine.compatibility import runtimes
from utils.engine.model_files import VerifiedFile, load_model_set
from utils.engine.pipeline import ordered_map
from utils.engine.preprocess import preprocess, read_image
from utils.engine.runtime import AiliaNetwork, Network, OnnxRuntimeNetwork, first_input, require_ailia
from utils.quantization.models import int8_models
from utils.support.errors import CaptionError
from utils.support.stopping import StopRequest
from vocab import Vocabulary

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Captioned(Generic[T]):
    """One image of ``Captioner.caption_many``: its caption, or why it has none."""

    source: T  # the item as given (an image), or its ``CaptionItem.source``
    result: CaptionResult | None
    error: CaptionError | None = None
    image: np.ndarray | None = None  # the decoded image, with ``CaptionItem(keep_image=True)``
    runs: tuple[dict[str, float], ...] = ()  # each run's timings (several with ``repeats``)


def _wanted() -> bool:
    return True


@dataclass(frozen=True)
class ModelInput:
    """An image its caller has decoded and preprocessed already (a service's decoding threads), as a
    ``CaptionItem``'s ``read`` may give it: the model input, what it cost (milliseconds), and ``claim``,
    asked just before the model run whether the caption is still wanted."""

    chw: np.ndarray
    timings: dict[str, float]
    claim: Callable[[], bool] = _wanted


@dataclass(frozen=True)
class CaptionItem(Generic[T]):
    """One item of ``Captioner.caption_many``, with what it needs besides the defaults: ``source`` is what
    its ``Captioned.source`` gives back; ``read`` turns it into a BGR array or a ``ModelInput`` (None: a
    ``Path`` is read with ``read_image``, an array used as it is); ``options`` decode it (None:
    ``caption_many``'s); ``keep_image`` hands the decoded image back in its result (to draw on)."""

    source: T
    read: Callable[[T], np.ndarray | ModelInput] | None = None
    options: DecodingOptions | None = None
    keep_image: bool = False


class GivenUp(CaptionError):
    """An image whose ``ModelInput.claim`` said it was no longer wanted: skipped without a model run."""


@dataclass(frozen=True)
class _Prepared:
    """An image read and preprocessed, ready for a worker."""

    image: np.ndarray | None  # the decoded image, when it is handed back
    chw: np.ndarray
    timings: dict[str, float]
    options: DecodingOptions
    claim: Callable[[], bool] = _wanted


def _as_item(item: T | CaptionItem[T]) -> CaptionItem[T]:
    return item if isinstance(item, CaptionItem) else CaptionItem(item)


def _image_of(source: object) -> np.ndarray:
    """An image given as an array, or as a file to read (a ``Path``: a plain string is not taken for a
    file name)."""
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, os.PathLike):
        return read_image(Path(source))
    raise CaptionError(f"not an image array: {type(source).__name__}")


@dataclass
class _Networks:
    feature: Network
    decoder: Network


@dataclass
class _Plan:
    """What runs: the files for ONNX Runtime (one set of sessions per worker), or the ailia SDK's
    networks (one worker)."""

    feature: VerifiedFile
    decoder: VerifiedFile  # the decoder that runs
    published_decoder: VerifiedFile  # the fp32 file whose weights beam search recovers (see _onnxruntime_plan)
    step_model: StepModelFactory = OrtStepModel  # beam search's step model: int8 beside an int8 decoder
    ailia: _Networks | None = None


@dataclass
class _Worker:
    """One worker's own sessions: the feature model and the decoder graph."""

    feature: Network
    feature_input: str
    graph: GreedyGraphDecoder
    decoder: CaptionDecoder


class Captioner:
    """Caption images with one of the published decoders on ailia or ONNX Runtime."""

    def __init__(self, options: CaptionerOptions | None = None) -> None:
        self.options = options or CaptionerOptions()
        start = time.perf_counter()
        model_dir = self.options.model_dir or default_model_dir()
        plan, vocab = _load(self.options, model_dir)
        self.vocab: Vocabulary = vocab
        if plan.ailia is None and self.options.workers > (cores := available_cores()):
            # Allowed (a machine's cores may be shared out differently later), but rarely what was meant.
            logger.warning("%d workers on %d cores: each holds its own model sessions, so memory grows with "
                           "them while speed does not; %d or fewer is enough here", self.options.workers, cores,
                           cores)
        networks = [plan.ailia] if plan.ailia is not None else _onnxruntime_networks(plan, self.options)
        if len(networks) < self.options.workers:
            logger.info("the ailia SDK runs one worker")
        first = networks[0]
        self.backend = first.feature.backend
        graph = GreedyGraphDecoder(first.decoder)
        decoder = CaptionDecoder(graph, plan.published_decoder.onnx_model(), vocab.words,
                                 name=plan.published_decoder.path.name, step_model=plan.step_model)
        self._workers = [_Worker(first.feature, first_input(first.feature), graph, decoder)]
        for nets in networks[1:]:
            other = GreedyGraphDecoder(nets.decoder)
            self._workers.append(_Worker(nets.feature, first_input(nets.feature), other, decoder.with_graph(other)))
        self._check_roles(first)
        self.load_ms = 1e3 * (time.perf_counter() - start)
        logger.debug("%d worker%s on %s", len(self._workers), "" if len(self._workers) == 1 else "s", self.backend)

    def _check_roles(self, nets: _Networks) -> None:
        """Run both models once on a tiny image, so that a valid model file in the wrong place (a decoder
        where the feature model belongs, a feature model of another width) is found at load, in one
        line naming the file, instead of failing every image."""
        try:
            fc = self.features(np.zeros((8, 8, 3), np.uint8))
        except CaptionError as exc:
            raise CaptionError(f"{exc}; is {nets.feature.name} the feature model (model_feat.onnx)?") from None
        try:
            self._workers[0].graph.run(fc)
        except CaptionError as exc:
            raise CaptionError(f"{exc}; is {nets.decoder.name} a decoder that takes this feature model's "
                               f"{fc.shape[1]} values?") from None

    @property
    def workers(self) -> int:
        """How many images are captioned at once by ``caption_many``."""
        return len(self._workers)

    @property
    def model(self) -> str:
        return self.options.model

    def features(self, image: np.ndarray) -> np.ndarray:
        """The (1, F) image vector of a BGR image."""
        return _run_features(self._workers[0], preprocess(image))

    def caption_features(self, fc: np.ndarray, options: DecodingOptions | None = None) -> str:
        """The caption of a (1, F) feature vector as ``features`` returns it (to compare feature models)."""
        options = options or DecodingOptions()
        return self.vocab.caption(self._workers[0].decoder(fc, options).indices, options.remove_bad_endings)

    def caption(self, image: np.ndarray, options: DecodingOptions | None = None) -> CaptionResult:
        """Caption one image: BGR (as OpenCV gives it), grey or BGRA, 8- or 16-bit."""
        t0 = time.perf_counter()
        chw = preprocess(image)
        return self._caption(self._workers[0], chw, options or DecodingOptions(),
                             {"preprocess": 1e3 * (time.perf_counter() - t0)})

    # The overloads are for the type checker only: given CaptionItem[X]s alone, mypy infers T = Never from the
    # implementation's Iterable[T | CaptionItem[T]] (not X), so the first overload takes them.
    @overload
    def caption_many(self, items: Iterable[CaptionItem[T]], options: DecodingOptions | None = None,
                     stop: StopRequest | None = None, repeats: int = 1,
                     ordered: bool = True) -> Generator[Captioned[T], None, None]: ...

    @overload
    def caption_many(self, items: Iterable[T | CaptionItem[T]], options: DecodingOptions | None = None,
                     stop: StopRequest | None = None, repeats: int = 1,
                     ordered: bool = True) -> Generator[Captioned[T], None, None]: ...

    def caption_many(self, items: Iterable[T | CaptionItem[T]], options: DecodingOptions | None = None,
                     stop: StopRequest | None = None, repeats: int = 1,
                     ordered: bool = True) -> Generator[Captioned[T], None, None]:
        """Caption many images with every worker at once, yielding the results in input order.

        An item is a BGR array, an image file (a ``Path``, read with ``read_image``), or a ``CaptionItem``
        saying what it needs besides: its own ``read`` (to an array, or to a ``ModelInput``, preprocessed
        already), its own ``options`` (in place of ``options``), ``keep_image`` (its decoded image handed
        back, to draw on, kept until the next result is asked for). A bare item is ``CaptionItem(item)``.
        Reading and preprocessing run ahead of the models in threads of their own.
        An image that cannot be read or captioned gives a ``Captioned`` with ``error`` set, and the rest go
        on. Memory stays bounded however many images there are: a few images per worker are in flight at
        a time, and ``items`` may be a lazy iterable. ``repeats`` captions each image that many times,
        read included, and gives every run's timings (a benchmark). Once ``stop`` is set (a Ctrl-C,
        utils/support/stopping.py), the results end early. ``ordered=False`` yields each result as soon
        as it is done, so that one slow item (a service's request) holds back no other (``repeats`` must
        then be 1)."""
        if not ordered and repeats != 1:
            raise ValueError("caption_many: repeats needs the results in order (ordered=True)")
        default = options or DecodingOptions()

        def prepare(run: tuple[CaptionItem[T], int]) -> _Prepared:
            item = run[0]
            t0 = time.perf_counter()
            image = (item.read or _image_of)(item.source)
            t1 = time.perf_counter()
            asked = default if item.options is None else item.options
            if isinstance(image, ModelInput):
                return _Prepared(None, image.chw, dict(image.timings), asked, image.claim)
            if not isinstance(image, np.ndarray):
                raise CaptionError(f"not an image array: {type(image).__name__}")
            chw = preprocess(image)
            timings = {"read": 1e3 * (t1 - t0)} if image is not item.source else {}
            timings["preprocess"] = 1e3 * (time.perf_counter() - t1)
            return _Prepared(image if item.keep_image else None, chw, timings, asked)

        def work_for(worker: _Worker) -> Callable[[_Prepared], tuple[np.ndarray | None, CaptionResult]]:
            def work(prepared: _Prepared) -> tuple[np.ndarray | None, CaptionResult]:
                if not prepared.claim():
                    raise GivenUp("no longer wanted")
                return prepared.image, self._caption(worker, prepared.chw, prepared.options, prepared.timings)

            return work

        runs = ((item, run) for item in (_as_item(given) for given in items) for run in range(repeats))
        done_runs: list[dict[str, float]] = []
        error: CaptionError | None = None
        for done in ordered_map(runs, prepare, [work_for(w) for w in self._workers],
                                readers=_readers(len(self._workers)), stop=stop, ordered=ordered):
            item, run = done.item
            image, result = done.value if done.value is not None else (None, None)
            error = error or done.error
            if result is not None:
                done_runs.append(result.timings)
            if run == repeats - 1:  # an image's runs come in a row: this was its last
                yield Captioned(item.source, None if error else result, error, image, tuple(done_runs))
                done_runs, error = [], None

    def _caption(self, worker: _Worker, chw: np.ndarray, options: DecodingOptions,
                 timings: dict[str, float]) -> CaptionResult:
        t1 = time.perf_counter()
        fc = _run_features(worker, chw)
        t2 = time.perf_counter()
        decoded = worker.decoder(fc, options)
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
            timings={**timings, "features": 1e3 * (t2 - t1), "decode": 1e3 * (t3 - t2)},
            nbest=nbest,
            model=self.model,
            backend=self.backend,
        )


def _run_features(worker: _Worker, chw: np.ndarray) -> np.ndarray:
    # The published model returns a bare (F,) vector; the decoder takes a batch of one.
    return np.ascontiguousarray(worker.feature.run({worker.feature_input: chw})[0], np.float32).reshape(1, -1)


def _readers(workers: int) -> int:
    """Reading threads for this many workers. Decoding a 640x480 JPEG and preprocessing it take a few
    per cent of a caption, but a 12-megapixel photo takes ~0.1 s to decode: one reader per two workers
    keeps up with either."""
    return max(1, (workers + 1) // 2)


def _load(options: CaptionerOptions, model_dir: Path) -> tuple[_Plan, Vocabulary]:
    imported = is_imported(options.model)
    if imported and options.model not in imported_names(model_dir):
        raise CaptionError(f"unknown model {options.model!r} (choose from {model_choices(model_dir)})")
    where = runtimes(combination(options, imported))
    if where.ailia_skipped is not None:
        (logger.warning if where.warn else logger.info)("%s", where.ailia_skipped)
    required = model_set(options.model, with_prototxt=False)
    files = load_model_set(required, model_dir, options.offline, options.progress)
    vocab = files[required.vocab.name].vocabulary()
    feature, decoder = files[required.feature[0].name], files[required.decoder[0].name]
    if options.precision == "int8":
        int8 = int8_models(feature, decoder, options.progress)
        return _Plan(int8.feature, int8.decoder, decoder, int8.step_model), vocab
    if where.order[0] == "ailia":
        try:
            return _Plan(feature, decoder, decoder, ailia=_load_ailia(options, model_dir, feature, decoder)), vocab
        except CaptionError as exc:
            if len(where.order) == 1:
                raise
            logger.warning("ailia SDK not used: %s. Running on ONNX Runtime instead.", exc)
    return _Plan(feature, decoder, decoder), vocab


def _onnxruntime_networks(plan: _Plan, options: CaptionerOptions) -> list[_Networks]:
    """One feature and one decoder session per worker. ``plan.decoder`` runs; ``plan.published_decoder``
    is the file its weights are recovered from (the same file at fp32; for the int8 decoder, the fp32
    file it was made from, which ``plan.step_model`` quantizes alike)."""
    runtime = options.runtime
    if options.workers > 1 and runtime.intra_op_threads is None:
        # Each worker gets its share of the cores; more threads than that would only make them queue.
        runtime = replace(runtime, intra_op_threads=max(1, available_cores() // options.workers))

    def session(file: VerifiedFile) -> Network:
        return OnnxRuntimeNetwork(file.data, runtime, name=str(file.path))

    files = [plan.feature, plan.decoder] * options.workers
    # Made at once, a thread each up to the cores: ONNX Runtime optimises a graph without holding the GIL,
    # so a second worker's sessions cost start-up little more than the first's.
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), available_cores())),
                            thread_name_prefix="session") as pool:
        sessions = list(pool.map(session, files))
    return [_Networks(feature=sessions[i], decoder=sessions[i + 1]) for i in range(0, len(sessions), 2)]


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

    return _Networks(feature=net(feature), decoder=net(decoder))
