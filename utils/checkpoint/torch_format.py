"""torch's two checkpoint file formats, read without torch (docs/models.md §10).

Both end in the same thing: a state dict (key -> TensorRef, see unpickler.py) whose storages are raw
bytes elsewhere in the file. Everything the pickle declares is checked before any storage is read
(or, in the zip format, inflated): the tensors' shapes (against what the caller expects, when it
says), each tensor lying inside its storage, each storage's size against the bytes the file says
it holds, and the storages' total against what their tensors use. Reads then stop at the declared
size, so neither a wrong size nor a hostile one makes the reader allocate more than that.
"""

from __future__ import annotations

import logging
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.checkpoint import unpickler
from utils.checkpoint.unpickler import MAX_INDEX, StorageType, TensorRef, shown, shown_name
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_MAGIC = b"PK"  # torch's zip format (torch >= 1.6): how its files begin
LEGACY_PROTOCOL = 1001
# Larger than any FC-family checkpoint (the published ones are ~54 MB); guards against reading a
# wrong, huge file into memory whole, and bounds what a zip file's storages may inflate to in all.
MAX_FILE_BYTES = 4 << 30
# A state dict's pickle is a few kB; a compressed zip entry could otherwise expand without limit.
MAX_PICKLE_BYTES = 64 << 20


# Given each tensor's shape by key, before any storage is read; raises CaptionError to refuse the file
# (what it returns is not used).
ShapeCheck = Callable[[Mapping[str, tuple[int, ...]]], object]


@dataclass(frozen=True, slots=True)  # slots: see unpickler.StorageType
class _Storage:
    """A storage named by a persistent id: its key, element type and declared element count."""

    key: str
    type: StorageType
    numel: int

    @property
    def itemsize(self) -> int:
        return 2 if self.type.dtype == "bf16" else np.dtype(self.type.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def declares(self) -> str:
        return f"storage {shown_name(self.key)} declares {self.numel} {self.type.name} elements ({self.nbytes} bytes)"


def _storage_from_pid(pid: Any, legacy: bool) -> _Storage:
    # zip: ('storage', type, key, location, numel); legacy adds view_metadata (None for whole storages).
    size = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"):
        raise ValueError(f"unexpected persistent id {shown(pid)}")
    _, storage_type, key, _location, numel = pid[:5]
    if legacy and pid[5] is not None:
        raise ValueError("storage views (torch < 0.4 checkpoints) are not supported")
    if (not isinstance(storage_type, StorageType) or not isinstance(key, str) or not isinstance(numel, int)
            or numel >= MAX_INDEX):
        raise ValueError(f"malformed storage id {shown(pid)}")
    if numel < 0:
        raise ValueError(f"storage {shown_name(key)} declares {numel} elements")
    return _Storage(key, storage_type, numel)


def _declared(storage: _Storage, storages: dict[str, _Storage]) -> _Storage:
    """Record a storage as its tensors name it; one named twice must be declared alike both times, since
    the checks of its tensors rely on the one declaration that is read."""
    known = storages.setdefault(storage.key, storage)
    if known != storage:
        raise ValueError(f"storage {shown_name(storage.key)} is declared twice, differently")
    return known


def _array(storage: _Storage, raw: bytes | memoryview, big_endian: bool) -> np.ndarray:
    """The storage's bytes as a flat array; its byte count must be exactly what the id declares."""
    kind = storage.type.dtype
    dtype = np.dtype("u2" if kind == "bf16" else kind).newbyteorder(">" if big_endian else "<")
    if len(raw) != storage.nbytes:
        raise ValueError(f"{storage.declares()} but holds {len(raw)} bytes")
    flat = np.frombuffer(raw, dtype=dtype)
    if kind == "bf16":  # bfloat16 is the upper half of a float32
        return (flat.astype(np.uint32) << 16).view(np.float32)
    return flat


def _fit(ref: TensorRef) -> None:
    """The tensor lies inside its storage: no element outside it, and no more elements than it holds (a
    zero stride could otherwise spread one stored value over an arbitrarily large array)."""
    storage = ref.storage
    assert isinstance(storage, _Storage)  # _tensors checked it
    if ref.offset < 0 or any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride):
        raise ValueError(f"storage {shown_name(storage.key)}: negative offset, size or stride")
    count = math.prod(ref.size)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True)) if count else ref.offset
    if count > storage.numel or (count and last >= storage.numel):
        raise ValueError(f"a tensor of shape {shown(list(ref.size))} does not fit its storage "
                         f"{shown_name(storage.key)} of {storage.numel} elements")


