"""The int8 feature model in-process: quality, the cache and its record, failures that leave nothing.

Real ONNX Runtime quantization of the small test feature model (tests/builders.make_feature_model,
about 0.8 MB: quantizing it takes well under a second)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from models import model_set
from tests.conftest import ROOT
from tests.stand_in_models import make_feature_model
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.engine.model_files import VerifiedFile, load_file, sha256_bytes
from utils.engine.preprocess import preprocess, read_image
from utils.engine.runtime import OnnxRuntimeNetwork, RuntimeOptions
from utils.quantization import cache
from utils.quantization.calibration import CALIBRATION_PHOTOS, SAMPLES_DIR
from utils.quantization.features import int8_feature_model, int8_path
from utils.quantization.methods import QDQ_U8S8_PER_TENSOR, QOP_U8S8_PER_CHANNEL, method_for_this_cpu
from utils.support.errors import CaptionError

FEATURE = model_set("fc_nsc", with_prototxt=False).feature[0]


def source(models: Path) -> VerifiedFile:
    return load_file(FEATURE, models, offline=True, progress=False)


def cached_paths(models: Path) -> tuple[Path, Path]:
    path = int8_path(models / FEATURE.name, method_for_this_cpu())
    return path, path.with_suffix(".json")


def leftovers(models: Path) -> list[str]:
    """Anything a build may leave: scratch folders, half-written files, the tools' side files."""
    return sorted(p.name for p in models.iterdir()
                  if p.name.startswith(".derived-build-") or ".part-" in p.name or "inferred" in p.name
                  or p.name.startswith(("ort.quant", "pre.quant")))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_calibration_photos_ship_with_the_project() -> None:
    assert SAMPLES_DIR == ROOT / "samples"
    assert all((SAMPLES_DIR / name).is_file() for name in CALIBRATION_PHOTOS)
    assert len(CALIBRATION_PHOTOS) >= 3  # one photo alone measured a worse cosine (0.995)


def test_int8_features_are_close_to_fp32(models: Path, photos: list[Path]) -> None:
    """Measured on the test model: min cosine 0.99993 over these 9 images (QOperator U8S8 per-channel)."""
    fp32_file = source(models)
    int8_file = int8_feature_model(fp32_file, progress=False)
    fp32 = OnnxRuntimeNetwork(fp32_file.data)
    int8 = OnnxRuntimeNetwork(int8_file.data)
    images = [*photos, *(SAMPLES_DIR / n for n in CALIBRATION_PHOTOS)]
    name = fp32.input_names[0]
    cosines = [cosine(fp32.run({name: x})[0], int8.run({name: x})[0])
               for x in (preprocess(read_image(p)) for p in images)]
    assert min(cosines) >= 0.99, cosines
    record = json.loads(cached_paths(models)[1].read_text(encoding="utf-8"))
    assert record["notes"]["feature_cosine_to_fp32"] >= 0.99


def test_made_once_then_reused(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = int8_feature_model(source(models), progress=False)
    path, record_path = cached_paths(models)
    assert first.path == path and path.read_bytes() == first.data
    stamp = (path.stat().st_mtime_ns, record_path.stat().st_mtime_ns)
    second = int8_feature_model(source(models), progress=False)
    assert second.data == first.data
    assert (path.stat().st_mtime_ns, record_path.stat().st_mtime_ns) == stamp  # nothing rewritten
    assert capsys.readouterr().err == ""  # progress off: not a word
    record = json.loads(record_path.read_text(encoding="utf-8"))
    recipe = record["recipe"]
    assert record["sha256"] == sha256_bytes(first.data) and record["size"] == len(first.data)
    source_sha256 = sha256_bytes((models / FEATURE.name).read_bytes())
    assert recipe["source_model"] == {"name": FEATURE.name, "sha256": source_sha256}
    assert recipe["method"]["name"] == method_for_this_cpu().name
    assert [p["name"] for p in recipe["calibration_photos"]] == list(CALIBRATION_PHOTOS)
    assert {"onnxruntime_version", "onnx_version", "recipe_version"} <= set(recipe)
    assert leftovers(models) == []


def test_progress_line_while_making(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    int8_feature_model(source(models), progress=True)
    err = capsys.readouterr().err
    assert err.startswith("making the int8 feature model for this CPU") and err.count("\n") == 1
    int8_feature_model(source(models), progress=True)
    assert capsys.readouterr().err == ""  # reused: nothing to say


def test_one_folder_serves_several_methods(models: Path) -> None:
    a = int8_feature_model(source(models), progress=False, method=QOP_U8S8_PER_CHANNEL)
    b = int8_feature_model(source(models), progress=False, method=QDQ_U8S8_PER_TENSOR)
    assert a.path != b.path and a.path.exists() and b.path.exists()
    assert "qdq-u8s8-pt" in b.path.name


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def tamper_method(record_path: Path) -> None:
    record = json.loads(record_path.read_text(encoding="utf-8"))
    record["recipe"]["method"]["per_channel"] = not record["recipe"]["method"]["per_channel"]
    record_path.write_text(json.dumps(record), encoding="utf-8")


def tamper_checksum(record_path: Path) -> None:
    record = json.loads(record_path.read_text(encoding="utf-8"))
    record["sha256"] = "0" * 64
    record_path.write_text(json.dumps(record), encoding="utf-8")


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda file, record: flip_a_byte(file), "does not match its recorded checksum"),
    (lambda file, record: tamper_checksum(record), "does not match its recorded checksum"),
    (lambda file, record: tamper_method(record), "was made with another method"),
    (lambda file, record: record.write_text("{not json", encoding="utf-8"), "has no valid record"),
    (lambda file, record: record.unlink(), "has no valid record"),
    (lambda file, record: file.unlink(), "is missing"),
], ids=["flipped-byte", "record-checksum", "record-method", "record-garbage", "record-gone", "file-gone"])
def test_damaged_or_tampered_cache_is_made_again(models: Path, caplog: pytest.LogCaptureFixture,
                                                 damage: object, reason: str) -> None:
    good = int8_feature_model(source(models), progress=False)
    path, record_path = cached_paths(models)
    damage(path, record_path)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        again = int8_feature_model(source(models), progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0] and path.name in warnings[0], warnings
    assert again.data == path.read_bytes() and sha256_bytes(again.data) == sha256_bytes(good.data)
    assert json.loads(record_path.read_text(encoding="utf-8"))["sha256"] == sha256_bytes(again.data)


