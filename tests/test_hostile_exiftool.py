"""An ExifTool that misbehaves (prints without end, hangs, crashes) costs bounded memory and time: each
photo fails with one line, ExifTool is started again once, and after its second failure the photos left
fail at once. Fake ExifTools are small scripts, given as the command or put on the PATH as ``exiftool``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE
from tests.peak_rss import peak_rss_mb
from tests.test_hostile import flags
from utils.metadata import MetadataOptions, MetadataWriter
from utils.metadata.exiftool import ExifTool, ExifToolStopped
from utils.support.errors import CaptionError

# What each fake does once started in -stay_open mode (it never reads its commands).
ENDLESS_LINES = "exec yes 'Warning: again'"
ENDLESS_LINE = "exec cat /dev/zero"  # one line that never ends


def fake(tmp_path: Path, behaviour: str) -> list[str]:
    """A command that logs each start to ``starts.log`` and then does ``behaviour``."""
    return ["bash", "-c", f'echo started >> "{tmp_path / "starts.log"}"; {behaviour}', "exiftool"]


def starts(tmp_path: Path) -> int:
    log = tmp_path / "starts.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def some_photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    photos = [folder / f"photo{i:02}.png" for i in range(count)]
    for photo in photos:
        photo.write_bytes(SAMPLE.read_bytes())
    return photos


def fail_all(writer: MetadataWriter, photos: list[Path]) -> list[str]:
    """Each photo's error message; every write must fail."""
    messages = []
    for photo in photos:
        with pytest.raises(ExifToolStopped) as err:
            writer.write(photo, "a cat")
        messages.append(str(err.value))
    return messages


@pytest.mark.parametrize("behaviour", [ENDLESS_LINES, ENDLESS_LINE])
def test_endless_output_is_cut_off_and_exiftool_stopped(tmp_path: Path, behaviour: str) -> None:
    with ExifTool(command=fake(tmp_path, behaviour)) as tool:
        with pytest.raises(ExifToolStopped, match="printed more than 8 MB in answer to one command; it was stopped"):
            tool.execute("-ver")
        assert tool.pid is None


@pytest.mark.parametrize("sidecar", [False, True])
def test_a_hanging_exiftool_is_waited_for_twice_then_the_rest_fail_at_once(tmp_path: Path, sidecar: bool) -> None:
    photos = some_photos(tmp_path / "photos", 20)
    t0 = time.monotonic()
    with MetadataWriter(MetadataOptions(sidecar=sidecar),
                        exiftool=ExifTool(command=fake(tmp_path, "exec sleep 600"), timeout=1)) as writer:
        messages = fail_all(writer, photos)
    print(f"20 photos, hanging ExifTool, 1 s time-out: {time.monotonic() - t0:.1f} s")
    assert starts(tmp_path) == 2  # started, given up on, started again once, given up on for good
    assert messages[0] == f"cannot write metadata for {photos[0]}: ExifTool did not answer within 1 s; it was stopped"
    assert messages[1] == (f"cannot write metadata for {photos[1]}: ExifTool did not answer within 1 s; it was "
                           "stopped (the second time in this run: it is not started again)")
    for photo, message in zip(photos[2:], messages[2:], strict=True):
        assert message == (f"cannot write metadata for {photo}: ExifTool stopped answering twice in this run; "
                           "not tried (the last time it did not answer within 1 s)")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == [p.name for p in photos]  # no sidecar


def test_a_crashing_exiftool_is_started_again_once(tmp_path: Path) -> None:
    photos = some_photos(tmp_path / "photos", 5)
    with MetadataWriter(MetadataOptions(), exiftool=ExifTool(command=fake(tmp_path, "exit 3"))) as writer:
        messages = fail_all(writer, photos)
    assert starts(tmp_path) == 2
    assert all("ExifTool stopped unexpectedly (exit status 3)" in m for m in messages[:2])
    assert all(m.endswith("not tried (the last time it stopped unexpectedly (exit status 3))") for m in messages[2:])


def test_exiftool_s_last_words_are_quoted_short(tmp_path: Path) -> None:
    # 1 MB without a line break, then the end: under the size bound, so it is a crash, quoted in part.
    behaviour = "head -c 1000000 /dev/zero | tr '\\0' x; exit 2"
    with ExifTool(command=fake(tmp_path, behaviour)) as tool, pytest.raises(ExifToolStopped) as err:
        tool.execute("-ver")
    message = str(err.value)
    assert message.startswith("ExifTool stopped unexpectedly (exit status 2) (xxx")
    assert len(message) < 300


