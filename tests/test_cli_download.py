"""The CLI fetching the model set from a local HTTPS mirror: first use, cut-off, corruption."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, RunCli
from tests.https_server import Server, https_server
from tests.reference import reference_caption
from tests.stand_in_models import NewFCParams


@pytest.fixture
def mirror(model_set_dir: tuple[Path, dict[str, NewFCParams]], tmp_path: Path) -> Iterator[Server]:
    with https_server(model_set_dir[0], tmp_path) as server:
        yield server


def mirror_env(server: Server) -> dict[str, str]:
    return {"IMAGE_CAPTIONING_MIRROR": server.url, "SSL_CERT_FILE": str(server.cert)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


def test_first_use_downloads_then_works_offline(
    run_cli: RunCli, mirror: Server, tmp_path: Path, weights: dict[str, NewFCParams]
) -> None:
    models = tmp_path / "fresh"
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--onnx", "--json", env=mirror_env(mirror))
    assert proc.returncode == 0, proc.stderr
    assert sorted(mirror.requests) == ["/model_fc_nsc.onnx", "/model_feat.onnx", "/vocab.json"]
    assert json.loads(proc.stdout)["caption"] == reference_caption(models, weights["fc_nsc"], SAMPLE)[0]
    assert {p.name for p in models.glob("*.sha256")} == {"model_fc_nsc.onnx.sha256", "model_feat.onnx.sha256",
                                                         "vocab.json.sha256"}
    again = run_cli("-i", SAMPLE, "--model-dir", models, "--onnx", "--offline")
    assert again.returncode == 0 and len(mirror.requests) == 3


def test_ailia_backend_also_fetches_prototxt(run_cli: RunCli, mirror: Server, tmp_path: Path) -> None:
    models = tmp_path / "fresh"
    proc = run_cli("-i", SAMPLE, "--model-dir", models, env=mirror_env(mirror))
    assert proc.returncode == 0, proc.stderr  # auto: ailia has no licence here, ONNX Runtime runs
    assert "/model_feat.onnx.prototxt" in mirror.requests and "/model_fc_nsc.onnx.prototxt" in mirror.requests


def test_download_cut_off_midway_leaves_nothing(run_cli: RunCli, mirror: Server, tmp_path: Path) -> None:
    models = tmp_path / "fresh"
    mirror.cut.add("model_fc_nsc.onnx")
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--onnx", env=mirror_env(mirror))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "model_fc_nsc.onnx" in proc.stderr and proc.stderr.startswith("ERROR:")
    assert not (models / "model_fc_nsc.onnx").exists() and leftovers(models) == []
    mirror.cut.clear()
    retry = run_cli("-i", SAMPLE, "--model-dir", models, "--onnx", env=mirror_env(mirror))
    assert retry.returncode == 0, retry.stderr


def test_corrupt_cached_model_is_fetched_again(run_cli: RunCli, mirror: Server, tmp_path: Path) -> None:
    models = tmp_path / "fresh"
    assert run_cli("-i", SAMPLE, "--model-dir", models, "--onnx", env=mirror_env(mirror)).returncode == 0
    feature = models / "model_feat.onnx"
    feature.write_bytes(feature.read_bytes()[:-100])  # truncated
    proc = run_cli("-i", SAMPLE, "--model-dir", models, "--onnx", env=mirror_env(mirror))
    assert proc.returncode == 0, proc.stderr
    assert mirror.requests.count("/model_feat.onnx") == 2
    assert "model_feat.onnx" in proc.stderr and "WARNING" in proc.stderr
    assert feature.read_bytes() == (mirror.root / "model_feat.onnx").read_bytes()


def test_plain_http_mirror_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli("-i", SAMPLE, "--model-dir", tmp_path / "m", "--onnx",
                   env={"IMAGE_CAPTIONING_MIRROR": "http://127.0.0.1:9/"})
    assert proc.returncode == 1 and "https" in proc.stderr and len(proc.stderr.splitlines()) == 1