def _tensor(ref: TensorRef, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    storage = ref.storage
    assert isinstance(storage, _Storage)
    flat = arrays[storage.key]
    if flat.size != storage.numel:  # what _fit checked against; as_strided below trusts it
        raise ValueError(f"storage {shown_name(storage.key)} holds {flat.size} elements, not {storage.numel}")
    if not math.prod(ref.size):
        return np.zeros(ref.size, flat.dtype)
    strides = tuple(s * flat.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size, strides=strides, writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _tensors(state: Any, file: Path, check: ShapeCheck | None) -> dict[str, TensorRef]:
    """The state dict's tensors as the pickle declares them, checked before any storage is read: a
    dict of key -> tensor, the shapes ``check`` expects, each tensor inside its storage."""
    if not isinstance(state, dict):
        raise CaptionError(f"{file} holds a {type(state).__name__}, not a state dict (torch.save(model.state_dict()))")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CaptionError(f"{file} is not a state dict: it has a key {shown(key)}")
        if not isinstance(value, TensorRef):
            raise CaptionError(f"{file} is not a state dict: {shown_name(key)} is a {type(value).__name__}, "
                               "not a tensor")
        if not isinstance(value.storage, _Storage):
            raise CaptionError(f"{file} is damaged: {shown_name(key)}: a tensor without a storage")
    if check is not None:
        check({key: ref.size for key, ref in state.items()})
    for key, ref in state.items():
        try:
            _fit(ref)
        except ValueError as error:
            raise CaptionError(f"{file} is damaged: {shown_name(key)}: {error}") from None
    return state


def _check_total(tensors: Mapping[str, TensorRef], storages: Mapping[str, _Storage], file: Path) -> None:
    """The storages may declare no more bytes than their tensors use: a tensor that fits its storage
    can still sit in a far larger one, whose bytes would be read (inflated, in a zip) for nothing."""
    declared = sum(s.nbytes for s in storages.values())
    used = sum(math.prod(ref.size) * ref.storage.itemsize for ref in tensors.values())
    if declared > used:
        raise CaptionError(f"{file} was refused: its storages declare {declared} bytes, more than the {used} its "
                           "tensors use (save the weights as separate tensors: "
                           "torch.save({k: v.clone() for k, v in model.state_dict().items()}, path))")
    if declared > MAX_FILE_BYTES:
        raise CaptionError(f"{file} was refused: its storages declare {declared} bytes, more than any FC-family "
                           f"checkpoint ({MAX_FILE_BYTES >> 30} GiB)")


def _materialise(tensors: Mapping[str, TensorRef], arrays: Mapping[str, np.ndarray],
                 file: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, ref in tensors.items():
        try:
            out[key] = _tensor(ref, arrays)
        except (ValueError, KeyError) as error:
            raise CaptionError(f"{file} is damaged: {shown_name(key)}: {shown_name(str(error), 200)}") from None
    return out


def read_state_dict(path: Path, check: ShapeCheck | None = None) -> dict[str, np.ndarray]:
    """The state dict of ``path`` (either torch format) as numpy arrays; CaptionError otherwise.

    ``check`` is given the tensors' shapes by key before any storage is read, and may refuse them."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CaptionError(f"{path} is {size} bytes, larger than any FC-family checkpoint")
        with path.open("rb") as f:
            head = f.read(4)
        if head.startswith(ZIP_MAGIC):
            return _read_zip(path, check)
        return _read_legacy(path, path.read_bytes(), check)
    except OSError as error:
        raise CaptionError(f"cannot read {path}: {error.strerror or error}") from None


def _read_zip(path: Path, check: ShapeCheck | None) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CaptionError(f"{path} is a zip file but not a torch checkpoint (no single <folder>/data.pkl)")
            root = pickles[0][: -len("data.pkl")]
            big_endian = _zip_text(archive, root + "byteorder", "little") == "big"
            storages: dict[str, _Storage] = {}

            def persistent_load(pid: Any) -> _Storage:
                return _declared(_storage_from_pid(pid, legacy=False), storages)

            with archive.open(pickles[0]) as f:
                data_pkl = f.read(MAX_PICKLE_BYTES + 1)
            if len(data_pkl) > MAX_PICKLE_BYTES:
                raise CaptionError(f"{path}: its data.pkl is over {MAX_PICKLE_BYTES >> 20} MB, not a state dict's")
            state, _ = unpickler.load(data_pkl, path, persistent_load=persistent_load)
            tensors = _tensors(state, path, check)
            # Every size the zip declares, checked before any entry is inflated.
            entries = {key: _zip_info(archive, f"{root}data/{key}", s) for key, s in storages.items()}
            _check_total(tensors, storages, path)
            arrays = {key: _array(s, _zip_entry(archive, entries[key], s), big_endian) for key, s in storages.items()}
    # zipfile's own errors for damaged data: bad CRC or headers, truncated or corrupt compressed data,
    # an unsupported compression method (NotImplementedError) or an encrypted entry (RuntimeError).
    except (zipfile.BadZipFile, ValueError, EOFError, zlib.error, NotImplementedError, RuntimeError) as error:
        raise CaptionError(f"{path} is damaged: {shown_name(str(error), 200)}") from None
    return _materialise(tensors, arrays, path)


def _zip_text(archive: zipfile.ZipFile, name: str, default: str) -> str:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return default
    with archive.open(info) as f:
        return f.read(16).decode("ascii", "replace").strip()


def _zip_info(archive: zipfile.ZipFile, name: str, storage: _Storage) -> zipfile.ZipInfo:
    """The storage's entry, whose size as the zip records it must be what the pickle declares."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"{storage.declares()} but the zip has no entry for it") from None
    if info.file_size != storage.nbytes:
        raise ValueError(f"{storage.declares()} but holds {info.file_size} bytes")
    return info


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, storage: _Storage) -> bytes:
    """Read at most one byte more than the storage declares, whatever the compressed data expands to."""
    with archive.open(info) as f:
        return f.read(storage.nbytes + 1)


def _read_legacy(path: Path, data: bytes, check: ShapeCheck | None) -> dict[str, np.ndarray]:
    """Five pickles (magic, protocol, sys info, state dict, storage keys), then each storage's int64
    element count and raw bytes, in the order of the key list."""
    try:
        magic, pos = unpickler.load(data, path)
    except CaptionError:
        raise CaptionError(f"{path} is neither a torch zip checkpoint nor a legacy one") from None
    if isinstance(magic, dict) and "opt" in magic:
        raise CaptionError(f"{path} is an infos file, not a checkpoint: give MODEL.pth first, then INFOS.pkl")
    if magic != LEGACY_MAGIC:
        raise CaptionError(f"{path} is neither a torch zip checkpoint nor a legacy one (wrong magic number)")
    protocol, pos = unpickler.load(data, path, pos)
    if protocol != LEGACY_PROTOCOL:
        raise CaptionError(f"{path} uses legacy protocol {shown(protocol)}, not {LEGACY_PROTOCOL}")
    sys_info, pos = unpickler.load(data, path, pos)
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        return _declared(_storage_from_pid(pid, legacy=True), storages)

    state, pos = unpickler.load(data, path, pos, persistent_load)
    tensors = _tensors(state, path, check)
    try:
        keys, pos = unpickler.load(data, path, pos)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(storages):
            raise ValueError("its storage list does not match the storages its tensors use")
        _check_total(tensors, storages, path)
        view = memoryview(data)
        arrays: dict[str, np.ndarray] = {}
        for key in keys:
            storage = storages[key]
            if pos + 8 > len(data):
                raise ValueError(f"it ends before storage {shown_name(key)}")
            (count,) = struct.unpack("<q" if not big_endian else ">q", data[pos:pos + 8])
            if count != storage.numel:
                raise ValueError(f"storage {shown_name(key)} is recorded with {count} elements, its tensors say "
                                 f"{storage.numel}")
            end = pos + 8 + count * storage.itemsize
            if end > len(data):
                raise ValueError(f"it ends inside storage {shown_name(key)}")
            arrays[key] = _array(storage, view[pos + 8:end], big_endian)
            pos = end
    except ValueError as error:
        raise CaptionError(f"{path} is damaged: {error}") from None
    if pos != len(data):
        logger.debug("%s: %d bytes after the last storage ignored", path, len(data) - pos)
    return _materialise(tensors, arrays, path)
