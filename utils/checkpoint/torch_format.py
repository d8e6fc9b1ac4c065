"""torch's two checkpoint file formats, read without torch (docs/models.md §10).

Both end in the same thing: a state dict (key -> TensorRef, see unpickler.py) whose storages are raw
bytes elsewhere in the file. A storage's declared element count must match the bytes present, and a
tensor must lie inside its storage; only then is an array made, so neither a wrong size nor a
hostile one makes the reader allocate more than the file holds.
"""

from __future__ import annotations

import logging
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.checkpoint import unpickler
from utils.checkpoint.unpickler import StorageType, TensorRef
from utils.errors import CaptionError

logger = logging.getLogger(__name__)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_MAGIC = b"PK"  # torch's zip format (torch >= 1.6): how its files begin
LEGACY_PROTOCOL = 1001
# Larger than any FC-family checkpoint (the published ones are ~54 MB); guards against reading a
# wrong, huge file into memory whole.
MAX_FILE_BYTES = 4 << 30
# A state dict's pickle is a few kB; a compressed zip entry could otherwise expand without limit.
MAX_PICKLE_BYTES = 64 << 20


@dataclass(frozen=True)
class _Storage:
    """A storage named by a persistent id: its key, element type and declared element count."""

    key: str
    type: StorageType
    numel: int


def _storage_from_pid(pid: Any, legacy: bool) -> _Storage:
    # zip: ('storage', type, key, location, numel); legacy adds view_metadata (None for whole storages).
    size = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"):
        raise ValueError(f"unexpected persistent id {str(pid)[:80]}")
    _, storage_type, key, _location, numel = pid[:5]
    if legacy and pid[5] is not None:
        raise ValueError("storage views (torch < 0.4 checkpoints) are not supported")
    if not isinstance(storage_type, StorageType) or not isinstance(key, str) or not isinstance(numel, int):
        raise ValueError(f"malformed storage id {str(pid)[:80]}")
    if numel < 0:
        raise ValueError(f"storage {key} declares {numel} elements")
    return _Storage(key, storage_type, numel)


def _array(storage: _Storage, raw: bytes | memoryview, big_endian: bool) -> np.ndarray:
    """The storage's bytes as a flat array; its byte count must be exactly what the id declares."""
    kind = storage.type.dtype
    dtype = np.dtype("u2" if kind == "bf16" else kind).newbyteorder(">" if big_endian else "<")
    if len(raw) != storage.numel * dtype.itemsize:
        raise ValueError(f"storage {storage.key} declares {storage.numel} {storage.type.name} elements "
                         f"({storage.numel * dtype.itemsize} bytes) but holds {len(raw)} bytes")
    flat = np.frombuffer(raw, dtype=dtype)
    if kind == "bf16":  # bfloat16 is the upper half of a float32
        return (flat.astype(np.uint32) << 16).view(np.float32)
    return flat


