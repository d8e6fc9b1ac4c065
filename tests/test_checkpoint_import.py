"""Importing a checkpoint: the files written, the decoder against the independent reference, and the refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import imported_names
from tests import reference_search
from tests.checkpoint_files import (
    FIXTURES,
    fixture_weights,
    fixture_words,
    newfc_opt,
    newfc_state,
    py2_infos_pickle,
    write_legacy_checkpoint,
    write_zip_checkpoint,
)
from tests.stand_in_models import NewFCParams, make_feature_model, reference_greedy
from utils.checkpoint.importer import import_checkpoint
from utils.decoding.options import DecodingOptions
from utils.decoding.weights import recover_weights
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.engine.model_files import VerifiedFile
from utils.engine.runtime import RuntimeOptions
from utils.quantization.decoder import first_word_difference, int8_decoder_model
from utils.support.errors import CaptionError

WORDS = fixture_words()
FEATURES = 16
# Inputs like the feature model's: non-negative, O(1).
FC = [np.maximum(np.random.default_rng(s).standard_normal((1, FEATURES)) + 0.3, 0).astype(np.float32)
      for s in range(12)]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    make_feature_model(folder / "model_feat.onnx", out_dim=FEATURES)
    return folder


def _import(model_dir: Path, pth: str = "model-zip.pth", infos: str = "infos_py2.pkl", name: str = "mine") -> Path:
    return import_checkpoint(FIXTURES / pth, FIXTURES / infos, name, model_dir).folder


@pytest.mark.parametrize(("pth", "infos"), [("model-zip.pth", "infos_py2.pkl"), ("model-legacy.pth", "infos_py3.pkl"),
                                            ("model-zip.pth", "infos_py3.pkl"), ("model-legacy.pth", "infos_py2.pkl")])
def test_files_weights_and_greedy_output(model_dir: Path, pth: str, infos: str) -> None:
    folder = _import(model_dir, pth, infos)
    assert folder == model_dir / "imported" / "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.sha256", "vocab.json",
                                                         "vocab.json.sha256"]
    for name in ("model.onnx", "vocab.json"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert (folder / f"{name}.sha256").read_text() == f"{digest}  {name}\n"  # sha256sum -c format
    assert json.loads((folder / "vocab.json").read_text()) == {str(i): w for i, w in enumerate(WORDS, 1)}
    assert imported_names(model_dir) == ["mine"]

    data = (folder / "model.onnx").read_bytes()
    model = onnx.load_from_string(data)
    assert model.opset_import[0].version == 11
    assert [i.name for i in model.graph.input] == ["fc_feats"]
    assert [o.name for o in model.graph.output] == ["seq", "logprobs"]
    w = fixture_weights()
    recovered = recover_weights(data)
    assert recovered.source == "by name" and recovered.steps == 20
    for ours, theirs in [("embed", "embed"), ("fc_w", "fc_embed_w"), ("fc_b", "fc_embed_b"), ("i2h_w", "i2h_w"),
                         ("i2h_b", "i2h_b"), ("h2h_w", "h2h_w"), ("h2h_b", "h2h_b"), ("logit_w", "logit_w"),
                         ("logit_b", "logit_b")]:
        np.testing.assert_array_equal(getattr(recovered, ours), getattr(w, theirs))

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    captions = set()
    for fc in FC:
        seq, logprobs = session.run(None, {"fc_feats": fc})
        ref_seq, ref_logprobs = reference_greedy(w, fc)
        assert seq.dtype == np.int64 and seq.shape == (1, 20) and logprobs.shape == (1, 20, 11)
        np.testing.assert_array_equal(seq, ref_seq)
        np.testing.assert_allclose(logprobs, ref_logprobs, atol=1e-4)
        captions.add(tuple(seq[0]))
    assert len(captions) > 3 and all(c[0] != 0 for c in captions)  # real, image-dependent captions


def _captioner(model_dir: Path, **options: object) -> Captioner:
    return Captioner(CaptionerOptions(model="mine", model_dir=model_dir, offline=True, progress=False,
                                      runtime=RuntimeOptions(backend="onnxruntime"), **options))  # type: ignore[arg-type]


def _reference_beam(w: NewFCParams, fc: np.ndarray, beam_size: int) -> list[int]:
    options = reference_search.Options(beam_size=beam_size, suppress_unk=True, unk_index=len(WORDS))
    tokens = reference_search.beam_search(reference_search.Net(w), fc, options)[0][0]
    return reference_search.words_before_end(tokens)


def test_beam_search_matches_the_reference(model_dir: Path) -> None:
    _import(model_dir)
    captioner = _captioner(model_dir)
    w = fixture_weights()
    differs = 0
    for fc in FC:
        for beam in (2, 3, 5):
            text = captioner.caption_features(fc, DecodingOptions(beam_size=beam))
            assert text == " ".join(WORDS[i - 1] for i in _reference_beam(w, fc, beam))
        greedy = reference_greedy(w, fc)[0][0]
        differs += _reference_beam(w, fc, 3) != [int(i) for i in greedy[: list(greedy).index(0)]]
    assert differs  # beam search was exercised, not the graph's greedy words


def test_int8_decoder_from_an_imported_model(model_dir: Path) -> None:
    folder = _import(model_dir)
    source = VerifiedFile("onnx", folder / "model.onnx", (folder / "model.onnx").read_bytes())
    int8 = int8_decoder_model(source, progress=False)
    assert int8.path.parent == folder and int8.path.exists()
    assert first_word_difference(source.onnx_model(), int8.data) < 0.5
    assert imported_names(model_dir) == ["mine"]  # the cached int8 file is not a model of its own


def _write_variant(tmp_path: Path, state: dict[str, np.ndarray], opt: dict[str, object],
                   words: list[str] = WORDS, legacy: bool = False) -> tuple[Path, Path]:
    pth, infos = tmp_path / "model-variant.pth", tmp_path / "infos_variant.pkl"
    (write_legacy_checkpoint if legacy else write_zip_checkpoint)(pth, state)
    infos.write_bytes(py2_infos_pickle(opt, words))
    return pth, infos


def _state(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    state = newfc_state(fixture_weights())
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


OPT = newfc_opt(10, 16, 16, FEATURES)


@pytest.mark.parametrize(
    ("state", "opt", "words", "message"),
    [
        (_state(), {**OPT, "vocab_size": 11}, [*WORDS[:-1], "zebra", "UNK"],
         r"embed\.weight has shape \(11, 16\), the infos \(vocab_size 11, .*\) give \(12, 16\);.*"
         r"logit\.weight has shape \(11, 16\)"),
        (_state(), {**OPT, "vocab_size": 11}, WORDS, "opt.vocab_size is 11 but its vocab has 10 words"),
        (_state(logit__bias=None), OPT, WORDS, r"does not fit infos_variant\.pkl: missing logit\.bias"),
        (_state(ctx2att__weight=np.zeros((4, 4), np.float32)), OPT, WORDS,
         r"unexpected ctx2att\.weight \(is it a newfc checkpoint\?\)"),
        (_state(), {**OPT, "caption_model": "topdown"}, WORDS,
         r"caption_model is 'topdown'; only newfc checkpoints .* can be imported"),
        (_state(), {**OPT, "rnn_size": 32}, WORDS, r"_core\.h2h\.weight has shape \(80, 16\), the infos .*rnn_size 32"),
        (_state(), {**OPT, "num_layers": 2}, WORDS, "num_layers is 2"),
        (_state(), {**OPT, "fc_feat_size": 2048}, WORDS, r"fc_embed\.weight has shape \(16, 16\).* give \(16, 2048\)"),
        (_state(embed__weight=np.zeros((11, 16), np.int64)), OPT, WORDS, r"embed\.weight holds int64 values"),
        (_state(logit__bias=np.full(11, np.nan, np.float32)), OPT, WORDS, r"logit\.bias holds non-finite values"),
        ({**_state(), "module.extra": np.zeros(1, np.float32)}, OPT, WORDS, "mixes keys with and without"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused(model_dir: Path, tmp_path: Path, state: dict[str, np.ndarray],
                                                   opt: dict[str, object], words: list[str], message: str) -> None:
    pth, infos = _write_variant(tmp_path, state, opt, words)
    with pytest.raises(CaptionError, match=message) as info:
        import_checkpoint(pth, infos, "mine", model_dir)
    assert "\n" not in str(info.value)
    assert not (model_dir / "imported").exists() or not any((model_dir / "imported").iterdir())


def test_module_prefixed_variant_imports(model_dir: Path, tmp_path: Path) -> None:
    pth, infos = _write_variant(tmp_path, newfc_state(fixture_weights(), "module."), OPT, legacy=True)
    assert import_checkpoint(pth, infos, "prefixed", model_dir).sizes.rnn == 16


@pytest.mark.parametrize(("name", "message"), [("fc_nsc", "published model's name"), ("My", "not a valid model name"),
                                                ("../up", "not a valid model name"), ("", "not a valid model name"),
                                                ("a" * 41, "not a valid model name")])
def test_names(model_dir: Path, name: str, message: str) -> None:
    with pytest.raises(CaptionError, match=message):
        _import(model_dir, name=name)
    assert not (model_dir / "imported").exists()


def test_an_existing_name_is_refused_and_kept(model_dir: Path) -> None:
    folder = _import(model_dir)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(CaptionError, match=r"a model named mine is already imported .*delete that folder"):
        _import(model_dir, "model-legacy.pth", "infos_py3.pkl")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_interrupted_import_leaves_nothing_behind(model_dir: Path) -> None:
    leftover = model_dir / "imported" / ".mine.part-0badf00d"
    leftover.mkdir(parents=True)
    (leftover / "model.onnx").write_bytes(b"half")
    assert imported_names(model_dir) == []
    _import(model_dir)
    assert sorted(p.name for p in (model_dir / "imported").iterdir()) == ["mine"]


@pytest.mark.parametrize("damaged", ["model.onnx", "vocab.json"])
def test_a_damaged_imported_file_says_to_import_again(model_dir: Path, damaged: str) -> None:
    folder = _import(model_dir)
    data = bytearray((folder / damaged).read_bytes())
    data[len(data) // 2] ^= 1
    (folder / damaged).write_bytes(bytes(data))
    for offline in (True, False):  # nothing to download either way
        with pytest.raises(CaptionError, match=r"is corrupt \(checksum differs from the one recorded when it was "
                                               r"imported.*\); import the checkpoint again: delete .*imported/mine"):
            Captioner(CaptionerOptions(model="mine", model_dir=model_dir, offline=offline, progress=False,
                                       runtime=RuntimeOptions(backend="onnxruntime")))


def test_a_missing_imported_vocabulary(model_dir: Path) -> None:
    folder = _import(model_dir)
    (folder / "vocab.json").unlink()
    with pytest.raises(CaptionError, match=r"vocab\.json is missing; import the checkpoint again"):
        _captioner(model_dir)


def test_unknown_names_and_the_ailia_backend(model_dir: Path) -> None:
    with pytest.raises(CaptionError, match=r"unknown model 'mine' \(choose from fc, fc_rl, fc_nsc\)"):
        _captioner(model_dir)
    _import(model_dir)
    with pytest.raises(CaptionError, match="imported model, which runs on ONNX Runtime only"):
        Captioner(CaptionerOptions(model="mine", model_dir=model_dir, offline=True,
                                   runtime=RuntimeOptions(backend="ailia")))
    auto = Captioner(CaptionerOptions(model="mine", model_dir=model_dir, offline=True, progress=False))
    assert auto.backend == "onnxruntime"
    shutil.rmtree(model_dir / "imported" / "mine")
    assert imported_names(model_dir) == []
