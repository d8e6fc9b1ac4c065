"""Writing upstream checkpoint files without torch, for tests (docs/models.md §10).

The committed fixtures under tests/fixtures/checkpoints were written by real torch
(make_fixtures.py); these writers make the variants tests need (wrong shapes, extra keys, hostile
pickles) in the same formats. ``test_checkpoint_formats.py`` checks that they read exactly like the
real-torch files, so a test built on them is not testing a private idea of the format.

``Op`` emits pickle opcodes by hand, which is also how a Python 2 style pickle (SHORT_BINSTRING,
``__builtin__`` and ``copy_reg`` names, numpy 1.x module names) is written under Python 3.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.stand_in_models import NewFCParams, default_words

# state-dict key -> NewFCParams field (tests.stand_in_models), upstream NewFCModel's parameter order.
NEWFC_KEYS = {
    "embed.weight": "embed",
    "fc_embed.weight": "fc_embed_w",
    "fc_embed.bias": "fc_embed_b",
    "logit.weight": "logit_w",
    "logit.bias": "logit_b",
    "_core.i2h.weight": "i2h_w",
    "_core.i2h.bias": "i2h_b",
    "_core.h2h.weight": "h2h_w",
    "_core.h2h.bias": "h2h_b",
}
STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                 np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


def fixture_weights() -> NewFCParams:
    """The fixtures' weights as numpy saved them (make_fixtures.py), independent of any checkpoint reader."""
    with np.load(FIXTURES / "expected.npz") as saved:
        return NewFCParams(**{name: saved[name] for name in NEWFC_KEYS.values()})


def fixture_words() -> list[str]:
    return default_words(10)


def newfc_state(w: NewFCParams, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + key: np.asarray(getattr(w, field_name)) for key, field_name in NEWFC_KEYS.items()}


@dataclass
class Op:
    """Raw protocol-2 pickle opcodes, appended in order."""

    out: bytearray = field(default_factory=bytearray)

    def raw(self, data: bytes) -> Op:
        self.out += data
        return self

    def proto(self) -> Op:
        return self.raw(b"\x80\x02")

    def stop(self) -> bytes:
        self.raw(b".")
        return bytes(self.out)

    def glob(self, module: str, name: str) -> Op:
        return self.raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def mark(self) -> Op:
        return self.raw(b"(")

    def tuple(self) -> Op:  # from the last mark
        return self.raw(b"t")

    def reduce(self) -> Op:
        return self.raw(b"R")

    def build(self) -> Op:
        return self.raw(b"b")

    def newobj(self) -> Op:
        return self.raw(b"\x81")

    def persid(self) -> Op:
        return self.raw(b"Q")

    def value(self, v: Any, py2_str: bool = False) -> Op:
        """Plain values; ``py2_str``: str as a Python 2 ``str`` (SHORT_BINSTRING/BINSTRING of latin-1)."""
        if v is None:
            return self.raw(b"N")
        if isinstance(v, bool):
            return self.raw(b"\x88" if v else b"\x89")
        if isinstance(v, int):
            if 0 <= v < 256:
                return self.raw(b"K" + bytes([v]))
            if -(2**31) <= v < 2**31:
                return self.raw(b"J" + struct.pack("<i", v))
            data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            return self.raw(b"\x8a" + bytes([len(data)]) + data)
        if isinstance(v, float):
            return self.raw(b"G" + struct.pack(">d", v))
        if isinstance(v, bytes):  # a Python 2 str
            return self.raw((b"U" + bytes([len(v)]) if len(v) < 256 else b"T" + struct.pack("<i", len(v))) + v)
        if isinstance(v, str):
            if py2_str:
                return self.value(v.encode("latin-1"))
            data = v.encode("utf-8")
            return self.raw(b"X" + struct.pack("<I", len(data)) + data)
        if isinstance(v, tuple):
            self.mark()
            for item in v:
                self.value(item, py2_str)
            return self.tuple()
        if isinstance(v, list):
            self.raw(b"]").mark()
            for item in v:
                self.value(item, py2_str)
            return self.raw(b"e")
        if isinstance(v, dict):
            self.raw(b"}")
            if v:
                self.mark()
                for key, item in v.items():
                    self.value(key, py2_str).value(item, py2_str)
                self.raw(b"u")
            return self
        if callable(v):  # a writer for a composite value
            v(self)
            return self
        raise TypeError(f"cannot write {type(v).__name__}")


# ---------------------------------------------------------------------------------------------
# State dicts in torch's two formats
# ---------------------------------------------------------------------------------------------


