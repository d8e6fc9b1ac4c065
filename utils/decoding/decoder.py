"""Upstream's decoding options on the published greedy graphs (docs/models.md §4, §6).

The traced graph always runs: its greedy words are the answer whenever the options ask for nothing
else (beam size 1 and no option that changes greedy decoding), and otherwise the reference the
recovered weights are checked against. For any other decoding, the weights are recovered from the
graph once (utils/decoding/weights.py), a step model is built from them (utils/decoding/step_model.py), and for every
image greedy decoding is replayed step by step: it must give exactly the graph's words (and their
log-probabilities), or the search's result (utils/decoding/search.py) is not used. If recovery or the replay
fails, one warning per run says why and the caption is the graph's greedy output.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from utils.decoding.filters import EOS, vocabulary_indices
from utils.decoding.graph import Candidate, Decoded, GreedyGraphDecoder
from utils.decoding.options import DecodingOptions
from utils.decoding.search import Hypothesis, SearchContext, State, StepModel, search
from utils.decoding.step_model import OrtStepModel
from utils.decoding.weights import DecoderWeights, RecoveryError, recover_weights
from vocab import caption_indices

logger = logging.getLogger(__name__)

# The replay's log-probability of each of the graph's words may differ from the graph's by at most this
# (float32 rounding of the same arithmetic is far below it; a wrong weight is far above it).
REPLAY_TOLERANCE = 1e-3

StepModelFactory = Callable[[DecoderWeights], StepModel]


def needs_search(options: DecodingOptions, steps: int) -> bool:
    """False when the graph's greedy output is exactly what the options ask for.

    Upstream's greedy path ignores suppress_UNK and the temperature, and the length penalty only
    changes scores; the other options change which words greedy decoding picks.
    """
    return (
        options.path != "sample"
        or not options.sample_method.greedy
        or options.decoding_constraint
        or options.block_trigrams
        or options.remove_bad_endings
        or (options.max_length or steps) > steps
    )


class CaptionDecoder:
    """Decodes one image's feature vector with DecodingOptions; see the module docstring.

    ``model`` is the decoder's ONNX file as the caller already has it, bytes or parsed (each model file is
    read, and parsed, once per process); the weights are recovered from it on first need, then it is let
    go. ``name`` (the file's name) is for messages."""

    def __init__(self, graph: GreedyGraphDecoder, model: bytes | onnx.ModelProto | None, words: Sequence[str],
                 name: str = "the decoder", step_model: StepModelFactory = OrtStepModel) -> None:
        self._graph = graph
        self._words = tuple(words)
        self._unk, self._bad_endings = vocabulary_indices(self._words)
        self._search = _SearchModel(model, name, self._words, step_model)
        self.last_source = "graph"  # "graph", "search" or "fallback": what made the last caption

    def with_graph(self, graph: GreedyGraphDecoder) -> CaptionDecoder:
        """A decoder for another worker's session of the same graph. The step model is shared (built
        once, for whichever worker needs it first): its sessions are stateless and may run concurrently."""
        twin = copy.copy(self)
        twin._graph, twin.last_source = graph, "graph"
        return twin

    def __call__(self, fc: np.ndarray, options: DecodingOptions | None = None) -> Decoded:
        options = options or DecodingOptions()
        seq, logprobs = self._graph.run(fc)
        # The steps the trace computed are known once the weights are recovered; a --max-length needs
        # them to tell whether the graph's own caption is long enough.
        if needs_search(options, int(seq.shape[0])) or options.max_length is not None:
            self._search.model()
        # Upstream's loop traced with an early stop pads its outputs with constant zeros after the
        # computed steps: those are not words the graph chose.
        steps = min(int(seq.shape[0]), self._search.traced_steps or int(seq.shape[0]))
        seq, logprobs = seq[:steps], logprobs[:steps]
        length = options.max_length or steps
        if not needs_search(options, steps):
            self.last_source = "graph"
            return _graph_result(seq, logprobs, options, length)
        model = self._search.model()
        problem = self._search.failure
        if model is not None:
            # The replay rides along as one more row of the search's own steps (a step costs about the
            # same for 1 or 6 rows); its verdict decides whether the search's result is used.
            start = model.start(fc)
            replay = Replay(model, start, seq)
            context = SearchContext(length, self._unk, self._bad_endings)
            hypotheses = search(replay, fc, options, context, np.random.default_rng(options.seed), start)
            problem = replay.mismatch(logprobs)
        if model is None or problem is not None:
            self._search.warn(options, problem or "unknown reason")
            self.last_source = "fallback"
            return _graph_result(seq, logprobs, options, min(length, steps))
        self.last_source = "search"
        return _search_result(hypotheses, options)


class _SearchModel:
    """The step model of one decoder file, built on first need and shared by every worker's decoder."""

    def __init__(self, model: bytes | onnx.ModelProto | None, name: str, words: tuple[str, ...],
                 factory: StepModelFactory) -> None:
        self._onnx_model = model
        self._name = name
        self._words = words
        self._factory = factory
        self._model: StepModel | None = None
        self.failure: str | None = None  # why no step model can be built
        self.traced_steps: int | None = None  # steps the graph computes, from the recovered weights
        self._warned = False
        self._lock = threading.Lock()

    def model(self) -> StepModel | None:
        """The step model; None (with ``failure`` set) if the weights cannot be had."""
        with self._lock:
            if self._model is None and self.failure is None:
                try:
                    self._model = self._build()
                except RecoveryError as exc:
                    self.failure = f"its weights could not be recovered ({exc})"
                else:
                    logger.debug("decoder weights recovered from %s", self._name)
                self._onnx_model = None  # built or failed for good: its ~50 MB are no longer needed
            return self._model

    def _build(self) -> StepModel:
        if self._onnx_model is None:
            raise RecoveryError("the decoder's ONNX file is not known")
        weights = recover_weights(self._onnx_model)
        self.traced_steps = weights.steps
        if weights.vocab_size != len(self._words):
            raise RecoveryError(
                f"the decoder has {weights.vocab_size} words but the vocabulary {len(self._words)}"
            )
        try:
            return self._factory(weights)
        except Exception as exc:  # ONNX Runtime raises several types for a graph it cannot run
            raise RecoveryError(f"no step model could be built from them: {exc}") from exc

    def warn(self, options: DecodingOptions, why: str) -> None:
        """Once per run at warning level (every worker shares this), then at debug level."""
        message = (f"{options.method_description} is not available for {self._name}: {why}. "
                   "Captions are the graph's own greedy output instead.")
        with self._lock:
            first, self._warned = not self._warned, True
        if first:
            logger.warning("%s", message)
        else:
            logger.debug("%s", message)


class Replay:
    """Greedy decoding of the graph's own words, replayed with a step model, checked against the graph.

    Used as a step model itself: each ``step`` of another decoding carries the replay's next word as one
    extra row. ``mismatch`` finishes whatever the other decoding did not carry, then compares.
    """

    def __init__(self, model: StepModel, start: tuple[np.ndarray, State], seq: np.ndarray) -> None:
        self.model = model
        self.n_tokens = model.n_tokens
        ends = np.flatnonzero(seq == EOS)
        # The graph's words up to its first 0: every one of them is the argmax of its step.
        self.words = seq[: int(ends[0]) + 1 if len(ends) else len(seq)].astype(np.int64)
        self.logprobs: list[np.ndarray] = [start[0][0]]  # the replay's distribution for word t
        self._state = start[1]

    @property
    def done(self) -> bool:
        return len(self.logprobs) >= len(self.words)

    def start(self, fc: np.ndarray) -> tuple[np.ndarray, State]:
        return self.model.start(fc)

    def step(self, words: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        if self.done:
            return self.model.step(words, state)
        t = len(self.logprobs)
        rows = np.concatenate([words, self.words[t - 1 : t]])
        logprobs, (h, c) = self.model.step(rows, (np.concatenate([state[0], self._state[0]]),
                                                  np.concatenate([state[1], self._state[1]])))
        self.logprobs.append(logprobs[-1])
        self._state = (h[-1:], c[-1:])
        return logprobs[:-1], (h[:-1], c[:-1])

    def mismatch(self, graph_logprobs: np.ndarray) -> str | None:
        """None if the replay gives the graph's words (and their log-probabilities), else why not."""
        while not self.done:
            t = len(self.logprobs)
            logprobs, self._state = self.model.step(self.words[t - 1 : t], self._state)
            self.logprobs.append(logprobs[0])
        if self.logprobs[0].shape[0] != graph_logprobs.shape[1]:
            return "the recovered weights give a different number of words than the graph"
        for t, (word, ours) in enumerate(zip(self.words.tolist(), self.logprobs, strict=True)):
            best = int(np.argmax(ours))
            if best != word:
                return (f"replaying greedy decoding with the recovered weights gives word index {best} at step "
                        f"{t + 1} where the graph chose {word}")
            difference = abs(float(ours[word]) - float(graph_logprobs[t, word]))
            if not difference <= REPLAY_TOLERANCE:
                return (f"replaying greedy decoding with the recovered weights gives log-probabilities "
                        f"{difference:.3g} away from the graph's at step {t + 1}")
        return None


def replay_mismatch(model: StepModel, start: tuple[np.ndarray, State], seq: np.ndarray,
                    graph_logprobs: np.ndarray) -> str | None:
    """The replay check on its own: None if ``model`` gives the graph's greedy words, else why not."""
    return Replay(model, start, seq).mismatch(graph_logprobs)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(np.asarray(values, dtype=np.float64))) if len(values) else None


def _graph_result(seq: np.ndarray, logprobs: np.ndarray, options: DecodingOptions, length: int) -> Decoded:
    """The graph's greedy caption, cut to ``length`` words; its score as greedy decoding's (see _search_result)."""
    row = seq[:length]
    words = caption_indices(row.tolist())
    picked = [float(logprobs[t, w]) for t, w in enumerate(words)]
    confidence = _mean(picked)
    nbest: tuple[Candidate, ...] = ()
    if options.nbest:
        tokens = len(words) + (1 if len(words) < len(row) else 0)  # the closing 0, when it came in time
        total = float(np.sum([logprobs[t, int(row[t])] for t in range(tokens)], dtype=np.float32))
        score = options.length_penalty(tokens, total) if tokens else 0.0
        nbest = (Candidate(words, score, confidence),)
    return Decoded(words, confidence, nbest)


def _search_result(hypotheses: list[Hypothesis], options: DecodingOptions) -> Decoded:
    """The first hypothesis as the caption; distinct captions as the n-best list.

    Beam search keeps upstream's order (best first; group by group for diverse beam search), diverse
    sampling its group order; samples are ranked by score.
    """
    candidates: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    for h in hypotheses:
        words = caption_indices(h.tokens)
        if tuple(words) in seen:
            continue
        seen.add(tuple(words))
        candidates.append(Candidate(words, h.score, _mean(h.raw_logprobs[: len(words)])))
    if options.path == "sample":  # one row per caption asked for; a single row needs no sorting
        candidates.sort(key=lambda c: -c.score)
    best = candidates[0]
    return Decoded(best.indices, best.confidence, tuple(candidates[: options.nbest]) if options.nbest else ())