def test_a_marker_in_pieces_and_with_cr_lf_is_still_found(tmp_path: Path) -> None:
    # An ExifTool that answers each command in pieces, its "{readyN}" split between writes and ended by
    # CR LF (as on Windows), after a line that holds the marker but not alone.
    speaker = tmp_path / "speaker.py"
    speaker.write_text(
        "import sys, time\n"
        "n = 0\n"
        "for line in sys.stdin:\n"
        "    if line.startswith('-execute'):\n"
        "        n += 1\n"
        "        for piece in ['[{\"A\": \"x {ready%d}\"}]\\r\\n' % n, '{rea', 'dy%d' % n, '}\\r', '\\n']:\n"
        "            sys.stdout.write(piece); sys.stdout.flush(); time.sleep(0.05)\n"
        "        sys.stderr.write('Warning: w%d\\n{ready%d}\\n' % (n, n)); sys.stderr.flush()\n"
    )
    with ExifTool(command=[sys.executable, str(speaker)], timeout=10) as tool:
        for n in (1, 2):
            reply = tool.execute("-j", "/x")
            assert json.loads(reply.stdout) == [{"A": f"x {{ready{n}}}"}]
            assert reply.warnings() == [f"Warning: w{n}"]


def test_a_long_error_from_exiftool_is_quoted_short(tmp_path: Path) -> None:
    speaker = tmp_path / "speaker.py"
    speaker.write_text(
        "import sys\n"
        "for line in sys.stdin:\n"
        "    if line.startswith('-execute'):\n"
        "        n = line[len('-execute'):].strip()\n"
        "        print('{ready%s}' % n, flush=True)\n"
        "        print('Error: ' + 'x' * 100000 + '\\n{ready%s}' % n, file=sys.stderr, flush=True)\n"
    )
    photo = some_photos(tmp_path / "photos", 1)[0]
    with MetadataWriter(MetadataOptions(), exiftool=ExifTool(command=[sys.executable, str(speaker)])) as writer, \
            pytest.raises(CaptionError) as err:
        writer.write(photo, "a cat")
    assert str(err.value).startswith(f"cannot read the metadata of {photo}: xxx")
    assert len(str(err.value)) < len(str(photo)) + 300


def exiftool_on_path(tmp_path: Path, behaviour: str) -> dict[str, str]:
    """An environment whose ``exiftool`` passes the version check and then does ``behaviour``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "exiftool"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-ver" ]; then echo 12.57; exit 0; fi\n{behaviour}\n')
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("behaviour", [ENDLESS_LINES, ENDLESS_LINE])
def test_cli_with_an_exiftool_printing_without_end(models: Path, tmp_path: Path, behaviour: str) -> None:
    photos = some_photos(tmp_path / "photos", 4)
    proc, peak = peak_rss_mb(["-i", tmp_path / "photos", "--write-metadata", *flags(models)],
                             env=exiftool_on_path(tmp_path, behaviour), timeout=120)
    print(f"peak RSS {peak:.0f} MB")
    assert proc.returncode == 1
    assert [line.split(": ")[0] for line in proc.stdout.splitlines()] == [str(p) for p in photos]  # captions
    errors = proc.stderr.splitlines()
    assert len(errors) == len(photos)
    for photo, line in zip(photos, errors, strict=True):
        assert line.startswith(f"ERROR: cannot write metadata for {photo}: ExifTool ")
    assert all("printed more than 8 MB in answer to one command" in line for line in errors)
    assert all("not tried" in line for line in errors[2:])
    assert peak < 300, f"peak RSS {peak:.0f} MB"  # the run alone: ~140 MB; unbounded, +70 MB/s


def test_cli_with_an_exiftool_that_crashes(models: Path, tmp_path: Path) -> None:
    photos = some_photos(tmp_path / "photos", 4)
    proc, _ = peak_rss_mb(["-i", tmp_path / "photos", "--write-metadata", "--json", *flags(models)],
                          env=exiftool_on_path(tmp_path, "exit 3"), timeout=120)
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in photos] and all(r["caption"] for r in records)
    assert all(r["metadata"]["action"] == "failed" for r in records)
    assert "not tried" in records[-1]["metadata"]["error"]
