"""Hostile files for --import-checkpoint (docs/limits.md): each is refused in one line that names the file
and the bound it passes, before anything is built or inflated: quickly, in little memory, and with
nothing left in the model folder. Every file is made here, pickle opcode by opcode or zip entry by entry.

Each CLI run has a timeout: before these bounds, the shared-reference pickles hung for ever (hashing or
printing 2^64 items inside one C call, which Ctrl-C cannot interrupt), and the others ran for minutes or
took gigabytes.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoint_files import (
    FIXTURES,
    LEGACY_MAGIC,
    Op,
    fixture_weights,
    newfc_opt,
    newfc_state,
    py2_infos_pickle,
    vocab_map,
    write_zip_checkpoint,
)
from tests.conftest import SCRIPT, cli_env
from tests.peak_rss import peak_rss_mb
from tests.stand_in_models import default_words
from utils.checkpoint import pickle_bounds
from utils.checkpoint.infos import MAX_VOCABULARY
from utils.checkpoint.pickle_bounds import MAX_DEPTH, MAX_VALUES, BoundExceeded
from utils.checkpoint.torch_format import MAX_PICKLE_BYTES, read_state_dict
from utils.support.errors import CaptionError

# The program alone, its libraries loaded, peaks near 100 MB; a refusal may add little to that.
PEAK_MB = 600
# A refusal comes about a second after start-up; the defects ran for minutes, or for ever.
TIMEOUT = 90
INFOS = FIXTURES / "infos_py2.pkl"  # 10 words, every size 16
CHECKPOINT = FIXTURES / "model-zip.pth"


def refused(pth: Path, infos: Path, tmp_path: Path) -> str:
    """Import ``pth`` with ``infos`` through the CLI; it must be refused in one line, in bounded memory,
    leaving the model folder as it was (empty). The line, without its "ERROR: "."""
    models = tmp_path / "models"
    models.mkdir()
    proc, peak = peak_rss_mb(["--import-checkpoint", pth, infos, "--name", "mine", "--model-dir", models],
                             timeout=TIMEOUT)
    print(f"{pth.name} + {infos.name}: peak RSS {peak:.0f} MB")  # the figures in docs/limits.md (pytest -s)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), proc.stderr
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"
    assert list(models.iterdir()) == []
    return lines[0].removeprefix("ERROR: ")


# ---------------------------------------------------------------------------------------------
# Shared references and nesting: bounded while the pickle is walked, before anything is built
# ---------------------------------------------------------------------------------------------


def shared(levels: int = 64) -> Callable[[Op], None]:
    """A writer of t(levels), where t(0) = () and t(k) = (t(k-1), t(k-1)): 2^levels items once expanded, in
    8 bytes a level (each level memoised, then fetched twice). It numbers memo entries from 0, so the
    pickle it goes in must memoise nothing else."""

    def write(op: Op) -> None:
        op.raw(b")q\x000")  # EMPTY_TUPLE, BINPUT 0, POP
        for k in range(1, levels + 1):
            op.raw(b"h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"\x86q" + bytes([k]) + b"0")
        op.raw(b"h" + bytes([levels]))

    return write


def nested(depth: int) -> Callable[[Op], None]:
    """A writer of ((((...)))) ``depth`` levels deep: one byte a level."""

    def write(op: Op) -> None:
        op.raw(b")" + b"\x85" * depth)  # EMPTY_TUPLE, then TUPLE1 around it again and again

    return write


def _state_pickle(tensors: dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]],
                  storage_key: Callable[[Op], None] | None = None) -> bytes:
    """A state dict pickle: key -> (storage key, storage elements, size, stride), float32; ``storage_key``
    writes the first tensor's storage key instead."""
    op = Op().proto().glob("collections", "OrderedDict").raw(b")").reduce().mark()
    for n, (name, (key, numel, size, stride)) in enumerate(tensors.items()):
        op.value(name).glob("torch._utils", "_rebuild_tensor_v2").mark()
        op.mark().value("storage").glob("torch", "FloatStorage").value(storage_key if storage_key and not n else key)
        op.value("cpu").value(numel).tuple().persid()
        op.value(0).value(size).value(stride).value(False).glob("collections", "OrderedDict").raw(b")").reduce()
        op.tuple().reduce()
    op.raw(b"u")
    return op.stop()