def test_a_changed_source_model_makes_it_again(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = int8_feature_model(source(models), progress=False)
    make_feature_model(models / FEATURE.name, seed=1)  # another fp32 file, placed by hand
    (models / (FEATURE.name + ".sha256")).unlink()
    with caplog.at_level(logging.WARNING):
        after = int8_feature_model(source(models), progress=False)
    assert after.data != before.data
    assert any("was made with another source model" in r.getMessage() for r in caplog.records)
    recipe = json.loads(cached_paths(models)[1].read_text(encoding="utf-8"))["recipe"]
    assert recipe["source_model"]["sha256"] == sha256_bytes((models / FEATURE.name).read_bytes())


def test_a_failed_build_leaves_nothing(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt) after the tool wrote its files: the scratch folder goes, and the
    tool's temporary folders were inside it, not in the system's temp folder."""
    import onnxruntime.quantization as ortq

    real = ortq.quantize_static
    seen: dict[str, list[str]] = {}
    system_tmp = tempfile.gettempdir()

    def interrupted(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)
        seen["scratch"] = sorted(p.name for p in models.glob(".derived-build-*/*"))
        seen["tempdir"] = [tempfile.gettempdir()]
        raise KeyboardInterrupt

    monkeypatch.setattr(ortq, "quantize_static", interrupted)
    with pytest.raises(KeyboardInterrupt):
        int8_feature_model(source(models), progress=False)
    assert "int8.onnx" in seen["scratch"]  # the tool had written its output
    assert seen["tempdir"][0].startswith(str(models))  # its temporary folders went inside the model folder
    assert tempfile.gettempdir() == system_tmp  # and the setting is back
    assert leftovers(models) == []
    assert not any(p.exists() for p in cached_paths(models))


def test_a_build_error_is_one_line_naming_the_file(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.quantization as ortq

    def refuses(*args: object, **kwargs: object) -> None:
        raise ValueError("Only float type is supported.\nWeights w is int8")

    monkeypatch.setattr(ortq, "quantize_static", refuses)
    with pytest.raises(CaptionError) as caught:
        int8_feature_model(source(models), progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(models / FEATURE.name) in message and "--precision fp32" in message
    assert "Only float type is supported" in message
    assert leftovers(models) == []


def test_a_killed_build_is_swept_by_the_next(models: Path) -> None:
    """What a SIGKILL leaves (the process cannot clean up) is removed by the next build, under the lock."""
    scratch = models / ".derived-build-deadbeef"
    (scratch / "tmp" / "ort.quant.x").mkdir(parents=True)
    (scratch / "int8.onnx").write_bytes(b"half")
    path, _ = cached_paths(models)
    half = models / f".{path.name}.part-0123abcd.onnx"
    half.write_bytes(b"half")
    int8_feature_model(source(models), progress=False)
    assert leftovers(models) == []


def test_missing_calibration_photo_is_an_error(models: Path, tmp_path: Path) -> None:
    with pytest.raises(CaptionError, match="calibration photo .*chelsea.png.*--precision fp32"):
        int8_feature_model(source(models), progress=False, photos_dir=tmp_path)


def test_read_only_model_folder_is_an_error_not_a_crash(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.tempfile, "mkdtemp", no_space)
    with pytest.raises(CaptionError, match="No space left on device.*--precision fp32"):
        int8_feature_model(source(models), progress=False)


def test_captioner_int8_api(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = read_image(SAMPLES_DIR / "chelsea.png")
    options = CaptionerOptions(model_dir=models, offline=True, progress=False, precision="int8",
                               runtime=RuntimeOptions(backend="onnxruntime"))
    with caplog.at_level(logging.WARNING):
        int8 = Captioner(options)
    assert caplog.records == []  # onnxruntime asked for: nothing to warn about
    fp32 = Captioner(CaptionerOptions(model_dir=models, offline=True, progress=False,
                                      runtime=RuntimeOptions(backend="onnxruntime")))
    assert int8.backend == "onnxruntime"
    assert cosine(int8.features(image), fp32.features(image)) >= 0.99
    assert int8.caption(image).caption  # end to end
    assert fp32.caption_features(fp32.features(image)) == fp32.caption(image).caption


def test_captioner_refuses_int8_on_ailia_and_unknown_precisions(models: Path) -> None:
    with pytest.raises(CaptionError, match="ONNX Runtime only"):
        Captioner(CaptionerOptions(model_dir=models, offline=True, progress=False, precision="int8",
                                   runtime=RuntimeOptions(backend="ailia")))
    with pytest.raises(ValueError, match="precision"):
        CaptionerOptions(precision="int4")  # type: ignore[arg-type]
    assert not any(p.name.startswith("model_feat.int8") for p in models.iterdir())
    assert os.listdir(models)  # the folder itself is untouched otherwise
