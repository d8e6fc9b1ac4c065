"""--write-metadata, --metadata-sidecar, --overwrite-metadata and --dry-run through the real CLI: captions
read back from the photos by ExifTool, pixels compared, and the output reporting what was done."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SCRIPT, RunCli, cli_env
from tests.reference import imread
from tests.test_metadata import ALL_FIELDS, STRUCTURAL, XMP_DESC, listing, pixels, read_json, tag_name

RUN = ("--offline", "--onnx", "--beam-size", "1")
NEW_EXIF = {"XResolution", "YResolution", "ResolutionUnit", "YCbCrPositioning"}  # EXIF's mandatory IFD0 tags


def photo_folder(folder: Path, count: int = 3) -> list[Path]:
    """JPEG and PNG photos, each with a camera tag already there (which must survive)."""
    folder.mkdir()
    base = imread(Path(__file__).resolve().parent.parent / "samples" / "chelsea.png")
    paths = []
    for i in range(count):
        path = folder / f"photo{i}.{'jpg' if i % 2 == 0 else 'png'}"
        cv2.imwrite(str(path), np.roll(base, 40 * i, axis=1))
        subprocess.run(["exiftool", "-overwrite_original", "-XMP-tiff:Make=TestCam", str(path)], check=True,
                       capture_output=True)
        paths.append(path)
    return paths


def records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_write_metadata_puts_each_caption_into_its_photo_losslessly(run_cli: RunCli, models: Path,
                                                                    tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos")
    before = {p: (pixels(p), listing(p), os.stat(p)) for p in photos}
    proc = run_cli("-i", tmp_path / "photos", "--write-metadata", "--json", "--model-dir", models, *RUN)
    assert proc.returncode == 0, proc.stderr
    got = records(proc.stdout)
    assert [r["input"] for r in got] == [str(tmp_path / "photos" / p.name) for p in photos]
    for record, photo in zip(got, photos, strict=True):
        metadata = record["metadata"]
        assert isinstance(metadata, dict) and metadata["action"] == "written" and metadata["existing"] is None
        tags = read_json(photo)
        fields = [f for f in ALL_FIELDS if photo.suffix == ".jpg" or not f.startswith("IPTC")]
        assert metadata["fields"] == fields
        assert [tags[f] for f in fields] == [record["caption"]] * len(fields)
        assert tags["XMP-tiff:Make"] == "TestCam"
        old_pixels, old_listing, old_stat = before[photo]
        assert pixels(photo) == old_pixels
        added = listing(photo) - old_listing
        assert not (old_listing - listing(photo))  # nothing that was there is gone
        # New: the fields, and the tags a standard requires in a block that is new (EXIF's IFD0 of a photo
        # that had no EXIF, IPTC's record versions and character set, XMP's toolkit).
        assert {tag_name(line) for line in added} <= {f.split(":")[1] for f in fields} | STRUCTURAL | NEW_EXIF
        assert os.stat(photo).st_mtime_ns == old_stat.st_mtime_ns
        assert os.stat(photo).st_mode == old_stat.st_mode


def test_a_described_photo_is_kept_and_reported_unless_overwrite(run_cli: RunCli, models: Path,
                                                                 tmp_path: Path) -> None:
    photo = photo_folder(tmp_path / "photos", 1)[0]
    subprocess.run(["exiftool", "-overwrite_original", "-XMP-dc:Description=my own words", str(photo)],
                   check=True, capture_output=True)
    data = photo.read_bytes()
    kept = run_cli("-i", photo, "--write-metadata", "--model-dir", models, *RUN)
    assert kept.returncode == 0
    assert "metadata kept" in kept.stdout and "'my own words'" in kept.stdout and "--overwrite-metadata" in kept.stdout
    assert photo.read_bytes() == data
    replaced = run_cli("-i", photo, "--write-metadata", "--overwrite-metadata", "--json", "--model-dir", models, *RUN)
    record = records(replaced.stdout)[0]
    assert record["metadata"] == {"action": "written", "target": str(photo), "fields": list(ALL_FIELDS),
                                  "existing": "my own words"}
    assert read_json(photo)[XMP_DESC] == record["caption"]


@pytest.mark.parametrize("mode", ["--write-metadata", "--metadata-sidecar"])
def test_dry_run_says_what_would_be_written_and_changes_nothing(run_cli: RunCli, models: Path, tmp_path: Path,
                                                                mode: str) -> None:
    photos = photo_folder(tmp_path / "photos", 2)
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in photos}
    proc = run_cli("-i", *photos, mode, "--dry-run", "--model-dir", models, *RUN)
    assert proc.returncode == 0, proc.stderr
    target = str(photos[0]) + (".xmp" if mode == "--metadata-sidecar" else "")
    assert f"would write to {target}: XMP-dc:Description, XMP-iptcCore:AltTextAccessibility" in proc.stdout
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in photos} == before
    assert sorted(f.name for f in (tmp_path / "photos").iterdir()) == sorted(p.name for p in photos)


def test_sidecars_leave_the_photos_untouched(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", 2)
    data = {p: p.read_bytes() for p in photos}
    proc = run_cli("-i", *photos, "--metadata-sidecar", "--format", "csv", "--model-dir", models, *RUN)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["metadata"] for r in rows] == ["written", "written"]
    for photo, row in zip(photos, rows, strict=True):
        assert photo.read_bytes() == data[photo]
        assert read_json(Path(str(photo) + ".xmp"))[XMP_DESC] == row["caption"]


def test_a_format_without_metadata_is_one_error_and_the_rest_are_written(run_cli: RunCli, models: Path,
                                                                         tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", 1)
    bmp = tmp_path / "photos" / "scan.bmp"
    cv2.imwrite(str(bmp), np.full((60, 80, 3), 200, np.uint8))
    proc = run_cli("-i", bmp, photos[0], "--write-metadata", "--json", "--model-dir", models, *RUN)
    assert proc.returncode == 1
    failed, written = records(proc.stdout)
    assert failed["caption"]  # the caption is still given
    metadata = failed["metadata"]
    assert isinstance(metadata, dict) and metadata["action"] == "failed"
    assert "--metadata-sidecar" in str(metadata["error"]) and "scan.bmp" in str(metadata["error"])
    assert written["metadata"]["action"] == "written"  # type: ignore[index]
    text = run_cli("-i", bmp, "--write-metadata", "--model-dir", models, *RUN)
    assert text.returncode == 1 and text.stdout.strip()
    assert len(text.stderr.strip().splitlines()) == 1 and "use --metadata-sidecar" in text.stderr


def test_without_exiftool_one_line_says_how_to_install_it(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    photo = photo_folder(tmp_path / "photos", 1)[0]
    data = photo.read_bytes()
    proc = run_cli("-i", photo, "--write-metadata", "--model-dir", models, *RUN,
                   env={"PATH": str(Path(sys.executable).parent)})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs ExifTool" in proc.stderr and "apt-get install" in proc.stderr
    assert photo.read_bytes() == data


@pytest.mark.parametrize(("flags", "message"), [
    (["-v", "clip.avi", "--write-metadata"], "--write-metadata only applies to images"),
    (["--dry-run"], "--dry-run needs --write-metadata or --metadata-sidecar"),
    (["--overwrite-metadata", "--dry-run"], "--overwrite-metadata and --dry-run need"),
    (["--write-metadata", "--metadata-sidecar"], "choose one"),
])
def test_metadata_usage_errors(run_cli: RunCli, flags: list[str], message: str) -> None:
    proc = run_cli(*flags)
    assert proc.returncode == 2 and message in proc.stderr


def test_ctrl_c_leaves_every_photo_old_or_new(models: Path, tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", 12)
    before = {p: pixels(p) for p in photos}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-i", str(tmp_path / "photos"), "--write-metadata", "--model-dir", str(models),
         *RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(None))
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == sorted(p.name for p in photos)
    described = 0
    for photo in photos:
        assert pixels(photo) == before[photo]
        tags = read_json(photo)
        assert tags["XMP-tiff:Make"] == "TestCam"
        described += XMP_DESC in tags
    assert 1 <= described < len(photos)
