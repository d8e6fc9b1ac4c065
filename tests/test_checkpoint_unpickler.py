"""The restricted unpickler: what checkpoints and infos files hold loads, anything else is refused unrun."""

from __future__ import annotations

import argparse
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoint_files import (
    FIXTURES,
    Op,
    fixture_weights,
    fixture_words,
    newfc_opt,
    newfc_state,
    py2_infos_pickle,
    write_legacy_checkpoint,
    write_zip_checkpoint,
)
from utils.checkpoint import unpickler
from utils.checkpoint.infos import read_infos
from utils.checkpoint.torch_format import read_state_dict
from utils.support.errors import CaptionError

WORDS = fixture_words()


class _System:
    """Pickles to os.system(command): what a hostile checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, (self.code,)


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that, loaded by pickle.load, create ``marker``."""
    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system, protocol 2": pickle.dumps({"opt": _System(command)}, protocol=2),
        "os.system, protocol 4 (STACK_GLOBAL)": pickle.dumps({"opt": _System(command)}, protocol=4),
        "builtins.eval, protocol 0": pickle.dumps([_Eval(code)], protocol=0),
        "__builtin__.eval (Python 2 name)": Op().proto().glob("__builtin__", "eval").mark().value(code).tuple()
        .reduce().stop(),
    }


def test_the_payloads_work_on_plain_pickle(tmp_path: Path) -> None:
    # Proof that the refusal tests below are not vacuous: each payload really runs under pickle.loads.
    for i, data in enumerate(_payloads(tmp_path / "m").values()):
        marker = tmp_path / "m"
        marker.unlink(missing_ok=True)
        pickle.loads(data, encoding="latin-1")
        assert marker.exists(), i


@pytest.mark.parametrize("kind", list(_payloads(Path("/x"))))
def test_hostile_infos_are_refused_without_running(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    infos = tmp_path / "infos_evil.pkl"
    infos.write_bytes(_payloads(marker)[kind])
    with pytest.raises(CaptionError) as info:
        read_infos(infos)
    message = str(info.value)
    assert "\n" not in message and str(infos) in message and "refused" in message
    assert ("system" in message) or ("eval" in message)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hostile_checkpoints_are_refused_without_running(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    hostile = pickle.dumps({"embed.weight": _System(f"touch {marker}")}, protocol=2)
    state = newfc_state(fixture_weights())
    if fmt == "zip":
        write_zip_checkpoint(path, state, data_pkl=hostile)
    else:
        write_legacy_checkpoint(path, state, state_pkl=hostile)
    with pytest.raises(CaptionError, match=r"refused: it asks for posix\.system") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_allowed_names_cannot_be_turned_into_code() -> None:
    # _codecs.encode only for latin-1 (other codecs would be a general transformation), and
    # copy_reg._reconstructor only for argparse.Namespace.
    bad_codec = Op().proto().glob("_codecs", "encode").mark().value("eJw=").value("base64").tuple().reduce().stop()
    with pytest.raises(CaptionError, match="latin-1 bytes only"):
        unpickler.load(bad_codec, Path("x.pkl"))
    other_class = (Op().proto().glob("copy_reg", "_reconstructor").mark().glob("collections", "OrderedDict")
                   .glob("__builtin__", "object").value(None).tuple().reduce().stop())
    with pytest.raises(CaptionError, match="argparse.Namespace only"):
        unpickler.load(other_class, Path("x.pkl"))


def test_a_declared_length_beyond_the_data_allocates_nothing() -> None:
    # BINBYTES8 claiming 2**40 bytes in a 20-byte file: rejected by the opcode scan before pickle sees it.
    data = b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc."
    with pytest.raises(CaptionError, match="not a readable pickle"):
        unpickler.load(data, Path("x.pkl"))


@pytest.mark.parametrize("file", ["infos_py3.pkl", "infos_py2.pkl"])
def test_fixture_infos(file: str) -> None:
    infos = read_infos(FIXTURES / file)
    assert infos.caption_model == "newfc"
    assert infos.words == tuple(WORDS) and infos.vocab_size == 10
    assert (infos.input_encoding_size, infos.rnn_size, infos.fc_feat_size, infos.num_layers) == (16, 16, 16, 1)


def test_python2_pickle_really_is_python2_style() -> None:
    data = (FIXTURES / "infos_py2.pkl").read_bytes()
    assert b"c__builtin__\nset\n" in data and b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert b"U\rcaption_model" in data  # SHORT_BINSTRING, read back as latin-1
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(py2_infos_pickle({"caption_model": "newfc", "name": "caf\xe9"}, WORDS), encoding="ascii")


def test_python2_opt_written_through_copy_reg(tmp_path: Path) -> None:
    path = tmp_path / "infos.pkl"
    path.write_bytes(py2_infos_pickle(newfc_opt(10, 16, 16, 16), WORDS, opt_via_reconstructor=True))
    assert b"ccopy_reg\n_reconstructor\n" in path.read_bytes()
    assert read_infos(path).rnn_size == 16


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numpy_1_and_2_module_names(module: bytes) -> None:
    infos = {"opt": argparse.Namespace(**newfc_opt(10, 16, 16, 16)), "best_val_score": np.float64(0.5),
             "loader": {"ix": np.arange(3)}}
    data = pickle.dumps(infos, protocol=2)
    # Whichever numpy wrote it, the file names its reconstructors under one of the two modules.
    written = next(m for m in (b"numpy._core.multiarray", b"numpy.core.multiarray") if b"c" + m + b"\n" in data)
    data = data.replace(b"c" + written + b"\n", b"c" + module + b"\n")
    assert data.count(b"c" + module + b"\n") == 2  # scalar, _reconstruct (memoised after first use)
    value, _ = unpickler.load(data, Path("infos.pkl"))
    assert value["best_val_score"] == 0.5 and value["loader"]["ix"].tolist() == [0, 1, 2]
    assert value["opt"].rnn_size == 16
