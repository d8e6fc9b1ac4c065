"""Hostile input: every failure is one clean line with the documented exit status, nothing is lost, and
memory and time stay bounded (docs/limits.md).

Each test runs the real CLI in a subprocess. Full disks are real: a small tmpfs mounted where the test
runs (this needs root, as CI has; elsewhere those tests are skipped and say why).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLE, SCRIPT, RunCli, cli_env
from tests.peak_rss import peak_rss_mb
from tests.test_hostile_signals import imports_begun, wait_until
from tests.video_helpers import make_video

HEADLESS = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}


def flags(models: Path) -> list[str | Path]:
    return ["--model-dir", models, "--offline", "--onnx", "--beam-size", "1"]


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".part-" in p.name)


# ---------------------------------------------------------------------------------------------
# Every numeric option at its extremes: a usage error (exit 2, the reason on the last line) or, where
# the value is valid, a normal run (here on a missing input: exit 1 before any model work).
# ---------------------------------------------------------------------------------------------

EXTREMES = ["0", "-1", "1e30", "99999999999999999999", "nan", "inf", "-inf", "abc"]
VALID = {("--diversity-lambda", "0"), ("--diversity-lambda", "-1"), ("--seed", "0"), ("--length-penalty", "0"),
         ("--length-penalty", "-1")}
NUMERIC_FLAGS = ["--beam-size", "--nbest", "--max-length", "--group-size", "--diversity-lambda", "--temperature",
                 "--seed", "-bc", "--length-penalty"]


@pytest.mark.parametrize("flag", NUMERIC_FLAGS)
def test_numeric_options_at_their_extremes(run_cli: RunCli, flag: str, tmp_path: Path) -> None:
    for value in EXTREMES:
        arg = f"wu_{value}" if flag == "--length-penalty" else value
        extra = ["-b"] if flag == "-bc" else []
        proc = run_cli("-i", tmp_path / "missing.jpg", flag, arg, *extra, timeout=60)
        if (flag, value) in VALID:
            assert proc.returncode == 1 and last_line(proc.stderr).endswith("does not exist"), (flag, value)
        else:
            assert proc.returncode == 2, (flag, value, proc.stderr)
            assert "error:" in last_line(proc.stderr) and proc.stdout == "", (flag, value)


@pytest.mark.parametrize("value", EXTREMES)
def test_interval_at_its_extremes(run_cli: RunCli, value: str, tmp_path: Path) -> None:
    proc = run_cli("-v", tmp_path / "missing.mp4", "--interval", value, timeout=60)
    valid = value in ("1e30", "99999999999999999999")
    assert proc.returncode == (1 if valid else 2), proc.stderr
    assert proc.stdout == ""


def test_huge_interval_live_keeps_captioning_once(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    """A huge --interval once killed the live worker quietly (the run went on without captions, exit 0)."""
    clip = make_video(tmp_path / "clip.avi", 20, fps=20.0)
    proc = run_cli("-v", clip, "--live", "--interval", "1e300", *flags(models), env=HEADLESS, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Standard output closed early, closed, or full
# ---------------------------------------------------------------------------------------------


def run_shell(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=cli_env(), cwd=ROOT,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def cli(*args: str | Path) -> str:
    import shlex

    return " ".join(shlex.quote(str(a)) for a in [sys.executable, SCRIPT, *args])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_image_mode_stdout_full_is_one_error(models: Path, fmt: str) -> None:
    proc = run_shell(cli("-i", SAMPLE, SAMPLE, "--format", fmt, *flags(models)) + " > /dev/full")
    assert proc.returncode == 1
    assert proc.stderr == "ERROR: cannot write the captions to standard output: No space left on device\n"


def test_image_mode_stdout_closed_early_or_closed(models: Path, tmp_path: Path) -> None:
    head = run_shell(cli("-i", SAMPLE, SAMPLE, SAMPLE, *flags(models)) + " | head -1; exit ${PIPESTATUS[0]}")
    assert head.returncode == 0 and len(head.stdout.splitlines()) == 1 and head.stderr == ""
    out = tmp_path / "out"
    closed = run_shell(cli("-i", SAMPLE, tmp_path / "missing.png", "-s", out, *flags(models)) + " >&-")
    # Nobody reads the captions, but the annotated image is still saved and the failure still reported.
    assert closed.returncode == 1 and (out / "chelsea.png").exists()
    assert closed.stderr.strip().endswith("missing.png does not exist")


def test_video_mode_stdout_full_loses_nothing(models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 20, fps=10.0)
    out = tmp_path / "out.avi"
    out.write_bytes(b"an earlier video")
    proc = run_shell(cli("-v", clip, "-s", out, "--no-display", *flags(models)) + " > /dev/full")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert "cannot write the captions to standard output" in proc.stderr
    assert out.read_bytes() == b"an earlier video" and leftovers(tmp_path) == []


def test_video_mode_stdout_closed_still_saves_the_video(models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 20, fps=10.0)
    out = tmp_path / "out.avi"
    proc = run_shell(cli("-v", clip, "-s", out, "--no-display", *flags(models)) + " >&-")
    assert proc.returncode == 0 and proc.stderr == ""
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    capture.release()


# ---------------------------------------------------------------------------------------------
# Full disks, for every kind of output
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("ext", ["mp4", "webm", "avi"])
def test_video_onto_a_full_disk_keeps_the_earlier_file(run_cli: RunCli, models: Path, tmp_path: Path,
                                                        ext: str) -> None:
    clip = make_video(tmp_path / "clip.avi", 120, fps=10.0, size=(320, 240))
    with small_disk(tmp_path / "disk", "120k") as disk:
        out = disk / f"out.{ext}"
        out.write_bytes(b"an earlier, good video")
        proc = run_cli("-v", clip, "-s", out, *flags(models), env=HEADLESS)
        assert proc.returncode == 1
        assert len(proc.stderr.splitlines()) == 1 and f"cannot write {out}" in proc.stderr
        assert "nothing was saved" in proc.stderr
        assert out.read_bytes() == b"an earlier, good video" and leftovers(disk) == []


def test_images_onto_a_full_disk(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(big), rng.integers(0, 256, (400, 600, 3), dtype=np.uint8))  # ~700 kB as PNG
    with small_disk(tmp_path / "disk", "256k") as disk:
        earlier = disk / "big.png"
        earlier.write_bytes(b"an earlier output")
        proc = run_cli("-i", big, SAMPLE, "-s", disk, *flags(models))
        assert proc.returncode == 1 and "No space left on device" in proc.stderr
        assert earlier.read_bytes() == b"an earlier output" and leftovers(disk) == []


def test_read_only_file_system_is_named(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    with small_disk(tmp_path / "ro", "64k", read_only=True) as disk:
        proc = run_cli("-i", SAMPLE, "-s", disk / "out.png", *flags(models))
    assert proc.returncode == 1 and "read-only file system" in proc.stderr and "permission" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Inputs in the wrong place, and images built to exhaust memory
# ---------------------------------------------------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims width x height pixels (a decompression bomb's first step)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_oversized_headers_fail_alone_and_the_batch_goes_on(models: Path, tmp_path: Path) -> None:
    bombs = [png_claiming(tmp_path / "claims_50000.png", 50000, 50000),
             png_claiming(tmp_path / "claims_20000.png", 20000, 20000)]
    proc, peak = peak_rss_mb(["-i", *bombs, SAMPLE, "--json", *flags(models)])
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1
    assert [r["caption"] is None for r in records] == [True, True, False]
    assert all("megapixels, the most this program decodes" in r["error"] for r in records[:2])
    assert peak < 1000, f"peak RSS {peak:.0f} MB"


def test_a_tall_narrow_image_stays_in_memory_bounds(models: Path, tmp_path: Path) -> None:
    tall = tmp_path / "tall.png"
    cv2.imwrite(str(tall), np.full((40000, 600, 3), 100, np.uint8))
    proc, peak = peak_rss_mb(["-i", tall, "--json", *flags(models)])
    assert proc.returncode == 0 and json.loads(proc.stdout)["caption"]
    assert peak < 1500, f"peak RSS {peak:.0f} MB"


def test_a_fifo_input_is_refused_not_waited_for(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    proc = run_cli("-i", fifo, SAMPLE, *flags(models), timeout=60)
    assert proc.returncode == 1 and proc.stderr == f"ERROR: {fifo} is not a regular file (a pipe, device or socket)\n"
    assert proc.stdout.startswith(f"{SAMPLE}: ")


def test_a_newline_in_a_file_name_keeps_one_line_per_image(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes(SAMPLE.read_bytes())
    proc = run_cli("-i", odd, SAMPLE, *flags(models))
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert proc.stdout.startswith(f"{tmp_path}/two\\x0alines.png: ")


def test_a_refused_savepath_plan_leaves_no_folder(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    plan = tmp_path / "new" / "deeper"
    proc = run_cli("-i", SAMPLE, SAMPLE.parent / "*.png", "-s", plan, *flags(models))  # the same photo twice
    assert proc.returncode == 1 and "would both be saved as" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_model_dir_naming_a_file(run_cli: RunCli, tmp_path: Path) -> None:
    afile = tmp_path / "models.txt"
    afile.write_text("not a folder")
    proc = run_cli("-i", SAMPLE, "--model-dir", afile, "--offline")
    assert proc.returncode == 1
    assert proc.stderr == f"ERROR: the model folder {afile} is a file, not a folder; give --model-dir a folder\n"


# ---------------------------------------------------------------------------------------------
# Signals at awkward moments
# ---------------------------------------------------------------------------------------------


def start(args: list[str | Path], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**cli_env(), **HEADLESS}, cwd=cwd,
                            stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_ctrl_c_during_start_up_is_clean(models: Path, tmp_path: Path, delay: float) -> None:
    """Ctrl-C while Python imports OpenCV / ONNX Runtime or while the models load (counted from the start
    of the program's imports: the interpreter's own start-up before it answers no signal)."""
    proc = start(["-i", SAMPLE, *flags(models)], tmp_path)
    wait_until(proc, imports_begun(proc))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), err  # 0: it finished before the signal came
    assert proc.returncode == 0 or err == "ERROR: interrupted\n"


def test_two_quick_ctrl_c_in_video_mode_leave_a_complete_video_or_none(models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 600, fps=30.0)
    out = tmp_path / "out.avi"
    proc = start(["-v", clip, "--sync", "-s", out, "--no-display", *flags(models)], tmp_path)
    assert proc.stdout is not None
    proc.stdout.readline()  # the first caption: the loop is running
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)  # never SIGABRT (-6) from a dying model thread
    assert "Traceback" not in err and "terminate called" not in err
    assert leftovers(tmp_path) == []
    if out.exists():
        capture = cv2.VideoCapture(str(out))
        assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) > 0
        capture.release()


def test_ctrl_c_mid_batch_leaves_only_complete_images(models: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(40):
        (photos / f"p{k:02d}.png").write_bytes(SAMPLE.read_bytes())
    out = tmp_path / "out"
    proc = start(["-i", photos, "-s", out, *flags(models)], tmp_path)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert leftovers(out) == []
    for saved in out.iterdir():
        assert cv2.imread(str(saved)) is not None


def test_decoder_library_warnings_stay_off_stderr(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    """libpng prints 'libpng warning: ...' itself for harmless defects; the image still decodes."""
    import struct
    import zlib

    data = SAMPLE.read_bytes()
    end_of_header = 8 + 8 + 13 + 4
    text = b"tEXt" + b"Comment\x00hello"
    bad_crc = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", (zlib.crc32(text) + 1) & 0xFFFFFFFF)
    damaged = tmp_path / "damaged_text_chunk.png"
    damaged.write_bytes(data[:end_of_header] + bad_crc + data[end_of_header:])
    proc = run_cli("-i", damaged, *flags(models))
    assert proc.returncode == 0 and proc.stdout.strip() and proc.stderr == ""


def test_video_mode_stdout_closed_early_saves_a_complete_video(models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 40, fps=10.0)
    out = tmp_path / "out.avi"
    proc = run_shell(cli("-v", clip, "-s", out, "--no-display", "--interval", "0.5", *flags(models))
                     + " | head -1; exit ${PIPESTATUS[0]}")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1
    assert leftovers(tmp_path) == []
    capture = cv2.VideoCapture(str(out))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames > 0  # stopped early (nobody reads the captions), but what was written is a whole video


@pytest.mark.parametrize(("slot", "other"), [("model_feat.onnx", "model_fc_nsc.onnx"),
                                             ("model_fc_nsc.onnx", "model_feat.onnx")])
def test_a_valid_model_in_the_wrong_slot_is_named_at_load(run_cli: RunCli, models: Path, slot: str,
                                                          other: str) -> None:
    (models / slot).write_bytes((models / other).read_bytes())
    proc = run_cli("-i", SAMPLE, SAMPLE, *flags(models))
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and f"is {models / slot}" in proc.stderr


def test_int8_files_onto_a_full_disk(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    used = sum(p.stat().st_size for p in models.iterdir())
    with small_disk(tmp_path / "disk", f"{used // 1024 + 64}k") as disk:
        shutil.copytree(models, disk / "models")
        proc = run_cli("-i", SAMPLE, "--model-dir", disk / "models", "--offline", "--onnx", "--precision", "int8")
        assert proc.returncode == 1
        assert "No space left on device" in proc.stderr and "--precision fp32" in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if line.startswith("ERROR")]) == 1
        assert leftovers(disk) == [] and not list((disk / "models").glob(".derived-build-*"))
        assert not list((disk / "models").glob("*.int8-*"))


# ---------------------------------------------------------------------------------------------
# Round 3: links and pipes where outputs go, names that are not UTF-8, huge files, a file swapped
# for a pipe after listing, and the smaller findings of that round
# ---------------------------------------------------------------------------------------------


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR")]


def test_a_linked_sidecar_is_refused_and_what_it_points_at_is_kept(run_cli: RunCli, models: Path,
                                                                   tmp_path: Path) -> None:
    """photo.png.xmp linking to another photo once had that photo replaced by an XMP packet (exit 0); a link
    into a folder that does not exist ended the whole run with an internal error."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (photos / name).write_bytes(SAMPLE.read_bytes())
    victim, notes = tmp_path / "victim.png", tmp_path / "notes.txt"
    victim.write_bytes(SAMPLE.read_bytes())
    notes.write_text("my notes\n")
    (photos / "a.png.xmp").symlink_to(victim)
    (photos / "b.png.xmp").symlink_to(tmp_path / "no-such-folder" / "b.xmp")
    (photos / "c.png.xmp").symlink_to(notes)
    extra = photos / "d.png"
    extra.write_bytes(SAMPLE.read_bytes())
    proc = run_cli("-i", photos, "--metadata-sidecar", "--json", *flags(models))
    assert proc.returncode == 1
    got = {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert all(got[name]["caption"] for name in ("a.png", "b.png", "c.png", "d.png"))  # every photo captioned
    for name in ("a.png", "b.png", "c.png"):
        assert got[name]["metadata"]["action"] == "failed"
        assert "is a symbolic link" in got[name]["metadata"]["error"]
    assert got["d.png"]["metadata"]["action"] == "written" and (photos / "d.png.xmp").is_file()
    assert proc.stderr == ""  # with --json, each failure is told in its record
    assert victim.read_bytes() == SAMPLE.read_bytes() and notes.read_text() == "my notes\n"
    assert all((photos / f"{n}.png.xmp").is_symlink() for n in "abc")


def test_outputs_are_never_written_through_links_or_into_pipes(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    linked = tmp_path / "out.png"
    linked.symlink_to(victim)
    one = run_cli("-i", SAMPLE, "-s", linked, *flags(models))
    assert one.returncode == 1 and one.stdout == "" and "is a symbolic link" in one.stderr
    listing = tmp_path / "captions.csv"
    listing.symlink_to(victim)
    table = run_cli("-i", SAMPLE, "--captions-file", listing, *flags(models))
    assert table.returncode == 1 and table.stdout == "" and "is a symbolic link" in table.stderr
    fifo = tmp_path / "captions.json"
    os.mkfifo(fifo)
    piped = run_cli("-i", SAMPLE, "--captions-file", fifo, *flags(models), timeout=60)
    assert piped.returncode == 1 and "is a pipe, device or socket" in piped.stderr
    assert victim.read_bytes() == b"precious" and linked.is_symlink() and listing.is_symlink()
    # Several inputs into a folder: only the image whose output is a link fails; the others are saved.
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.png").symlink_to(victim)
    second = tmp_path / "dog.png"
    second.write_bytes(SAMPLE.read_bytes())
    cat = tmp_path / "cat.png"
    cat.write_bytes(SAMPLE.read_bytes())
    many = run_cli("-i", cat, second, "-s", out, *flags(models))
    assert many.returncode == 1 and len(error_lines(many.stderr)) == 1 and "cat.png" in many.stderr
    assert cv2.imread(str(out / "dog.png")) is not None and (out / "cat.png").is_symlink()
    assert victim.read_bytes() == b"precious" and leftovers(tmp_path) == []


def test_a_captions_file_among_the_devices_is_refused(run_cli: RunCli, models: Path) -> None:
    """As root, --captions-file /dev/stdout.csv created a regular file in /dev."""
    target = Path("/dev/stdout.csv")
    assert not target.exists()
    proc = run_cli("-i", SAMPLE, "--captions-file", target, *flags(models))
    assert proc.returncode == 1 and "holds the system's devices" in proc.stderr
    assert not target.exists()


def test_names_that_are_not_utf8_round_trip_in_every_output(models: Path, tmp_path: Path) -> None:
    """A name with a Latin-1 byte once stopped the run with --write-metadata, and with --captions-file the
    file was never written and the error blamed standard output."""
    folder = tmp_path / "photos"
    folder.mkdir()
    name = b"caf\xe9 \xff.png"
    (folder / os.fsdecode(name)).write_bytes(SAMPLE.read_bytes())
    table = tmp_path / "captions.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), "-i", folder, "--json", "--write-metadata",
                           "--captions-file", table, *flags(models)], capture_output=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    record = json.loads(proc.stdout.decode("utf-8", "surrogateescape"))
    assert os.fsencode(record["input"]) == bytes(folder) + b"/" + name and record["caption"]
    assert record["metadata"]["action"] == "written"
    rows = list(csv.reader(io.StringIO(table.read_bytes().decode("utf-8", "surrogateescape"), newline="")))
    assert os.fsencode(rows[1][0]) == os.fsencode(record["input"]) and rows[1][1] == record["caption"]
    text = subprocess.run([sys.executable, str(SCRIPT), "-i", folder, folder / "x.png", *flags(models)],
                          capture_output=True, env=cli_env(), timeout=120)
    assert bytes(folder) + b"/" + name + b": " in text.stdout


def test_huge_files_are_refused_by_their_size_before_they_are_read(models: Path, tmp_path: Path) -> None:
    """A 40 GB sparse big.jpg ended the run with MemoryError; a large non-image cost its size in memory."""
    sparse = tmp_path / "big.jpg"
    with sparse.open("wb") as f:
        f.truncate(40 << 30)
    junk = tmp_path / "junk.png"
    with junk.open("wb") as f:
        f.truncate(200 << 20)  # within the size bound, but not an image
    proc, peak = peak_rss_mb(["-i", sparse, junk, SAMPLE, "--json", *flags(models)])
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and [r["caption"] is None for r in records] == [True, True, False]
    assert "40.0 GB, more than an image of 134 megapixels can take" in records[0]["error"]
    assert "do not start like any image format" in records[1]["error"]
    assert peak < 600, f"peak RSS {peak:.0f} MB"


def test_a_photo_swapped_for_a_pipe_after_listing_is_refused_not_waited_for(models: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(30):
        (photos / f"p{k:02d}.png").write_bytes(SAMPLE.read_bytes())
    proc = start(["-i", photos, "--workers", "1", *flags(models)], tmp_path)
    assert proc.stdout is not None
    proc.stdout.readline()  # listed and running; the last photo is read much later
    last = photos / "p29.png"
    last.unlink()
    os.mkfifo(last)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err == f"ERROR: {last} is not a regular file (a pipe, device or socket)\n"
    # The others are all captioned (communicate() may miss lines readline() had buffered: the last counts).
    assert out.splitlines()[-1].startswith(f"{photos / 'p28.png'}: ") and "p29.png" not in out


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_carriage_return_in_a_name_is_quoted(run_cli: RunCli, models: Path, tmp_path: Path, fmt: str) -> None:
    odd = tmp_path / "one\rtwo.png"
    odd.write_bytes(SAMPLE.read_bytes())
    proc = subprocess.run([sys.executable, str(SCRIPT), "-i", odd, SAMPLE, "--format", fmt, *flags(models)],
                          capture_output=True, env=cli_env(), timeout=120)  # bytes: text mode would turn \r into \n
    assert proc.returncode == 0
    dialect = csv.excel if fmt == "csv" else csv.excel_tab
    rows = list(csv.reader(io.StringIO(proc.stdout.decode(), newline=""), dialect=dialect))
    assert len(rows) == 3 and rows[1][0] == str(odd) and rows[2][0] == str(SAMPLE)


def test_a_full_disk_under_the_captions_file_names_it_and_the_run_goes_on(models: Path, tmp_path: Path) -> None:
    photos = [tmp_path / f"p{k}.png" for k in range(4)]
    for photo in photos:
        photo.write_bytes(SAMPLE.read_bytes())
    with small_disk(tmp_path / "disk", "64k") as disk:
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        dest = disk / "captions.csv"
        proc = run_shell(cli("-i", *photos, "--captions-file", dest, *flags(models)))
        assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 4  # every caption still printed
        assert proc.stderr == f"ERROR: cannot write {dest}: No space left on device; it was not written\n"
        assert not dest.exists() and leftovers(disk) == []


def test_more_workers_than_cores_is_said_once(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    photos = []
    for k in range(cores + 1):
        photos.append(tmp_path / f"p{k}.png")
        photos[-1].write_bytes(SAMPLE.read_bytes())
    proc = run_cli("-i", *photos, "--workers", "64", *flags(models))
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == cores + 1
    assert proc.stderr == (f"WARNING: {cores + 1} workers on {cores} cores: each holds its own model sessions, so "
                           f"memory grows with them while speed does not; {cores} or fewer is enough here\n")


def test_int8_build_on_an_almost_full_disk_says_the_disk_is_full(run_cli: RunCli, models: Path,
                                                                 tmp_path: Path) -> None:
    """With room for the fp32 copy but not for the tools' later files, the build failed with "Wire format
    was corrupt" and blamed model_feat.onnx."""
    used = sum(p.stat().st_size for p in models.iterdir())
    feature = (models / "model_feat.onnx").stat().st_size
    with small_disk(tmp_path / "disk", f"{(used + 3 * feature) // 1024}k") as disk:
        shutil.copytree(models, disk / "models")
        proc = run_cli("-i", SAMPLE, "--model-dir", disk / "models", "--offline", "--onnx", "--precision", "int8")
        assert proc.returncode == 1 and "Wire format" not in proc.stderr
        assert "No space left on device" in proc.stderr and "free some space" in proc.stderr
        assert leftovers(disk) == [] and not list((disk / "models").glob(".derived-build-*"))


def test_a_video_output_that_is_a_link_is_refused(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 10, fps=10.0)
    victim = tmp_path / "victim.avi"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.avi"
    out.symlink_to(victim)
    proc = run_cli("-v", clip, "-s", out, *flags(models), env=HEADLESS)
    assert proc.returncode == 1 and "is a symbolic link" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert victim.read_bytes() == b"precious" and out.is_symlink()
