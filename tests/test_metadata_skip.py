"""A photo described already is skipped before it is read or captioned (--write-metadata and
--metadata-sidecar without --overwrite-metadata): its record says "kept" without a caption. Proved without
timings: a described photo whose pixels no decoder can read is kept with exit status 0 (reading it would
fail it), and a run where every photo is described needs no model at all (its model folder is empty)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import RunCli
from tests.reference import imread
from tests.test_metadata import XMP_DESC, read_json
from utils.metadata import MetadataOptions, require_exiftool
from utils.metadata.alt_text import described_photos
from utils.metadata.exiftool import ExifTool
from utils.support.errors import CaptionError

RUN = ("--offline", "--onnx", "--beam-size", "1")
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "chelsea.png"


@pytest.fixture(autouse=True)
def _exiftool_installed() -> None:
    try:  # CI installs ExifTool (.ci/run): a missing one fails these tests, never skips them
        require_exiftool()
    except CaptionError as exc:
        pytest.fail(str(exc))


def described(path: Path, text: str, target: Path | None = None) -> None:
    subprocess.run(["exiftool", "-overwrite_original", f"-XMP-dc:Description={text}", str(target or path)],
                   check=True, capture_output=True)


def undecodable(path: Path) -> None:
    """Spoil the compressed pixels of a PNG: OpenCV cannot decode it, ExifTool still reads its metadata."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    for i in range(at + 20, at + 2000):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    assert cv2.imread(str(path)) is None


def photos_in(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    base = imread(SAMPLE)
    paths = [folder / f"photo{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        cv2.imwrite(str(path), np.roll(base, 30 * i, axis=1))
    return paths


def test_a_described_photo_is_not_read_nor_captioned(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    photos = photos_in(tmp_path / "photos", 3)
    described(photos[1], "written by hand")
    undecodable(photos[1])  # were it read, it would fail (exit 1, an error record)
    proc = run_cli("-i", tmp_path / "photos", "--write-metadata", "--json", "--model-dir", models, *RUN)
    assert proc.returncode == 0, proc.stderr
    first, kept, last = (json.loads(line) for line in proc.stdout.splitlines())
    assert kept == {"input": str(tmp_path / "photos" / "photo1.png"), "caption": None,
                    "metadata": {"action": "kept", "target": str(photos[1]), "fields": [],
                                 "existing": "written by hand"}}
    assert first["metadata"]["action"] == last["metadata"]["action"] == "written"
    assert read_json(photos[0])[XMP_DESC] == first["caption"]
    assert read_json(photos[1])[XMP_DESC] == "written by hand"
    table = run_cli("-i", photos[1], photos[2], "--write-metadata", "--format", "csv", "--model-dir", models, *RUN)
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [(r["caption"], r["metadata"], r["error"]) for r in rows] == [("", "kept", ""), ("", "kept", "")]
    text = run_cli("-i", photos[1], "--write-metadata", "--model-dir", models, *RUN)
    assert text.returncode == 0 and "metadata kept" in text.stdout and "'written by hand'" in text.stdout


def test_a_folder_that_is_done_loads_no_model(run_cli: RunCli, tmp_path: Path) -> None:
    photos = photos_in(tmp_path / "photos", 4)
    for photo in photos:
        described(photo, f"the {photo.stem}")
    empty = tmp_path / "no-models"
    empty.mkdir()  # a run that loaded the models would fail: --offline and none there
    proc = run_cli("-i", tmp_path / "photos", "--write-metadata", "--json", "--model-dir", empty, *RUN)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["caption"], r["metadata"]["action"], r["metadata"]["existing"]) for r in records] == \
        [(None, "kept", f"the {p.stem}") for p in photos]


def test_sidecars_that_describe_their_photos_skip_them(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    photos = photos_in(tmp_path / "photos", 3)
    side = Path(str(photos[0]) + ".xmp")
    subprocess.run(["exiftool", "-o", str(side), "-XMP-dc:Description=in the sidecar"], check=True,
                   capture_output=True)
    described(photos[1], "in the photo")
    undecodable(photos[0])
    undecodable(photos[1])
    proc = run_cli("-i", *photos, "--metadata-sidecar", "--json", "--model-dir", models, *RUN)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["caption"] is None, r["metadata"]["action"], r["metadata"]["target"]) for r in records] == [
        (True, "kept", str(side)), (True, "kept", str(photos[1]) + ".xmp"), (False, "written", str(photos[2]) + ".xmp")]
    assert records[0]["metadata"]["existing"] == "in the sidecar"
    assert not Path(str(photos[1]) + ".xmp").exists()


