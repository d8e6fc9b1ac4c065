"""Reading torch checkpoints without torch: both formats, real-torch fixtures, damaged and oversized files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoint_files import (
    FIXTURES,
    NEWFC_KEYS,
    Op,
    fixture_weights,
    newfc_state,
    write_legacy_checkpoint,
    write_zip_checkpoint,
)
from utils.checkpoint.torch_format import read_state_dict
from utils.support.errors import CaptionError


def _expected(prefix: str = "") -> dict[str, np.ndarray]:
    return newfc_state(fixture_weights(), prefix)


@pytest.mark.parametrize(("file", "prefix"), [("model-zip.pth", ""), ("model-legacy.pth", "module.")])
def test_real_torch_files_read_exactly(file: str, prefix: str) -> None:
    state = read_state_dict(FIXTURES / file)
    expected = _expected(prefix)
    assert list(state) == list(expected)  # upstream's parameter order, DataParallel's prefix kept
    for key, array in expected.items():
        assert state[key].dtype == np.float32 and state[key].flags.c_contiguous
        np.testing.assert_array_equal(state[key], array)


def test_the_fixture_formats_are_what_the_test_writers_write(tmp_path: Path) -> None:
    # The writers used for the variants below produce what real torch produced, so tests built on them
    # test the real formats.
    with zipfile.ZipFile(FIXTURES / "model-zip.pth") as real:
        names = real.namelist()
    assert "model-zip/data.pkl" in names and "model-zip/byteorder" in names and "model-zip/data/0" in names
    for writer, prefix in ((write_zip_checkpoint, ""), (write_legacy_checkpoint, "module.")):
        path = tmp_path / f"written-{writer.__name__}.pth"
        writer(path, _expected(prefix))
        ours, theirs = read_state_dict(path), read_state_dict(FIXTURES / ("model-zip.pth" if not prefix
                                                                          else "model-legacy.pth"))
        assert list(ours) == list(theirs)
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key])


@pytest.mark.parametrize("writer", [write_zip_checkpoint, write_legacy_checkpoint])
@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_other_float_storages(tmp_path: Path, writer: object, dtype: str) -> None:
    array = (np.arange(12).reshape(3, 4) / 8).astype(dtype)
    path = tmp_path / "m.pth"
    writer(path, {"w": array})  # type: ignore[operator]
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["w"], array)


def test_a_transposed_view_is_read_through_its_strides(tmp_path: Path) -> None:
    storage = np.arange(6, dtype=np.float32)
    op = Op().proto().glob("collections", "OrderedDict").raw(b")").reduce().mark().value("w")
    op.glob("torch._utils", "_rebuild_tensor_v2").mark()
    op.mark().value("storage").glob("torch", "FloatStorage").value("0").value("cpu").value(6).tuple().persid()
    op.value(0).value((3, 2)).value((1, 3)).value(False).glob("collections", "OrderedDict").raw(b")").reduce()
    op.tuple().reduce().raw(b"u")
    path = tmp_path / "t.pth"
    write_zip_checkpoint(path, {"w": storage}, data_pkl=op.stop())
    np.testing.assert_array_equal(read_state_dict(path)["w"], storage.reshape(2, 3).T)


def _pickle_with(size: tuple[int, ...], stride: tuple[int, ...], numel: int, offset: int = 0) -> bytes:
    op = Op().proto().glob("collections", "OrderedDict").raw(b")").reduce().mark().value("w")
    op.glob("torch._utils", "_rebuild_tensor_v2").mark()
    op.mark().value("storage").glob("torch", "FloatStorage").value("0").value("cpu").value(numel).tuple().persid()
    op.value(offset).value(size).value(stride).value(False).glob("collections", "OrderedDict").raw(b")").reduce()
    op.tuple().reduce().raw(b"u")
    return op.stop()


@pytest.mark.parametrize(
    ("size", "stride", "numel", "why"),
    [
        ((4,), (1,), 10**12, "declares 1000000000000 FloatStorage elements"),  # storage bytes absent
        ((100000, 100000), (0, 0), 4, "does not fit its storage"),  # one value spread over 40 GB
        ((5,), (1,), 4, "does not fit its storage"),
        ((2,), (4,), 4, "does not fit its storage"),  # the second element lies past the end
    ],
)
def test_sizes_are_not_trusted(tmp_path: Path, size: tuple[int, ...], stride: tuple[int, ...], numel: int,
                               why: str) -> None:
    path = tmp_path / "m.pth"
    write_zip_checkpoint(path, {"w": np.zeros(4, np.float32)}, data_pkl=_pickle_with(size, stride, numel))
    with pytest.raises(CaptionError, match=why) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_legacy_counts_must_match_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    state = _expected()
    write_legacy_checkpoint(path, state, counts={"fc_embed.bias": 10**15})
    with pytest.raises(CaptionError, match="recorded with 1000000000000000 elements"):
        read_state_dict(path)
    write_legacy_checkpoint(path, state)
    path.write_bytes(path.read_bytes()[:-10])  # truncated inside the last storage
    with pytest.raises(CaptionError, match="ends inside storage"):
        read_state_dict(path)


def test_a_truncated_zip_storage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", _pickle_with((8,), (1,), 8))
        archive.writestr("m/data/0", b"\0" * 20)
    with pytest.raises(CaptionError, match="declares 8 FloatStorage elements .32 bytes. but holds 20 bytes"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK\x03\x04 broken zip", b"\x80\x02K\x01."])
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.pth"
    path.write_bytes(content)
    with pytest.raises(CaptionError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_whole_model_pickle_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    write_zip_checkpoint(path, {}, data_pkl=Op().proto().value({"model": 1}).stop())
    with pytest.raises(CaptionError, match="model is a int, not a tensor"):
        read_state_dict(path)


def test_every_parameter_key_is_known() -> None:
    assert set(NEWFC_KEYS) == set(read_state_dict(FIXTURES / "model-zip.pth"))
