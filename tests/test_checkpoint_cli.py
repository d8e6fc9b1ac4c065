"""--import-checkpoint and --model NAME through the real CLI in a subprocess."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tests import reference_search
from tests.checkpoint_files import FIXTURES, fixture_weights, fixture_words
from tests.conftest import RunCli
from tests.reference import demo_read_rgb, image_features
from tests.stand_in_models import make_feature_model, reference_greedy
from tests.test_checkpoint_unpickler import _System
from tests.video_helpers import make_video
from utils.quantization.decoder import int8_decoder_pays
from utils.quantization.methods import cpu_flags

WORDS = fixture_words()
HEADLESS = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    make_feature_model(folder / "model_feat.onnx", out_dim=16)  # the fixtures take 16-value image vectors
    return folder


def _import(run_cli: RunCli, model_dir: Path, name: str = "mine", pth: str = "model-zip.pth",
            infos: str = "infos_py2.pkl") -> None:
    proc = run_cli("--import-checkpoint", FIXTURES / pth, FIXTURES / infos, "--name", name, "--model-dir", model_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"imported {name}: 10 words, input_encoding_size 16, rnn_size 16")
    assert f"--model {name}" in proc.stdout
    # The fixtures' 16-value image vectors are not the published feature model's: said once, as a warning.
    assert proc.stderr.count("\n") == 1 and "takes 16-value image vectors" in proc.stderr


def _expected(model_dir: Path, photo: Path, beam_size: int) -> str:
    fc = image_features(model_dir, demo_read_rgb(photo))
    w = fixture_weights()
    if beam_size == 1:
        seq = reference_greedy(w, fc)[0][0].tolist()
        words = seq[: seq.index(0)] if 0 in seq else seq
    else:
        options = reference_search.Options(beam_size=beam_size, suppress_unk=True, unk_index=len(WORDS))
        best = reference_search.beam_search(reference_search.Net(w), fc, options)[0][0]
        words = reference_search.words_before_end(best)
    return " ".join(WORDS[i - 1] for i in words)


@pytest.mark.parametrize(("pth", "infos"), [("model-zip.pth", "infos_py2.pkl"), ("model-legacy.pth", "infos_py3.pkl")])
def test_import_then_caption_offline(run_cli: RunCli, model_dir: Path, photos: list[Path], pth: str,
                                     infos: str) -> None:
    _import(run_cli, model_dir, pth=pth, infos=infos)
    for beam in ("1", "3", None):  # None: the program's default (beam 5)
        flags = ["--beam-size", beam] if beam else []
        proc = run_cli("-i", *photos, "--model", "mine", "--model-dir", model_dir, "--offline", "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # auto backend: ONNX Runtime without a word about ailia
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["model"] for r in records] == ["mine"] * len(photos)
        assert [r["backend"] for r in records] == ["onnxruntime"] * len(photos)
        for record, photo in zip(records, photos, strict=True):
            assert record["caption"] == _expected(model_dir, photo, int(beam or 5)), (photo, beam)
        assert len({r["caption"] for r in records}) > 1


def test_int8_precision_on_an_imported_model(run_cli: RunCli, model_dir: Path, photos: list[Path]) -> None:
    _import(run_cli, model_dir)
    proc = run_cli("-i", *photos, "--model", "mine", "--model-dir", model_dir, "--offline", "--onnx",
                   "--precision", "int8", "--beam-size", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr and "WARNING" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == len(photos) and all(r["caption"] for r in records)
    assert list(model_dir.glob("model_feat.int8-*.onnx"))  # the feature model was quantized
    # On CPUs where it pays (VNNI) the decoder is quantized too, and cached beside the imported fp32 file.
    made = list((model_dir / "imported" / "mine").glob("model.int8-*.onnx"))
    assert bool(made) == int8_decoder_pays(cpu_flags())
    assert all(set(r["caption"].split()) <= set(WORDS) for r in records)


def test_video_mode(run_cli: RunCli, model_dir: Path, tmp_path: Path) -> None:
    _import(run_cli, model_dir)
    clip = make_video(tmp_path / "clip.avi", 30)
    proc = run_cli("-v", clip, "--model", "mine", "--model-dir", model_dir, "--offline", "--onnx", "--json",
                   env=HEADLESS)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 3 and all(r["model"] == "mine" and r["caption"] for r in records)


def test_help_and_unknown_model_list_imported_names(run_cli: RunCli, model_dir: Path) -> None:
    before = run_cli("--help", "--model-dir", model_dir)
    assert before.returncode == 0 and "none yet" in " ".join(before.stdout.split())
    _import(run_cli, model_dir)
    _import(run_cli, model_dir, name="second", pth="model-legacy.pth")
    after = run_cli("--model-dir", model_dir, "--help")
    assert "(in the model folder: mine, second)" in " ".join(after.stdout.split())
    env_dir = run_cli("--help", env={"IMAGE_CAPTIONING_MODEL_DIR": str(model_dir)})
    assert "mine, second" in " ".join(env_dir.stdout.split())
    proc = run_cli("--model", "mnie", "--model-dir", model_dir, "--offline")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (f"image_captioning_pytorch.py: error: argument --model: invalid choice: "
                                            f"'mnie' (choose from fc, fc_rl, fc_nsc; imported in {model_dir}: "
                                            "mine, second)")


@pytest.mark.parametrize("damaged", ["model.onnx", "vocab.json"])
def test_a_damaged_import_is_reported(run_cli: RunCli, model_dir: Path, damaged: str) -> None:
    _import(run_cli, model_dir)
    path = model_dir / "imported" / "mine" / damaged
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x20
    path.write_bytes(bytes(data))
    proc = run_cli("--model", "mine", "--model-dir", model_dir, "--onnx")  # online: still nothing to fetch
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"ERROR: {path} is corrupt (checksum differs from the one recorded when it was "
                                  "imported")
    assert f"import the checkpoint again: delete {path.parent}, then run --import-checkpoint" in proc.stderr


def test_refusals_through_the_cli(run_cli: RunCli, model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "infos_evil.pkl"
    evil.write_bytes(pickle.dumps({"opt": _System(f"touch {marker}")}, protocol=2))
    proc = run_cli("--import-checkpoint", FIXTURES / "model-zip.pth", evil, "--name", "evil", "--model-dir", model_dir)
    assert proc.returncode == 1 and not marker.exists()
    assert proc.stderr.count("\n") == 1 and "refused: it asks for posix.system" in proc.stderr
    assert not (model_dir / "imported" / "evil").exists()

    _import(run_cli, model_dir)
    again = run_cli("--import-checkpoint", FIXTURES / "model-zip.pth", FIXTURES / "infos_py3.pkl", "--name", "mine",
                    "--model-dir", model_dir)
    assert again.returncode == 1 and "a model named mine is already imported" in again.stderr
    ailia = run_cli("--model", "mine", "--model-dir", model_dir, "--offline", "--backend", "ailia")
    assert ailia.returncode == 1 and "runs on ONNX Runtime only" in ailia.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x"], "--name only applies to --import-checkpoint"),
        (["--import-checkpoint", "a.pth", "b.pkl"], "--import-checkpoint needs --name NAME"),
        (["--import-checkpoint", "a.pth", "b.pkl", "--name", "x", "-i", "p.png"], "cannot be used with -i/--input"),
        (["--import-checkpoint", "a.pth"], "expected 2 arguments"),
    ],
)
def test_usage_errors(run_cli: RunCli, args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_missing_checkpoint_file(run_cli: RunCli, model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("--import-checkpoint", tmp_path / "nope.pth", FIXTURES / "infos_py3.pkl", "--name", "x",
                   "--model-dir", model_dir)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"ERROR: cannot read {tmp_path / 'nope.pth'}: No such file or directory"


@pytest.mark.parametrize(("pth", "infos", "named", "what"), [
    ("infos_py2.pkl", "model-zip.pth", "model-zip.pth", "is a torch checkpoint, not an infos file"),
    ("infos_py3.pkl", "model-legacy.pth", "model-legacy.pth", "is a torch checkpoint, not an infos file"),
    ("infos_py3.pkl", "infos_py3.pkl", "infos_py3.pkl", "is an infos file, not a checkpoint"),
])
def test_files_in_the_wrong_order_are_named_as_such(run_cli: RunCli, model_dir: Path, pth: str, infos: str,
                                                    named: str, what: str) -> None:
    proc = run_cli("--import-checkpoint", FIXTURES / pth, FIXTURES / infos, "--name", "mine", "--model-dir", model_dir)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"{named} {what}: give MODEL.pth first, then INFOS.pkl" in proc.stderr
    assert not (model_dir / "imported").exists() or not any((model_dir / "imported").iterdir())
