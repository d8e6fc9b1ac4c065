"""The real CLI in a subprocess, on test models built with the published interfaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SAMPLE, RunCli
from tests.reference import BAD_ENDINGS, imread, reference_caption
from tests.stand_in_models import NewFCParams, make_model_set, make_resnet_stem_model, write_vocab


def test_default_input_is_the_sample_photo(run_cli: RunCli, models: Path, weights: dict[str, NewFCParams]) -> None:
    proc = run_cli("--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 0, proc.stderr
    expected, _ = reference_caption(models, weights["fc_nsc"], SAMPLE)
    assert proc.stdout == expected + "\n"
    assert proc.stderr == ""  # quiet by default


@pytest.mark.parametrize("model", ["fc", "fc_rl", "fc_nsc"])
def test_each_model_matches_the_reference(
    run_cli: RunCli, models: Path, weights: dict[str, NewFCParams], photos: list[Path], model: str
) -> None:
    proc = run_cli("-i", *photos, "--model", model, "--model-dir", models, "--offline", "--onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in photos]
    for record, photo in zip(records, photos, strict=True):
        caption, confidence = reference_caption(models, weights[model], photo)
        assert record["caption"] == caption
        assert record["model"] == model and record["backend"] == "onnxruntime"
        assert record["confidence"] == pytest.approx(confidence, abs=1e-4)
        assert set(record["timings"]) == {"read", "preprocess", "features", "decode", "save"}
    assert len({r["caption"] for r in records}) > 1  # the images give different captions


def test_folder_and_glob(run_cli: RunCli, models: Path, photos: list[Path], weights: dict[str, NewFCParams]) -> None:
    folder = photos[0].parent
    proc = run_cli("-i", folder, str(folder / "*.png"), "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    in_folder = sorted(p.name for p in photos)
    pngs = sorted(str(p) for p in photos if p.suffix == ".png")
    assert [line.split(": ")[0] for line in lines] == [str(folder / n) for n in in_folder] + pngs
    for line in lines:
        name, caption = line.split(": ", 1)
        assert caption == reference_caption(models, weights["fc_nsc"], Path(name))[0]


def test_remove_bad_endings(run_cli: RunCli, tmp_path: Path, photos: list[Path]) -> None:
    # A vocabulary mostly of bad endings, so that greedy captions end with one.
    models = tmp_path / "bad"
    weights = make_model_set(models, vocab_size=12, eos_bias=3.0)
    words = [*BAD_ENDINGS[:9], "cat", "dog", "UNK"]
    write_vocab(models / "vocab.json", words)
    plain = run_cli("-i", *photos, "--model-dir", models, "--offline", "--onnx", "--json")
    stripped = run_cli("-i", *photos, "--model-dir", models, "--offline", "--onnx", "--json", "--remove-bad-endings")
    assert plain.returncode == stripped.returncode == 0
    before = [json.loads(line)["caption"] for line in plain.stdout.splitlines()]
    after = [json.loads(line)["caption"] for line in stripped.stdout.splitlines()]
    for photo, b, a in zip(photos, before, after, strict=True):
        assert b == reference_caption(models, weights["fc_nsc"], photo)[0]
        assert a == reference_caption(models, weights["fc_nsc"], photo, remove_bad_endings=True)[0]
    assert before != after


def test_savepath_single(run_cli: RunCli, models: Path, photos: list[Path], tmp_path: Path) -> None:
    source = photos[1]
    before = source.read_bytes()
    out = tmp_path / "annotated.png"
    proc = run_cli("-i", source, "-s", out, "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 0, proc.stderr
    assert source.read_bytes() == before
    saved, original = imread(out), imread(source)
    assert saved.shape == original.shape
    assert (saved[:5] > 240).all()  # the white caption bar
    assert (saved[:30] < 80).any()  # with dark text on it
    assert np.array_equal(saved[-20:], original[-20:])  # the rest of the photo untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_savepath_many_goes_to_a_folder(run_cli: RunCli, models: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("-i", photos[0].parent, "-s", out, "--model-dir", models, "--offline", "--onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in photos)
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        assert Path(record["output"]) == out / Path(record["input"]).name


def test_savepath_equal_to_input_is_refused(run_cli: RunCli, models: Path, photos: list[Path], tmp_path: Path) -> None:
    source = tmp_path / "mine.png"
    shutil.copy(photos[0], source)
    before = source.read_bytes()
    proc = run_cli("-i", source, "-s", source, "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 1
    assert "would overwrite the input" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert source.read_bytes() == before and proc.stdout == ""
    proc = run_cli("-i", source, photos[0], "-s", tmp_path, "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 1 and "would overwrite the input" in proc.stderr
    assert source.read_bytes() == before


@pytest.mark.parametrize("where", ["file_parent", "missing_parent", "proc"])
def test_unwritable_savepath(run_cli: RunCli, models: Path, photos: list[Path], tmp_path: Path, where: str) -> None:
    target = {
        "file_parent": photos[0] / "out.png",
        "missing_parent": tmp_path / "no" / "such" / "out.png",
        "proc": Path("/proc/captioned.png"),  # refuses writes even to root
    }[where]
    proc = run_cli("-i", photos[0], "-s", target, "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "ERROR" in proc.stderr
    assert not target.exists()


def test_bad_inputs_each_reported_others_still_run(run_cli: RunCli, models: Path, photos: list[Path],
                                                   tmp_path: Path) -> None:
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    bad = ["missing.jpg", "empty_folder", "zero.jpg", "corrupt.png", "nomatch*.jpg"]
    proc = run_cli("-i", photos[0], *bad, photos[1], "--model-dir", models, "--offline", "--onnx", "--json")
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(photos[0]), *bad, str(photos[1])]
    assert records[0]["caption"] and records[-1]["caption"]
    for record, reason in zip(records[1:-1], ["does not exist", "has no images", "empty file", "not an image",
                                              "no image files match"], strict=True):
        assert record["caption"] is None and reason in record["error"]
    plain = run_cli("-i", *bad, "--model-dir", models, "--offline", "--onnx")
    assert plain.returncode == 1 and plain.stdout == ""
    assert len(plain.stderr.splitlines()) == len(bad)


def test_missing_input_does_not_load_models(run_cli: RunCli, tmp_path: Path) -> None:
    # No model files anywhere and offline: the input error must come first, alone.
    proc = run_cli("-i", "missing.jpg", "--model-dir", tmp_path / "nothing", "--offline")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "ERROR: missing.jpg does not exist"


def test_unknown_model_is_a_usage_error(run_cli: RunCli) -> None:
    proc = run_cli("--model", "fc_big")
    assert proc.returncode == 2 and "invalid choice: 'fc_big'" in proc.stderr


def test_offline_with_files_missing_lists_them_all(run_cli: RunCli, tmp_path: Path) -> None:
    empty = tmp_path / "empty_models"
    proc = run_cli("-i", SAMPLE, "--model-dir", empty, "--offline", "--onnx")
    assert proc.returncode == 1
    for name in ["model_feat.onnx", "model_fc_nsc.onnx", "vocab.json"]:
        assert str(empty.resolve() / name) in proc.stderr or str(empty / name) in proc.stderr
    assert "https://storage.googleapis.com/ailia-models/image_captioning_pytorch/model_feat.onnx" in proc.stderr
    assert "vocab.json" in proc.stderr and "raw.githubusercontent.com" in proc.stderr
    assert ".prototxt" not in proc.stderr  # ONNX Runtime does not need them
    assert not empty.exists() or not any(empty.iterdir())


def test_corrupt_cached_model_is_reported_offline(run_cli: RunCli, models: Path) -> None:
    ok = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--onnx")
    assert ok.returncode == 0  # records the checksums
    decoder = models / "model_fc_nsc.onnx"
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2] ^= 0xFF
    decoder.write_bytes(bytes(data))
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 1
    assert "model_fc_nsc.onnx" in proc.stderr and "corrupt" in proc.stderr


def test_model_dir_from_environment(run_cli: RunCli, models: Path) -> None:
    proc = run_cli("-i", SAMPLE, "--offline", "--onnx", env={"IMAGE_CAPTIONING_MODEL_DIR": str(models)})
    assert proc.returncode == 0, proc.stderr


def test_benchmark_table_and_json(run_cli: RunCli, models: Path, photos: list[Path]) -> None:
    proc = run_cli("-i", photos[0], photos[1], "-b", "-bc", "3", "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 0, proc.stderr
    assert "3 runs x 2 images" in proc.stdout
    table = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[3:]}
    assert set(table) == {"stage", "load", "read", "preprocess", "features", "decode", "save"}
    for stage in ["read", "preprocess", "features", "decode"]:
        low, mid, high = map(float, table[stage])
        assert 0 <= low <= mid <= high
    proc = run_cli("-i", photos[0], "-b", "-bc", "2", "--model-dir", models, "--offline", "--onnx", "--json")
    record = json.loads(proc.stdout)
    assert set(record["benchmark"]["features"]) == {"min", "median", "max"}
    bad = run_cli("-b", "-bc", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_debug_logs_details(run_cli: RunCli, models: Path) -> None:
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--onnx", "--debug")
    assert proc.returncode == 0 and "DEBUG" in proc.stderr


def _fake_missing_ailia(folder: Path) -> dict[str, str]:
    """An environment in which `import ailia` fails, as on a machine without the SDK."""
    package = folder / "no_ailia" / "ailia"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('No module named ailia')\n")
    from tests.conftest import ROOT

    return {"PYTHONPATH": f"{package.parent}:{ROOT}"}


def test_auto_falls_back_to_onnxruntime_without_a_licence(
    run_cli: RunCli, models: Path, weights: dict[str, NewFCParams]
) -> None:
    # The ailia SDK is installed (requirements.txt) but cannot fetch its licence here.
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--json")
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("WARNING: ailia SDK not used")
    assert "licence" in warning[0] and "ONNX Runtime" in warning[0]
    record = json.loads(proc.stdout)
    assert record["backend"] == "onnxruntime"
    assert record["caption"] == reference_caption(models, weights["fc_nsc"], SAMPLE)[0]


def test_backend_ailia_failing_is_an_error(run_cli: RunCli, models: Path) -> None:
    for flags in (["--backend", "ailia"], ["--backend", "ailia", "-e", "0", "--memory_mode", "3"]):
        proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", *flags)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.startswith("ERROR: the ailia SDK cannot load model_feat.onnx: its licence")
        assert len(proc.stderr.splitlines()) == 1


def test_ailia_not_installed(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    env = _fake_missing_ailia(tmp_path)
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", env=env)
    assert proc.returncode == 0 and proc.stdout.strip()
    assert proc.stderr.startswith("WARNING: ailia SDK not used: the ailia SDK is not installed")
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--backend", "ailia", env=env)
    assert proc.returncode == 1 and "not installed" in proc.stderr and "pip install ailia" in proc.stderr
    proc = run_cli("--env_list", env=env)
    assert proc.returncode == 1 and "not installed" in proc.stderr


def test_env_list(run_cli: RunCli) -> None:
    proc = run_cli("--env_list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("env_id 0: ")  # listing needs no licence


def test_onnx_flag_and_backend_onnxruntime_are_the_same(run_cli: RunCli, models: Path) -> None:
    a = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--onnx", "--json")
    b = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--backend", "onnxruntime", "--json")
    assert a.stderr == b.stderr == ""
    assert json.loads(a.stdout)["caption"] == json.loads(b.stdout)["caption"]


def test_tiny_images_on_a_resnet_shaped_model(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    make_resnet_stem_model(models / "model_feat.onnx")
    # The model itself cannot take a 2x5 image (ONNX Runtime fails or dies) ...
    probe = subprocess.run(
        [sys.executable, "-c", "import numpy as np, onnxruntime as ort, sys; "
         "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
         "s.run(None, {'img': np.zeros((3, 2, 5), np.float32)})", str(models / "model_feat.onnx")],
        capture_output=True, timeout=60,
    )
    assert probe.returncode != 0
    # ... but the program enlarges such images and captions them.
    images = []
    for h, w in [(1, 1), (2, 5), (5, 2), (1, 900)]:
        path = tmp_path / f"tiny_{h}x{w}.png"
        cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))
        images.append(path)
    proc = run_cli("-i", *images, "--model-dir", models, "--offline", "--onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    assert all(json.loads(line)["caption"] for line in proc.stdout.splitlines())


def test_auto_offline_without_prototxt_warns_in_one_line(run_cli: RunCli, models: Path) -> None:
    for proto in models.glob("*.prototxt"):
        proto.unlink()
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--offline")
    assert proc.returncode == 0 and proc.stdout.strip()
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("WARNING: ailia SDK not used: model_feat.onnx.prototxt, model_fc_nsc.onnx.prototxt")
    strict = run_cli("-i", SAMPLE, "--model-dir", models, "--offline", "--backend", "ailia")
    assert strict.returncode == 1 and "model_feat.onnx.prototxt" in strict.stderr and "https://" in strict.stderr
