"""Model downloads: HTTPS only, all-or-nothing, checksummed, safe with concurrent runs.

Everything is served by a local HTTPS server (tests/https_server.py) that clients trust through
SSL_CERT_FILE; small valid model files are made here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import MIRROR_ENV, ModelSet, model_set
from tests.https_server import Server, https_server
from utils.engine import download as download_module
from utils.engine.download import download
from utils.engine.model_files import check_file, decoder_vocab_size, load_file, load_model_set
from utils.support.errors import CaptionError

REPO = Path(__file__).resolve().parent.parent
V = 10  # words in the test vocabulary; the test decoder scores V+1 indices


def _model(inputs: list[onnx.ValueInfoProto], outputs: dict[str, np.ndarray], dynamic_last: bool = False) -> bytes:
    """A valid ONNX model whose outputs are constants of the given values."""
    nodes = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
        for name, value in outputs.items()
    ]
    infos = []
    for name, value in outputs.items():
        shape: list[int | str] = list(value.shape)
        if dynamic_last:
            shape[-1] = "V"
        infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), shape))
    graph = helper.make_graph(nodes, "tiny", inputs, infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def feature_model() -> bytes:
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [3, "H", "W"])
    return _model([img], {"fc": np.zeros((1, 4), np.float32)})


def decoder_model(words: int = V, dynamic_last: bool = False) -> bytes:
    fc = helper.make_tensor_value_info("fc_feats", TensorProto.FLOAT, [1, 4])
    outputs: dict[str, np.ndarray] = {
        "seq": np.zeros((1, 20), np.int64),
        "logprobs": np.zeros((1, 20, words + 1), np.float32),
    }
    return _model([fc], outputs, dynamic_last)


def vocab(words: int = V) -> bytes:
    entries = {str(i): f"word{i}" for i in range(1, words)} | {str(words): "UNK"}
    return json.dumps(entries).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    for stem, data in [("model_feat", feature_model()), ("model_fc", decoder_model())]:
        (root / f"{stem}.onnx").write_bytes(data)
        (root / f"{stem}.onnx.prototxt").write_text(f'name: "{stem}"\n', encoding="utf-8")
    (root / "vocab.json").write_bytes(vocab())
    return root


@pytest.fixture
def server(served: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    certs = tmp_path / "certs"
    certs.mkdir()
    with https_server(served, certs) as s:
        monkeypatch.setenv(MIRROR_ENV, s.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(s.cert))
        yield s


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def fc_set(with_prototxt: bool = False) -> ModelSet:
    return model_set("fc", with_prototxt=with_prototxt)


def leftovers(folder: Path) -> list[str]:
    """Temporary download files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".part-" in p.name)


def test_first_download_fetches_all_and_records_checksums(server: Server, served: Path, model_dir: Path) -> None:
    ms = fc_set(with_prototxt=True)
    paths = {name: f.path for name, f in load_model_set(ms, model_dir, offline=False, progress=False).items()}

    names = [f.name for f in ms.all]
    assert sorted(paths) == sorted(names)
    assert sorted(server.requests) == sorted(f"/{n}" for n in names)
    for name in names:
        data = (model_dir / name).read_bytes()
        assert paths[name] == model_dir.absolute() / name
        assert data == (served / name).read_bytes()
        assert (model_dir / f"{name}.sha256").read_text() == f"{sha256(data)}  {name}\n"
    assert leftovers(model_dir) == []


def test_second_run_makes_no_request(server: Server, model_dir: Path) -> None:
    load_model_set(fc_set(), model_dir, offline=False, progress=False)
    fetched = len(server.requests)
    load_model_set(fc_set(), model_dir, offline=False, progress=False)
    load_model_set(fc_set(), model_dir, offline=True, progress=False)
    assert len(server.requests) == fetched == 3