@pytest.mark.parametrize("flag", ["--overwrite-metadata", "--savepath"])
def test_nothing_is_skipped_when_every_photo_needs_its_caption(run_cli: RunCli, models: Path, tmp_path: Path,
                                                               flag: str) -> None:
    photos = photos_in(tmp_path / "photos", 2)
    described(photos[0], "old words")
    extra = [flag] if flag == "--overwrite-metadata" else [flag, tmp_path / "out"]
    if flag == "--savepath":
        (tmp_path / "out").mkdir()
    proc = run_cli("-i", *photos, "--write-metadata", *extra, "--json", "--model-dir", models, *RUN)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["caption"]  # captioned: an overwrite writes it, an annotated copy draws it
    assert first["metadata"]["action"] == ("written" if flag == "--overwrite-metadata" else "kept")


def test_a_photo_exiftool_cannot_read_fails_alone(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    """The descriptions are read many photos per ExifTool command: a photo in that command that ExifTool
    cannot read is captioned as usual (and fails on its own), and the others are what they would be."""
    photos = photos_in(tmp_path / "photos", 3)
    broken = tmp_path / "photos" / "photo1b.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 neither a JPEG nor anything ExifTool reads")
    described(photos[1], "written by hand")
    undecodable(photos[1])
    plain = run_cli("-i", photos[0], photos[2], "--json", "--model-dir", models, *RUN)
    want = [json.loads(line)["caption"] for line in plain.stdout.splitlines()]
    proc = run_cli("-i", tmp_path / "photos", "--write-metadata", "--json", "--model-dir", models, *RUN)
    assert proc.returncode == 1 and proc.stderr == ""
    first, kept, failed, last = (json.loads(line) for line in proc.stdout.splitlines())
    assert kept["caption"] is None and kept["metadata"]["action"] == "kept"
    assert failed == {"input": str(broken), "caption": None, "error": failed["error"]}
    assert [first["caption"], last["caption"]] == want  # the photos around it are captioned as without it
    assert first["metadata"]["action"] == last["metadata"]["action"] == "written"
    assert read_json(photos[2])[XMP_DESC] == want[1]


def test_descriptions_are_read_in_chunks_and_a_chunk_exiftool_fails_is_captioned(tmp_path: Path) -> None:
    photos = photos_in(tmp_path / "photos", 5)
    for photo in photos[::2]:
        described(photo, f"the {photo.stem}")
    (tmp_path / "photos" / "photo1.png").write_bytes(b"not a PNG")
    options = MetadataOptions(sidecar=False, overwrite=False, dry_run=False)
    found = described_photos(photos, options, chunk=2)
    assert {p: r.existing for p, r in found.items()} == {p: f"the {p.stem}" for p in photos[::2]}
    assert all(r.action == "kept" and r.target == p for p, r in found.items())
    assert described_photos(photos, replace(options, overwrite=True)) == {}

    class Stopped(ExifTool):
        """An ExifTool that fails the second command it is given (it crashed, or answered nonsense)."""

        calls = 0

        def read_many(self, paths: Sequence[Path], tags: Sequence[str], allowance: float = 0.0
                      ) -> dict[str, dict[str, str]]:
            Stopped.calls += 1
            if Stopped.calls == 2:
                raise CaptionError("ExifTool stopped")
            return super().read_many(paths, tags, allowance)

    with Stopped() as tool:
        found = described_photos(photos, options, exiftool=tool, chunk=2)
    assert sorted(found) == [photos[0], photos[4]]  # photos 2 and 3 are captioned and written as usual


def test_a_photo_described_only_in_another_language_is_described(run_cli: RunCli, tmp_path: Path) -> None:
    """XMP's descriptions are per language: one in German alone (no x-default) is the owner's description,
    so the photo is kept as it is, and no English x-default is written beside it."""
    photos = photos_in(tmp_path / "photos", 2)
    subprocess.run(["exiftool", "-overwrite_original", "-XMP-dc:Description-de=Eine Katze", str(photos[0])],
                   check=True, capture_output=True)
    subprocess.run(["exiftool", "-overwrite_original", "-XMP-iptcCore:AltTextAccessibility-fr=Un chat",
                    str(photos[1])], check=True, capture_output=True)
    empty = tmp_path / "no-models"
    empty.mkdir()  # a run that captioned either photo would fail: --offline and no models there
    proc = run_cli("-i", *photos, "--write-metadata", "--json", "--model-dir", empty, *RUN)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["metadata"]["action"], r["metadata"]["existing"]) for r in records] == \
        [("kept", "Eine Katze"), ("kept", "Un chat")]
    tags = read_json(photos[0])
    assert "XMP-dc:Description" not in tags and tags.get("XMP-dc:Description-de") == "Eine Katze"
