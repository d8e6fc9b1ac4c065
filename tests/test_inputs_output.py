"""Expanding -i arguments and planning -s outputs, before any model work."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.images.inputs import expand_inputs
from utils.images.steps.save import plan_outputs, save_image
from utils.support.errors import CaptionError


def touch_images(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in names]
    for p in paths:
        p.write_bytes(b"x")
    return paths


def test_folder_sorted_any_case_images_only(tmp_path: Path) -> None:
    touch_images(tmp_path / "d", "b.JPG", "a.png", "c.TiFF", "notes.txt", "e.webp", "f.jpeg", "g.bmp", "h.tif")
    (tmp_path / "d" / "sub.png").mkdir()
    items = expand_inputs([str(tmp_path / "d")])
    assert [Path(i.name).name for i in items] == ["a.png", "b.JPG", "c.TiFF", "e.webp", "f.jpeg", "g.bmp", "h.tif"]
    assert all(i.error is None for i in items)


def test_glob_missing_and_empty_folder(tmp_path: Path) -> None:
    touch_images(tmp_path, "x1.jpg", "x2.jpg", "y.jpg")
    (tmp_path / "empty").mkdir()
    items = expand_inputs([str(tmp_path / "x*.jpg"), str(tmp_path / "nope.jpg"), str(tmp_path / "empty"),
                           str(tmp_path / "z*.png")])
    assert [Path(i.name).name for i in items] == ["x1.jpg", "x2.jpg", "nope.jpg", "empty", "z*.png"]
    errors = [i.error for i in items]
    assert errors[:2] == [None, None]
    assert "does not exist" in str(errors[2])
    assert "has no images" in str(errors[3])
    assert "no image files match" in str(errors[4])


def test_explicit_file_kept_whatever_its_name(tmp_path: Path) -> None:
    (path,) = touch_images(tmp_path, "photo.data")
    assert expand_inputs([str(path)])[0].path == path


def test_plan_single_and_many(tmp_path: Path) -> None:
    a, b = touch_images(tmp_path / "in", "a.jpg", "b.png")
    assert plan_outputs([a], tmp_path / "out.png", many=False) == [tmp_path / "out.png"]
    assert plan_outputs([a, b], tmp_path / "outdir", many=True) == [tmp_path / "outdir" / "a.jpg",
                                                                     tmp_path / "outdir" / "b.png"]
    assert (tmp_path / "outdir").is_dir()
    # A single input saved "into" an existing folder keeps its name.
    assert plan_outputs([a], tmp_path / "outdir", many=False) == [tmp_path / "outdir" / "a.jpg"]


def test_plan_refuses_overwriting_inputs_and_collisions(tmp_path: Path) -> None:
    a, b = touch_images(tmp_path / "in", "a.jpg", "b.png")
    with pytest.raises(CaptionError, match="overwrite the input"):
        plan_outputs([a], a, many=False)
    with pytest.raises(CaptionError, match="overwrite the input"):
        plan_outputs([a, b], tmp_path / "in", many=True)
    (c,) = touch_images(tmp_path / "other", "a.jpg")
    with pytest.raises(CaptionError, match="both be saved"):
        plan_outputs([a, c], tmp_path / "out", many=True)


def test_plan_refuses_bad_targets(tmp_path: Path) -> None:
    (a,) = touch_images(tmp_path, "a.jpg")
    with pytest.raises(CaptionError, match="not an image format"):
        plan_outputs([a], tmp_path / "out.txt", many=False)
    with pytest.raises(CaptionError, match="does not exist"):
        plan_outputs([a], tmp_path / "no" / "such" / "out.png", many=False)
    with pytest.raises(CaptionError, match="is a file"):
        plan_outputs([a, a], a, many=True)
    with pytest.raises(CaptionError, match="not a folder|cannot create"):
        plan_outputs([a], a / "out.png", many=False)


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    target = tmp_path / "x.png"
    save_image(target, image)
    assert cv2.imread(str(target)) is not None
    assert sorted(os.listdir(tmp_path)) == ["x.png"]
    with pytest.raises(CaptionError):
        save_image(tmp_path / "x.notanimage", image)
    assert sorted(os.listdir(tmp_path)) == ["x.png"]