def _state_pickle(state: Mapping[str, np.ndarray], keys: Mapping[str, str], legacy: bool) -> bytes:
    """The state dict pickle as torch writes it: OrderedDict of _rebuild_tensor_v2(storage pid, ...)."""
    op = Op().proto().glob("collections", "OrderedDict").raw(b")").reduce()
    op.mark()
    for name, array in state.items():
        op.value(name)
        op.glob("torch._utils", "_rebuild_tensor_v2").mark()
        op.mark().value("storage").glob("torch", STORAGE_TYPES[array.dtype]).value(keys[name]).value("cpu")
        op.value(int(array.size))
        if legacy:
            op.value(None)
        op.tuple().persid()
        strides = tuple(int(s // array.itemsize) for s in np.ascontiguousarray(array).strides)
        op.value(0).value(tuple(int(n) for n in array.shape)).value(strides).value(False)
        op.glob("collections", "OrderedDict").raw(b")").reduce()
        op.tuple().reduce()
    op.raw(b"u")
    return op.stop()


def _little_endian(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def write_zip_checkpoint(path: Path, state: Mapping[str, np.ndarray], data_pkl: bytes | None = None) -> None:
    """torch's zip format (torch >= 1.6): <stem>/data.pkl, <stem>/data/<key>, byteorder, version."""
    keys = {name: str(i) for i, name in enumerate(state)}
    root = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", data_pkl if data_pkl is not None else _state_pickle(state, keys, False))
        archive.writestr(f"{root}/byteorder", "little")
        for name, array in state.items():
            archive.writestr(f"{root}/data/{keys[name]}", _little_endian(array))
        archive.writestr(f"{root}/version", "3\n")


def write_legacy_checkpoint(path: Path, state: Mapping[str, np.ndarray], state_pkl: bytes | None = None,
                            counts: Mapping[str, int] | None = None) -> None:
    """torch's legacy format: magic, protocol, sys info, state dict, key list pickles, then for each key
    an int64 element count and the raw bytes. ``counts`` overrides the recorded element counts."""
    keys = {name: str(140000000 + i) for i, name in enumerate(state)}
    out = io.BytesIO()
    out.write(Op().proto().value(LEGACY_MAGIC).stop())
    out.write(Op().proto().value(1001).stop())
    out.write(Op().proto().value({"protocol_version": 1001, "little_endian": True,
                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}).stop())
    out.write(state_pkl if state_pkl is not None else _state_pickle(state, keys, True))
    out.write(Op().proto().value([keys[n] for n in state]).stop())
    for name, array in state.items():
        count = (counts or {}).get(name, int(array.size))
        out.write(struct.pack("<q", count))
        out.write(_little_endian(array))
    path.write_bytes(out.getvalue())


# ---------------------------------------------------------------------------------------------
# infos_<id>.pkl
# ---------------------------------------------------------------------------------------------


def newfc_opt(vocab_size: int, encoding: int, rnn: int, features: int, **overrides: Any) -> dict[str, Any]:
    """The model-shaping part of upstream's training options, plus some training settings."""
    return {"caption_model": "newfc", "input_encoding_size": encoding, "rnn_size": rnn, "num_layers": 1,
            "fc_feat_size": features, "att_feat_size": 2048, "att_hid_size": 512, "vocab_size": vocab_size,
            "seq_length": 16, "max_length": 20, "drop_prob_lm": 0.5, "learning_rate": 5e-4, "id": "fc_test",
            "checkpoint_path": "log_fc_test", "self_critical_after": -1, **overrides}


def vocab_map(words: list[str]) -> dict[str, str]:
    return {str(i): word for i, word in enumerate(words, start=1)}


def py2_infos_pickle(opt: Mapping[str, Any], words: list[str], numpy_module: str = "numpy.core.multiarray",
                     opt_via_reconstructor: bool = False) -> bytes:
    """An infos pickle as Python 2 wrote it at protocol 2: str as SHORT_BINSTRING (read back as latin-1),
    numpy 1.x names, a ``__builtin__.set``; ``opt_via_reconstructor``: ``opt`` as protocol 0/1 objects are
    written, through ``copy_reg._reconstructor`` and ``__builtin__.object``."""

    def dtype(code: str) -> Any:
        def write(op: Op) -> None:
            op.glob("numpy", "dtype").value((code, 0, 1), py2_str=True).reduce()
            op.value((3, "<", None, None, None, -1, -1, 0), py2_str=True).build()
        return write

    def array(values: np.ndarray) -> Any:
        def write(op: Op) -> None:
            op.glob(numpy_module, "_reconstruct").mark().glob("numpy", "ndarray").value((0,)).value(b"b").tuple()
            op.reduce().mark().value(1).value(tuple(values.shape)).value(dtype(values.dtype.str[1:]))
            op.value(False).value(values.astype(values.dtype.newbyteorder("<")).tobytes()).tuple().build()
        return write

    def scalar(value: np.generic) -> Any:
        def write(op: Op) -> None:
            op.glob(numpy_module, "scalar").mark().value(dtype(value.dtype.str[1:]))
            op.value(np.asarray(value).astype(value.dtype.newbyteorder("<")).tobytes()).tuple().reduce()
        return write

    def namespace(op: Op) -> None:
        if opt_via_reconstructor:
            op.glob("copy_reg", "_reconstructor").mark().glob("argparse", "Namespace").glob("__builtin__", "object")
            op.value(None).tuple().reduce()
        else:
            op.glob("argparse", "Namespace").raw(b")").newobj()
        op.value(dict(opt), py2_str=True).build()

    def seen(op: Op) -> None:
        op.glob("__builtin__", "set").mark().value([3, 1, 2]).tuple().reduce()

    infos = {
        "opt": namespace,
        "vocab": vocab_map(words),
        "iter": 123456,
        "epoch": 25,
        "best_val_score": scalar(np.float64(1.0213)),
        "loader_state_dict": {"train": {"index_list": array(np.arange(7, dtype=np.int64)),
                                        "iter_counter": scalar(np.int64(3))}},
        "seen_splits": seen,
    }
    return Op().proto().value(infos, py2_str=True).stop()