def test_only_requested_files_are_fetched(server: Server, model_dir: Path) -> None:
    ms = fc_set(with_prototxt=False)
    load_model_set(ms, model_dir, offline=False, progress=False)
    assert sorted(server.requests) == ["/model_fc.onnx", "/model_feat.onnx", "/vocab.json"]

    load_model_set(ms, model_dir, offline=False, progress=False, files=[ms.vocab])
    assert len(server.requests) == 3


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("damage", [_flip, _truncate])
def test_corrupt_cached_file_is_fetched_again(
    damage, server: Server, served: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_model_set(fc_set(), model_dir, offline=False, progress=False)
    damage(model_dir / "model_fc.onnx")

    with caplog.at_level(logging.WARNING):
        load_model_set(fc_set(), model_dir, offline=False, progress=False)

    assert server.requests.count("/model_fc.onnx") == 2
    assert (model_dir / "model_fc.onnx").read_bytes() == (served / "model_fc.onnx").read_bytes()
    assert any(
        "model_fc.onnx is corrupt" in r.getMessage() and "fetching it again" in r.getMessage() for r in caplog.records
    )


def test_corrupt_cached_file_is_reported_offline(server: Server, model_dir: Path) -> None:
    load_model_set(fc_set(), model_dir, offline=False, progress=False)
    path = model_dir.absolute() / "model_feat.onnx"
    _flip(path)

    with pytest.raises(CaptionError) as error:
        load_model_set(fc_set(), model_dir, offline=True, progress=False)
    assert str(error.value) == (
        f"{path} is corrupt (checksum differs from the one recorded when it was downloaded, in "
        "model_feat.onnx.sha256); run without --offline to fetch a good copy (the file is replaced only once "
        "the new one is verified)"
    )
    assert len(server.requests) == 3


def test_a_changed_record_never_costs_the_good_file(server: Server, model_dir: Path) -> None:
    """The record, not the file, is what changed; the network is down. The good file stays, with its record."""
    load_model_set(fc_set(), model_dir, offline=False, progress=False)
    path, record = model_dir / "model_fc.onnx", model_dir / "model_fc.onnx.sha256"
    good, text = path.read_bytes(), record.read_text()
    changed = ("0" if text[0] != "0" else "1") + text[1:]
    record.write_text(changed)
    server.not_found.add("model_fc.onnx")  # no good copy to be had

    with pytest.raises(CaptionError, match="could not download model_fc.onnx"):
        load_model_set(fc_set(), model_dir, offline=False, progress=False)
    assert path.read_bytes() == good and record.read_text() == changed
    with pytest.raises(CaptionError, match=r"checksum differs .* in model_fc\.onnx\.sha256"):
        load_model_set(fc_set(), model_dir, offline=True, progress=False)
    assert path.read_bytes() == good and leftovers(model_dir) == []


def test_hand_placed_files_are_checked_then_recorded(served: Path, model_dir: Path) -> None:
    model_dir.mkdir()
    for name in ["model_feat.onnx", "model_fc.onnx", "vocab.json"]:
        (model_dir / name).write_bytes((served / name).read_bytes())

    load_model_set(fc_set(), model_dir, offline=True, progress=False)

    for name in ["model_feat.onnx", "model_fc.onnx", "vocab.json"]:
        assert (model_dir / f"{name}.sha256").read_text().split()[0] == sha256((served / name).read_bytes())


def test_bad_hand_placed_file_is_corrupt(server: Server, served: Path, model_dir: Path) -> None:
    model_dir.mkdir()
    (model_dir / "vocab.json").write_text('{"1": "a", "3": "b"}')
    ms = fc_set()

    with pytest.raises(CaptionError, match=r"vocab\.json is corrupt \(vocabulary keys"):
        load_file(ms.vocab, model_dir, offline=True)

    load_file(ms.vocab, model_dir, offline=False, progress=False)
    assert (model_dir / "vocab.json").read_bytes() == (served / "vocab.json").read_bytes()
    assert server.requests == ["/vocab.json"]


def test_cut_off_transfer_leaves_nothing(server: Server, model_dir: Path) -> None:
    server.cut.add("model_fc.onnx")
    f = fc_set().decoder[0]

    with pytest.raises(CaptionError) as error:
        load_file(f, model_dir, offline=False, progress=False)

    message = str(error.value)
    assert message.startswith(f"could not download model_fc.onnx from {server.url}/model_fc.onnx: ")
    assert "cut off" in message
    assert not (model_dir / "model_fc.onnx").exists()
    assert not (model_dir / "model_fc.onnx.sha256").exists()
    assert leftovers(model_dir) == []


def test_missing_content_length_is_accepted(server: Server, served: Path, model_dir: Path) -> None:
    server.no_length.add("model_fc.onnx")
    path = load_file(fc_set().decoder[0], model_dir, offline=False, progress=False).path
    assert path.read_bytes() == (served / "model_fc.onnx").read_bytes()


def test_cut_off_without_content_length_fails_the_content_check(server: Server, model_dir: Path) -> None:
    server.cut.add("vocab.json")
    server.no_length.add("vocab.json")
    with pytest.raises(CaptionError, match="not a JSON vocabulary"):
        load_file(fc_set().vocab, model_dir, offline=False, progress=False)
    assert leftovers(model_dir) == []
    assert not (model_dir / "vocab.json").exists()


def test_http_404_names_the_url(server: Server, model_dir: Path) -> None:
    server.not_found.add("vocab.json")
    with pytest.raises(CaptionError) as error:
        load_file(fc_set().vocab, model_dir, offline=False, progress=False)
    assert str(error.value) == (f"could not download vocab.json from {server.url}/vocab.json: HTTP 404 Not Found")
    assert leftovers(model_dir) == []


def test_plain_http_mirror_is_refused(server: Server, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, server.url.replace("https://", "http://"))
    with pytest.raises(CaptionError, match=f"^{MIRROR_ENV} must be an https:// URL"):
        load_model_set(fc_set(), model_dir, offline=False, progress=False)
    assert server.requests == []


def test_plain_http_url_is_refused(model_dir: Path) -> None:
    model_dir.mkdir()
    with pytest.raises(CaptionError, match="only https:// URLs are allowed"):
        download("http://127.0.0.1:1/vocab.json", model_dir / "vocab.json", lambda p: None, progress=False)
    assert list(model_dir.iterdir()) == []


def test_redirect_to_plain_http_is_refused(server: Server, model_dir: Path) -> None:
    insecure = server.url.replace("https://", "http://") + "/vocab.json"
    server.redirects["vocab.json"] = insecure
    with pytest.raises(CaptionError, match=f"refused a redirect to the non-https URL {insecure}"):
        load_file(fc_set().vocab, model_dir, offline=False, progress=False)
    assert server.requests == ["/vocab.json"]
    assert not (model_dir / "vocab.json").exists()
    assert leftovers(model_dir) == []


def test_redirect_to_https_is_followed(server: Server, served: Path, model_dir: Path) -> None:
    (served / "moved.json").write_bytes(vocab())
    server.redirects["vocab.json"] = f"{server.url}/moved.json"
    path = load_file(fc_set().vocab, model_dir, offline=False, progress=False).path
    assert path.read_bytes() == vocab()
    assert server.requests == ["/vocab.json", "/moved.json"]


def test_untrusted_certificate_is_refused(server: Server, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(model_dir))  # nothing trusted there either
    with pytest.raises(CaptionError, match="certificate verify failed"):
        load_file(fc_set().vocab, model_dir, offline=False, progress=False)
    assert not (model_dir / "vocab.json").exists()


def test_stalled_transfer_times_out(server: Server, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "TIMEOUT_S", 0.3)
    server.stall.add("vocab.json")
    with pytest.raises(CaptionError, match="timed out"):
        load_file(fc_set().vocab, model_dir, offline=False, progress=False)
    assert leftovers(model_dir) == []


def test_interrupted_download_leaves_nothing(server: Server, model_dir: Path) -> None:
    model_dir.mkdir()

    def interrupt(path: Path) -> None:
        assert path.name.startswith(".vocab.json.part-") and path.stat().st_size > 0
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(f"{server.url}/vocab.json", model_dir / "vocab.json", interrupt, progress=False)
    assert list(model_dir.iterdir()) == []


def test_vocab_with_a_missing_key_is_rejected(server: Server, served: Path, model_dir: Path) -> None:
    words = json.loads(vocab())
    del words["5"]
    (served / "vocab.json").write_text(json.dumps(words))

    with pytest.raises(CaptionError) as error:
        load_file(fc_set().vocab, model_dir, offline=False, progress=False)
    assert str(error.value).startswith(f"could not download vocab.json from {server.url}/vocab.json: ")
    assert 'vocabulary keys must be exactly "1".."9": missing "5", unexpected "10"' in str(error.value)
    assert not (model_dir / "vocab.json").exists()
    assert leftovers(model_dir) == []


def test_vocab_size_must_match_the_decoder(server: Server, served: Path, model_dir: Path) -> None:
    (served / "vocab.json").write_bytes(vocab(V + 2))
    with pytest.raises(CaptionError) as error:
        load_model_set(fc_set(), model_dir, offline=False, progress=False)
    root = model_dir.absolute()
    assert str(error.value) == (
        f"{root / 'vocab.json'} has {V + 2} words but {root / 'model_fc.onnx'} scores {V} words; "
        "the vocabulary must be the one published with the model"
    )


def test_offline_lists_every_missing_file(server: Server, model_dir: Path) -> None:
    ms = fc_set()
    with pytest.raises(CaptionError) as error:
        load_model_set(ms, model_dir, offline=True)
    lines = str(error.value).splitlines()
    assert lines[0].startswith("3 model files are missing and --offline forbids downloading")
    assert lines[1:] == [f"  {f.url} -> {model_dir.absolute() / f.name}" for f in ms.all]
    assert server.requests == []
    assert not model_dir.exists()


CHILD = """
import logging, sys
from pathlib import Path
from models import model_set
from utils.engine.model_files import load_file
logging.basicConfig(level=logging.INFO, format="%(message)s")
f = model_set("fc", with_prototxt=False).decoder[0]
print("ready", flush=True)
sys.stdin.readline()
load_file(f, Path(sys.argv[1]), offline=False, progress=False)
"""


def test_concurrent_runs_fetch_once(server: Server, served: Path, model_dir: Path) -> None:
    server.slow.add("model_fc.onnx")  # about 1 s, so the second run arrives mid-transfer
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(model_dir)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:  # both ready, then both go at once
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
    results = [child.communicate(timeout=20) for child in children]

    assert [child.returncode for child in children] == [0, 0], results
    assert server.requests == ["/model_fc.onnx"]
    assert any("waiting for another process" in err for _, err in results)
    data = (served / "model_fc.onnx").read_bytes()
    assert (model_dir / "model_fc.onnx").read_bytes() == data
    assert (model_dir / "model_fc.onnx.sha256").read_text().split()[0] == sha256(data)
    assert leftovers(model_dir) == []


def test_decoder_vocab_size(tmp_path: Path) -> None:
    static = onnx.load_from_string(decoder_model(9487))
    dynamic = onnx.load_from_string(decoder_model(dynamic_last=True))
    single = onnx.load_from_string(feature_model())
    assert decoder_vocab_size(static) == 9487
    assert decoder_vocab_size(dynamic) is None
    assert decoder_vocab_size(single) is None


@pytest.mark.parametrize(
    ("kind", "content", "reason"),
    [
        ("onnx", b"", "no graph outputs"),
        ("onnx", b"<html>not found</html>", "not a valid ONNX model"),
        ("prototxt", b" \n", "empty prototxt"),
        ("prototxt", b"name: \xff\n", "not UTF-8 text"),
        ("vocab", b'["a"]', "expected a non-empty object"),
        ("vocab", b'{"0": "x", "1": "a"}', 'missing "2", unexpected "0"'),
        ("vocab", b'{"1": "a", "2": 3}', "vocabulary entry '2' is not a string"),
        ("vocab", b'{"1": "a"', "not a JSON vocabulary"),
    ],
)
def test_check_file_rejects_bad_content(tmp_path: Path, kind, content: bytes, reason: str) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(CaptionError, match=reason):
        check_file(kind, path)


def test_check_file_accepts_good_content(tmp_path: Path) -> None:
    for kind, content in [("onnx", decoder_model()), ("prototxt", b'name: "x"\n'), ("vocab", vocab())]:
        path = tmp_path / kind
        path.write_bytes(content)
        check_file(kind, path)  # type: ignore[arg-type]


def test_corrupt_file_whose_refetch_fails_is_kept_and_still_condemned(server: Server, model_dir: Path) -> None:
    load_model_set(fc_set(), model_dir, offline=False, progress=False)
    _flip(model_dir / "model_fc.onnx")  # still parses as ONNX: only the checksum catches it
    damaged = (model_dir / "model_fc.onnx").read_bytes()
    server.cut.add("model_fc.onnx")

    with pytest.raises(CaptionError, match="cut off"):
        load_model_set(fc_set(), model_dir, offline=False, progress=False)

    # Nothing is deleted before a verified copy replaces it; the record still condemns the damaged file,
    # so it can never pass as good on a later run.
    assert (model_dir / "model_fc.onnx").read_bytes() == damaged
    assert (model_dir / "model_fc.onnx.sha256").exists()
    with pytest.raises(CaptionError, match="is corrupt"):
        load_model_set(fc_set(), model_dir, offline=True, progress=False)
    assert leftovers(model_dir) == []


def test_a_download_onto_a_full_disk_leaves_nothing(server: Server, served: Path, tmp_path: Path) -> None:
    from tests.test_hostile import small_disk

    size = (served / "model_feat.onnx").stat().st_size
    with small_disk(tmp_path / "disk", f"{max(8, size // 2048)}k") as disk:
        with pytest.raises(CaptionError, match="No space left on device"):
            load_model_set(fc_set(), disk / "models", offline=False, progress=False)
        assert leftovers(disk / "models") == []
        kept = [p for p in (disk / "models").iterdir() if p.suffix in (".onnx", ".json")]
        assert len(kept) < 3  # something did not fit; whatever did is whole
        assert all(p.read_bytes() == (served / p.name).read_bytes() for p in kept)