def _fixture_tensors() -> dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]]:
    state = newfc_state(fixture_weights())
    return {name: (str(i), a.size, a.shape, tuple(s // 4 for s in a.strides))
            for i, (name, a) in enumerate(state.items())}


@pytest.mark.parametrize("where", ["infos: a vocabulary key", "infos: an option", "zip checkpoint: a storage id",
                                   "legacy checkpoint: the protocol number"])
def test_shared_references_are_refused_before_anything_is_built(tmp_path: Path, where: str) -> None:
    """A few hundred bytes that are 2^64 items once expanded: a dict key is hashed while the pickle loads,
    an option or a storage id is printed in an error message, the legacy protocol number compared and
    printed. Each once hung for ever, or grew without bound."""
    pth, infos = CHECKPOINT, INFOS
    opt = newfc_opt(10, 16, 16, 16)
    if where == "infos: a vocabulary key":
        infos = tmp_path / "infos_shared.pkl"
        infos.write_bytes(Op().proto().value({"opt": opt, "vocab": {shared(): "a"}}).stop())
    elif where == "infos: an option":
        infos = tmp_path / "infos_shared.pkl"
        infos.write_bytes(Op().proto().value({"opt": {**opt, "rnn_size": shared()},
                                              "vocab": vocab_map(default_words(10))}).stop())
    elif where == "zip checkpoint: a storage id":
        pth = tmp_path / "model.pth"
        state = newfc_state(fixture_weights())
        write_zip_checkpoint(pth, state, data_pkl=_state_pickle(_fixture_tensors(), storage_key=shared()))
    else:
        pth = tmp_path / "model.pth"
        pth.write_bytes(Op().proto().value(LEGACY_MAGIC).stop() + Op().proto().value(shared()).stop())
    bad = infos if where.startswith("infos") else pth
    assert bad.stat().st_size < 20_000  # the zip: the fixture's weights, and a data.pkl of 2 kB
    assert refused(pth, infos, tmp_path) == (
        f"{bad} was refused: its pickle holds more than {MAX_VALUES:,} values (each shared value counted as "
        "often as it is used), far more than any checkpoint or infos file; nothing was built from it")


def test_deep_nesting_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    """A tuple 200,000 deep as a vocabulary key: hashing it recursed in C once a level."""
    infos = tmp_path / "infos_deep.pkl"
    infos.write_bytes(Op().proto().value({"opt": newfc_opt(10, 16, 16, 16), "vocab": {nested(200_000): "a"}}).stop())
    assert refused(CHECKPOINT, infos, tmp_path) == (
        f"{infos} was refused: its pickle holds values nested more than {MAX_DEPTH} deep, far more than any "
        "checkpoint or infos file; nothing was built from it")


# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------


def vocabulary_infos(path: Path, words: int) -> Path:
    """An infos file with a vocabulary of ``words`` entries in 7 bytes each (BININT index, BINGET of one
    shared word), in batches of 1000 as pickle writes them."""
    op = Op().proto().raw(b"}").mark().value("opt").value(newfc_opt(words, 16, 16, 16)).value("vocab").raw(b"}")
    op.value("a").raw(b"q\x000")  # the word, memoised as entry 0, then popped
    entries = np.zeros(words, dtype=[("op", "u1"), ("index", "<i4"), ("get", "u1"), ("entry", "u1")])
    entries["op"], entries["index"], entries["get"] = ord("J"), np.arange(1, words + 1), ord("h")
    body = entries.tobytes()
    with path.open("wb") as f:
        f.write(op.out)
        for start in range(0, words, 1000):
            f.write(b"(" + body[start * 7:(start + 1000) * 7] + b"u")
        f.write(b"u.")
    return path


def test_a_ten_million_word_vocabulary_is_refused_unread(tmp_path: Path) -> None:
    """Once 54 s and 3.2 GB before the refusal; now its size says enough."""
    infos = vocabulary_infos(tmp_path / "infos_10m.pkl", 10_000_000)
    size = infos.stat().st_size
    assert refused(CHECKPOINT, infos, tmp_path) == (
        f"{infos} is {size} bytes, larger than any infos file ({MAX_PICKLE_BYTES >> 20} MB)")


def test_a_vocabulary_past_the_value_bound_is_refused_while_walked(tmp_path: Path) -> None:
    infos = vocabulary_infos(tmp_path / "infos_3m.pkl", 3_000_000)
    assert infos.stat().st_size < MAX_PICKLE_BYTES
    assert refused(CHECKPOINT, infos, tmp_path).startswith(
        f"{infos} was refused: its pickle holds more than {MAX_VALUES:,} values")


def test_a_vocabulary_past_its_bound_is_refused(tmp_path: Path) -> None:
    infos = vocabulary_infos(tmp_path / "infos_1500k.pkl", 1_500_000)
    assert refused(CHECKPOINT, infos, tmp_path) == (
        f"{infos}: its vocab has 1500000 words, more than any captioning model's (at most {MAX_VOCABULARY:,} "
        "are read)")


# ---------------------------------------------------------------------------------------------
# Zip storages that inflate to gigabytes
# ---------------------------------------------------------------------------------------------

BOMB_BYTES = 2 << 30  # 2 GiB of float32 zeros in about 2 MB


def deflated_zeros(nbytes: int) -> tuple[bytes, int]:
    """``nbytes`` zero bytes as raw deflate data, and their CRC-32: one compressed 16 MiB block, repeated
    (a full flush ends it on a byte boundary with no reference to what came before)."""
    chunk = bytes(16 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(nbytes // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return block * (nbytes // len(chunk)) + compressor.flush(), crc


def write_zip(path: Path, entries: dict[str, tuple[bytes, int, int, int]]) -> None:
    """A zip written entry by entry: name -> (data as stored, method (0 stored, 8 deflated), size once
    inflated, CRC-32). zipfile itself would compress the gigabytes, which takes minutes."""
    out, central = bytearray(), bytearray()
    for name, (data, method, size, crc) in entries.items():
        raw = name.encode()
        date, version = 0x21, 20  # 1980-01-01; the zip version that deflate needs
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, 0, method, 0, date, crc,
                               len(data), size, len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, version, 0, method, 0, date, crc, len(data), size,
                           len(raw), 0) + raw + data
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                                 len(out), 0)
    path.write_bytes(bytes(out))


def bomb_checkpoint(path: Path, size: tuple[int, ...]) -> Path:
    """The fixture weights, except _core.h2h.weight: a tensor of ``size`` in a storage of 2 GiB of
    deflated zeros, which the zip and the pickle both declare."""
    tensors = _fixture_tensors()
    numel = BOMB_BYTES // 4
    tensors["_core.h2h.weight"] = (tensors["_core.h2h.weight"][0], numel, size, (size[1], 1))
    state = newfc_state(fixture_weights())
    stored = {f"model/data/{tensors[name][0]}": np.ascontiguousarray(array, "<f4").tobytes()
              for name, array in state.items() if name != "_core.h2h.weight"}
    entries = {name: (data, 0, len(data), zlib.crc32(data)) for name, data in {
        "model/data.pkl": _state_pickle(tensors), "model/byteorder": b"little", **stored}.items()}
    bomb, crc = deflated_zeros(BOMB_BYTES)
    entries[f"model/data/{tensors['_core.h2h.weight'][0]}"] = (bomb, 8, BOMB_BYTES, crc)
    write_zip(path, entries)
    return path


def test_storages_beyond_the_infos_shapes_are_refused_uninflated(tmp_path: Path) -> None:
    """Once 4.3 GB: the storage inflated, then copied, before the shapes were compared."""
    pth = bomb_checkpoint(tmp_path / "model.pth", (BOMB_BYTES // 4 // 16, 16))
    assert pth.stat().st_size < 3 << 20
    assert refused(pth, INFOS, tmp_path).startswith(
        f"model.pth does not fit {INFOS.name}: _core.h2h.weight has shape (33554432, 16), the infos "
        "(vocab_size 10, input_encoding_size 16, rnn_size 16, fc_feat_size 16) give (80, 16)")


def test_a_storage_far_larger_than_its_tensor_is_refused_uninflated(tmp_path: Path) -> None:
    """A tensor of the right shape at the start of a 2 GiB storage: once inflated whole, then imported."""
    pth = bomb_checkpoint(tmp_path / "model.pth", (80, 16))
    used = 4 * sum(array.size for array in newfc_state(fixture_weights()).values())
    declared = used - 4 * 80 * 16 + BOMB_BYTES
    assert refused(pth, INFOS, tmp_path).startswith(
        f"{pth} was refused: its storages declare {declared} bytes, more than the {used} its tensors use")


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------


def test_ctrl_c_again_and_again_while_the_model_is_written(tmp_path: Path) -> None:
    """A published-size import (V 9487, 512 wide, 2048 features), and Ctrl-C pressed again and again once
    its temporary folder appears: exit 130, one line, and no partial model. Later presses once landed in
    the clean-up or the exit: a traceback, or exit -2."""
    words, width, features = 9487, 512, 2048
    rng = np.random.default_rng(0)
    shapes = {"embed.weight": (words + 1, width), "fc_embed.weight": (width, features), "fc_embed.bias": (width,),
              "logit.weight": (words + 1, width), "logit.bias": (words + 1,), "_core.i2h.weight": (5 * width, width),
              "_core.i2h.bias": (5 * width,), "_core.h2h.weight": (5 * width, width), "_core.h2h.bias": (5 * width,)}
    pth, infos = tmp_path / "model.pth", tmp_path / "infos.pkl"
    write_zip_checkpoint(pth, {k: rng.standard_normal(s, dtype=np.float32) * 0.01 for k, s in shapes.items()})
    infos.write_bytes(py2_infos_pickle(newfc_opt(words, width, width, features), default_words(words)))
    models = tmp_path / "models"
    models.mkdir()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--import-checkpoint", str(pth), str(infos), "--name",
                             "mine", "--model-dir", str(models)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(), stdin=subprocess.DEVNULL)
    imported = models / "imported"
    while proc.poll() is None and not (imported.exists() and any(".part-" in p.name for p in imported.iterdir())):
        time.sleep(0.002)
    for _ in range(50):  # Ctrl-C pressed again and again, while the import cleans up and ends
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        time.sleep(0.001)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130 and err == "ERROR: interrupted\n", (proc.returncode, err)
    left = sorted(p.name for p in imported.iterdir())
    assert left == [] or (left == ["mine"] and len(list((imported / "mine").iterdir())) == 4), left


# ---------------------------------------------------------------------------------------------
# The walk itself, in-process: what real pickles do passes, the ways around the bounds do not
# ---------------------------------------------------------------------------------------------


def test_real_pickles_walk_to_their_end() -> None:
    for path in (FIXTURES / "infos_py2.pkl", FIXTURES / "infos_py3.pkl"):
        data = path.read_bytes()
        assert pickle_bounds.walk(data, 0) == len(data)
    import pickle

    infos = {"opt": newfc_opt(9487, 512, 512, 2048), "vocab": vocab_map(default_words(9487)),
             "loader_state_dict": {"train": {"index_list": list(range(113_287)), "iter_counter": 5}},
             "shared": [[1, 2]] * 3, "arrays": [np.arange(5)] * 2}
    for protocol in range(6):
        data = pickle.dumps(infos, protocol=protocol)
        assert pickle_bounds.walk(data, 0) == len(data), protocol


@pytest.mark.parametrize(("data", "why"), [
    # A list put in a tuple, then filled: the tuple would grow behind the walk's back.
    (b"\x80\x02]q\x00h\x00h\x00\x86h\x00(K\x01K\x02e0.", "it changes a value already inside another"),
    (b"\x80\x02]q\x00h\x00a.", "a value that contains itself"),
    (b"\x80\x02K\x01r\x00\x00\x00\x01.", "memo index 16777216 skips ahead of the 0 entries so far"),
    (b"\x80\x02cargparse\nNamespace\n}b.", "it changes a class or function"),  # would patch the class
    (b"\x80\x02K\x01K\x01\x86K\x01a.", "it changes an immutable value"),
    (b"\x80\x02(K\x01", "it ends early"),
    (b"\x80\x02\x97.", "opcode NEXT_BUFFER is not one a checkpoint file holds"),
    (b"\x80\x02\xff.", "opcode 0xff is not one a checkpoint file holds"),
])
def test_ways_around_the_bounds_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        pickle_bounds.walk(data, 0)


def test_a_storage_declared_twice_differently(tmp_path: Path) -> None:
    """Its tensors are checked against one declaration and read against the other: refused."""
    pth = tmp_path / "model.pth"
    tensors: dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]] = {
        "a": ("0", 4, (4,), (1,)), "b": ("0", 1000, (1000,), (1,))}
    write_zip_checkpoint(pth, {"a": np.zeros(4, np.float32)}, data_pkl=_state_pickle(tensors))
    with pytest.raises(CaptionError, match="storage 0 is declared twice, differently"):
        read_state_dict(pth)


def test_each_bound() -> None:
    level = b"".join(b"h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"\x86q" + bytes([k]) + b"0" for k in range(1, 30))
    with pytest.raises(BoundExceeded, match=f"more than {MAX_VALUES:,} values"):
        pickle_bounds.walk(b"\x80\x02)q\x000" + level + b"h\x1d.", 0)
    with pytest.raises(BoundExceeded, match=f"nested more than {MAX_DEPTH} deep"):
        pickle_bounds.walk(b"\x80\x02)" + b"\x85" * (MAX_DEPTH + 1) + b".", 0)
    with pytest.raises(BoundExceeded, match=f"nested more than {MAX_DEPTH} deep"):
        pickle_bounds.walk(b"\x80\x02" + b"(" * (MAX_DEPTH + 1) + b".", 0)
    with pytest.raises(BoundExceeded, match="MB of text"):  # one 1 MB string, used 100 times
        text = b"X" + struct.pack("<I", 1 << 20) + bytes(1 << 20) + b"q\x00"
        pickle_bounds.walk(b"\x80\x02" + text + b"(" + b"h\x00" * 100 + b"l.", 0)



def test_the_opcode_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickle_bounds, "MAX_OPCODES", 1000)
    assert pickle_bounds.walk(b"\x80\x02" + b"N0" * 498 + b"N.", 0) == 1000
    with pytest.raises(BoundExceeded, match="more than 1,000 opcodes"):
        pickle_bounds.walk(b"\x80\x02" + b"N0" * 499 + b"N.", 0)