def _tensor(ref: TensorRef, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    storage = ref.storage
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor without a storage")
    flat = arrays[storage.key]
    count = int(np.prod(ref.size, dtype=np.int64)) if ref.size else 1
    if ref.offset < 0 or any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride):
        raise ValueError(f"storage {storage.key}: negative offset, size or stride")
    # Bounded by the storage: no element outside it, and no more elements than it holds (a zero
    # stride could otherwise spread one stored value over an arbitrarily large array).
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True)) if count else ref.offset
    if count > flat.size or (count and last >= flat.size):
        raise ValueError(f"a tensor of shape {list(ref.size)} does not fit its storage {storage.key} "
                         f"of {flat.size} elements")
    if count == 0:
        return np.zeros(ref.size, flat.dtype)
    strides = tuple(s * flat.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size, strides=strides, writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _materialise(state: Any, arrays: Mapping[str, np.ndarray], file: Path) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise CaptionError(f"{file} holds a {type(state).__name__}, not a state dict (torch.save(model.state_dict()))")
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CaptionError(f"{file} is not a state dict: it has a key {key!r}")
        if not isinstance(value, TensorRef):
            raise CaptionError(f"{file} is not a state dict: {key} is a {type(value).__name__}, not a tensor")
        try:
            out[key] = _tensor(value, arrays)
        except (ValueError, KeyError) as error:
            raise CaptionError(f"{file} is damaged: {key}: {error}") from None
    return out


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The state dict of ``path`` (either torch format) as numpy arrays; CaptionError otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CaptionError(f"{path} is {size} bytes, larger than any FC-family checkpoint")
        with path.open("rb") as f:
            head = f.read(4)
        if head.startswith(ZIP_MAGIC):
            return _read_zip(path)
        return _read_legacy(path, path.read_bytes())
    except OSError as error:
        raise CaptionError(f"cannot read {path}: {error.strerror or error}") from None


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CaptionError(f"{path} is a zip file but not a torch checkpoint (no single <folder>/data.pkl)")
            root = pickles[0][: -len("data.pkl")]
            big_endian = _zip_text(archive, root + "byteorder", "little") == "big"
            storages: dict[str, _Storage] = {}

            def persistent_load(pid: Any) -> _Storage:
                storage = _storage_from_pid(pid, legacy=False)
                storages.setdefault(storage.key, storage)
                return storage

            with archive.open(pickles[0]) as f:
                data_pkl = f.read(MAX_PICKLE_BYTES + 1)
            if len(data_pkl) > MAX_PICKLE_BYTES:
                raise CaptionError(f"{path}: its data.pkl is over {MAX_PICKLE_BYTES >> 20} MB, not a state dict's")
            state, _ = unpickler.load(data_pkl, path, persistent_load=persistent_load)
            arrays = {key: _array(s, _zip_entry(archive, f"{root}data/{key}", s), big_endian)
                      for key, s in storages.items()}
    except (zipfile.BadZipFile, ValueError, KeyError) as error:
        raise CaptionError(f"{path} is damaged: {error}") from None
    return _materialise(state, arrays, path)


def _zip_text(archive: zipfile.ZipFile, name: str, default: str) -> str:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return default
    with archive.open(info) as f:
        return f.read(16).decode("ascii", "replace").strip()


def _zip_entry(archive: zipfile.ZipFile, name: str, storage: _Storage) -> bytes:
    """Read at most one byte more than the storage declares: an entry's own size field may lie, and a
    compressed entry could expand far beyond it."""
    itemsize = 2 if storage.type.dtype == "bf16" else np.dtype(storage.type.dtype).itemsize
    expected = storage.numel * itemsize
    with archive.open(name) as f:
        return f.read(expected + 1)


def _read_legacy(path: Path, data: bytes) -> dict[str, np.ndarray]:
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
        raise CaptionError(f"{path} uses legacy protocol {protocol!r}, not {LEGACY_PROTOCOL}")
    sys_info, pos = unpickler.load(data, path, pos)
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage = _storage_from_pid(pid, legacy=True)
        storages.setdefault(storage.key, storage)
        return storage

    try:
        state, pos = unpickler.load(data, path, pos, persistent_load)
        keys, pos = unpickler.load(data, path, pos)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(storages):
            raise ValueError("its storage list does not match the storages its tensors use")
        view = memoryview(data)
        arrays: dict[str, np.ndarray] = {}
        for key in keys:
            storage = storages[key]
            if pos + 8 > len(data):
                raise ValueError(f"it ends before storage {key}")
            (count,) = struct.unpack("<q" if not big_endian else ">q", data[pos:pos + 8])
            if count != storage.numel:
                raise ValueError(f"storage {key} is recorded with {count} elements, its tensors say {storage.numel}")
            itemsize = 2 if storage.type.dtype == "bf16" else np.dtype(storage.type.dtype).itemsize
            end = pos + 8 + count * itemsize
            if end > len(data):
                raise ValueError(f"it ends inside storage {key}")
            arrays[key] = _array(storage, view[pos + 8:end], big_endian)
            pos = end
    except ValueError as error:
        raise CaptionError(f"{path} is damaged: {error}") from None
    if pos != len(data):
        logger.debug("%s: %d bytes after the last storage ignored", path, len(data) - pos)
    return _materialise(state, arrays, path)
