"""Independent reference of the whole pipeline, written from docs/models.md and the demo's behaviour.

Shares nothing with the program's code: the CLI's captions are checked against this.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from tests import reference_search
from tests.stand_in_models import NewFCParams, reference_greedy

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
BAD_ENDINGS = ["with", "in", "on", "of", "a", "at", "to", "for", "an", "this", "his", "her", "that", "the"]


def demo_preprocess(rgb: np.ndarray) -> np.ndarray:
    """The demo's steps on an RGB uint8 image."""
    h, w, _ = rgb.shape
    if w >= 640:
        rgb = cv2.resize(rgb, (640, int(h * 640 / w)))
    x = ((rgb / 255.0 - MEAN) / STD).astype(np.float32)
    return x.transpose([2, 0, 1])


def imread(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"cannot read {path}"
    return image


def demo_read_rgb(path: Path) -> np.ndarray:
    """The demo's image loading: everything to BGRA, then to RGB."""
    img = imread(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)


def image_features(model_dir: Path, rgb: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model_feat.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"img": demo_preprocess(rgb)})[0], np.float32).reshape(1, -1)


def words_of(model_dir: Path, seq: np.ndarray, remove_bad_endings: bool = False) -> str:
    vocab = json.loads((model_dir / "vocab.json").read_text())
    words: list[str] = []
    for index in seq:
        if index == 0:
            break
        words.append(vocab[str(int(index))])
    if remove_bad_endings:
        # Upstream's rule: cut after the last word that is not a bad ending; all bad -> keep all.
        keep = [i for i, w in enumerate(words) if w not in BAD_ENDINGS]
        if keep:
            words = words[: keep[-1] + 1]
    return " ".join(words).replace("@@ ", "")


# The program's documented default decoding: beam search of width 5 with UNK suppressed (docs/decoding.md).
PROGRAM_BEAM_SIZE = 5


def reference_caption(
    model_dir: Path, weights: NewFCParams, image_path: Path, remove_bad_endings: bool = False,
    beam_size: int = PROGRAM_BEAM_SIZE,
) -> tuple[str, float]:
    """Caption and mean log-probability of its words, by the reference implementation.

    Beam size 1 without remove_bad_endings is the greedy graph; anything else upstream's search
    (tests/reference_search.py), with remove_bad_endings acting while decoding too."""
    fc = image_features(model_dir, demo_read_rgb(image_path))
    if beam_size == 1 and not remove_bad_endings:
        seq, logprobs = reference_greedy(weights, fc)
        n = int(np.argmax(seq[0] == 0)) if (seq[0] == 0).any() else seq.shape[1]
        confidence = float(np.mean([logprobs[0, t, seq[0, t]] for t in range(n)])) if n else float("nan")
        return words_of(model_dir, seq[0], remove_bad_endings), confidence
    vocab = json.loads((model_dir / "vocab.json").read_text())
    last = len(vocab)
    options = reference_search.Options(
        beam_size=beam_size, suppress_unk=True, unk_index=last if vocab[str(last)] == "UNK" else None,
        remove_bad_endings=remove_bad_endings,
        bad_indices=[int(k) for k, v in vocab.items() if v in reference_search.DECODE_BAD_ENDINGS],
    )
    net = reference_search.Net(weights)
    if beam_size == 1:
        tokens = reference_search.greedy(net, fc, options)
    else:
        tokens = reference_search.beam_search(net, fc, options)[0][0]
    words = reference_search.words_before_end(tokens)
    steps = reference_search.replay_logprobs(net, fc, tokens)
    confidence = float(np.mean([steps[t][w] for t, w in enumerate(words)])) if words else float("nan")
    return words_of(model_dir, np.array(tokens), remove_bad_endings), confidence
