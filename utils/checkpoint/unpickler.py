"""A pickle reader that can only build what checkpoints hold (docs/models.md §10).

``pickle.load`` on a downloaded checkpoint runs whatever callable the file names. Here every global
the data asks for goes through ``find_class``, which hands out only the objects in ``_allowed`` (our own
stand-ins for torch's tensor rebuild functions and storage types, ``OrderedDict``, ``argparse.Namespace``,
numpy's array/dtype/scalar reconstructors, a few inert builtins) and raises before anything is looked up
otherwise. Before that, the opcodes are walked once without building anything (pickle_bounds.py), so
that neither a length declared in the data nor shared references can make the reader, or any code
after it, allocate or compute more than the bounds allow.
"""

from __future__ import annotations

import argparse
import collections
import copyreg
import io
import logging
import pickle
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from utils.checkpoint import pickle_bounds
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

# torch's storage type names -> numpy dtype strings (little-endian; the byte order is applied later).
# bfloat16 has no numpy dtype: it is read as its raw 16 bits and widened to float32 by the reader.
STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_TENSOR_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")


# slots: no instance __dict__, so a pickle's BUILD opcode cannot rewrite these after they were checked.
@dataclass(frozen=True, slots=True)
class StorageType:
    """What ``torch.FloatStorage`` and its kin unpickle to here: only their element type."""

    name: str

    @property
    def dtype(self) -> str:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor as the pickle describes it; the format reader turns it into an array once the storage
    bytes are checked (``storage`` is whatever the reader's persistent_load returned)."""

    storage: Any
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


# Tensor offsets, sizes, strides and storage sizes beyond this cannot be numpy's (int64), nor describe
# a real file; below it, they stay numbers a message can print.
MAX_INDEX = 1 << 62


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    # _rebuild_tensor(storage, offset, size, stride) and _v2 (+ requires_grad, hooks, metadata) alike.
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and len(size) <= 64
            and all(isinstance(v, int) and abs(v) < MAX_INDEX for v in (offset, *size, *stride))):
        raise pickle.UnpicklingError("a tensor with a malformed offset, size or stride")
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    # nn.Parameter around a tensor (a state dict saved with keep_vars=True): the tensor is what counts.
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("a parameter that does not hold a tensor")
    return data


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(str, "latin1"); nothing else is let through,
    # since other codecs (zlib, base64...) would turn this into a general transformation.
    if not isinstance(text, str) or str(encoding).replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin-1 bytes only")
    return text.encode("latin-1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor, limited to what protocol 0/1 writes for a plain object of an allowed class.
    if base is not object or state is not None or cls is not argparse.Namespace:
        raise pickle.UnpicklingError("copy_reg._reconstructor is allowed for argparse.Namespace only")
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


def _allowed() -> dict[tuple[str, str], Any]:
    """The globals a checkpoint or infos file may name; built on use (no work at import time)."""
    # numpy's own reconstructors, found through the objects that use them, so the same code runs on
    # numpy 1.x (numpy.core) and 2.x (numpy._core) whichever names the file was written with.
    array_reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("argparse", "Namespace"): argparse.Namespace,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "object"): object,
        ("copyreg", "_reconstructor"): _reconstructor,
    }
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "_reconstruct")] = array_reconstruct
        allowed[(core, "scalar")] = scalar
    for name in STORAGE_DTYPES:
        allowed[("torch", name)] = StorageType(name)
    for name in _TENSOR_REBUILDERS:
        allowed[("torch._utils", name)] = _rebuild_parameter if name == "_rebuild_parameter" else _rebuild_tensor
    # Python 2 module names (pickle's own mapping of them is skipped when find_class is overridden).
    for (module, name), value in list(allowed.items()):
        py2 = {"builtins": "__builtin__", "copyreg": "copy_reg"}.get(module)
        if py2:
            allowed[(py2, name)] = value
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """The data named a global outside the allowlist; ``name`` is ``module.name``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: io.BytesIO, allowed: dict[tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None) -> None:
        super().__init__(data, encoding="latin-1")  # as upstream reads infos files (Python 2 pickles exist)
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("a persistent id in a file that should have none")
        return self._persistent(pid)


class _Short(reprlib.Repr):
    """reprlib's bounded repr, without its sorting of a whole dict or set to show its first items (one
    from a file can hold millions), and with objects of other types shown by their type name only:
    their own repr would be computed whole before being cut."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if len(x) <= self.maxdict or level <= 0:
            return super().repr_dict(x, level)
        return super().repr_dict(dict(islice(x.items(), self.maxdict)), level)[:-1] + ", ...}"

    def repr_set(self, x: set[Any], level: int) -> str:
        if len(x) <= self.maxset or level <= 0:
            return super().repr_set(x, level)
        return super().repr_set(set(islice(x, self.maxset)), level)[:-1] + ", ...}"

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        if len(x) <= self.maxfrozenset or level <= 0:
            return super().repr_frozenset(x, level)
        return super().repr_frozenset(frozenset(islice(x, self.maxfrozenset)), level)[:-2] + ", ...})"

    def repr_instance(self, x: Any, level: int) -> str:
        return f"<{type(x).__name__}>"


def shown(value: object, limit: int = 60) -> str:
    """``value`` for a message: a bounded repr, at most ``limit`` characters and an ellipsis. Data from
    a file can be huge, or shared so often that a whole repr never ends; strings are quoted, so a
    newline in them cannot split the message's line."""
    short = _Short()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 2, limit, limit, limit
    try:
        text = short.repr(value)
    except Exception:  # an integer past Python's digit limit, a repr that fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


def shown_name(name: str, limit: int = 60) -> str:
    """A key or name from a file for a message: as it is when short and printable, else ``shown``."""
    return name if len(name) <= limit and name.isprintable() else shown(name, limit)


def scan(data: bytes, start: int, file: Path) -> int:
    """Walk one pickle's opcodes from ``start`` without building anything; return where it ends.

    Each declared length is read against the bytes present, so a pickle claiming a gigabyte string in
    a small file fails here instead of allocating it in the real reader; and the values it would build
    are held to pickle_bounds' limits (count, nesting, text), shared references counted as often as
    they are used."""
    try:
        return pickle_bounds.walk(data, start)
    except pickle_bounds.BoundExceeded as bound:
        raise CaptionError(f"{file} was refused: its pickle holds {bound}, far more than any checkpoint or "
                           "infos file; nothing was built from it") from None
    except ValueError as error:
        raise CaptionError(f"{file} is not a readable pickle ({error})") from None


def load(data: bytes, file: Path, start: int = 0,
         persistent_load: Callable[[Any], Any] | None = None) -> tuple[Any, int]:
    """Unpickle the pickle at ``data[start:]`` through the allowlist; (object, end offset).

    Refusals and damage are CaptionErrors naming ``file``; the refused global is named and never looked up."""
    end = scan(data, start, file)
    stream = io.BytesIO(data[start:end])
    try:
        value = _Unpickler(stream, _allowed(), persistent_load).load()
    except RefusedGlobal as refused:
        raise CaptionError(f"{file} was refused: it asks for {shown_name(refused.name)}, which checkpoint files do "
                           "not need; it was not run (only tensors, OrderedDict, argparse.Namespace and numpy "
                           "values are allowed)") from None
    except CaptionError:
        raise
    except Exception as error:  # a damaged or hostile file can make pickle raise almost anything
        raise CaptionError(f"{file} is not a readable checkpoint pickle ({type(error).__name__}: "
                           f"{shown_name(str(error), 200)})") from None
    logger.debug("unpickled %d bytes of %s", end - start, file)
    return value, end
