"""--resume with --captions-file: records appended as each input finishes, a run killed outright (SIGKILL)
at several points and resumed until done records every input exactly once with the captions of a plain
run; a torn last line is repaired, failed inputs are tried again, done ones are not read again; a file
that is not ours, a link or a pipe is refused and left as it was (docs/large-runs.md#resume)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SAMPLE, SCRIPT, RunCli, cli_env
from tests.reference import imread

PHOTOS = 48  # enough that a run killed after 30 records still had work left (each takes tens of ms)
FORMATS = {"jsonl": None, "csv": csv.excel, "tsv": csv.excel_tab}


def flags(models: Path) -> tuple[str | Path, ...]:
    return ("--model-dir", models, "--offline", "--onnx", "--beam-size", "1")


def make_photos(folder: Path, count: int = PHOTOS) -> list[Path]:
    """Distinct photos, large enough (1200x800) that reading one takes a while."""
    folder.mkdir()
    base = imread(SAMPLE)
    paths = [folder / f"photo{i:02d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        cv2.imwrite(str(path), cv2.resize(np.roll(base, 17 * i, axis=1), (1200, 800)))
    return paths


def records(path: Path) -> list[dict[str, str | None]]:
    """The file's records as {input, caption, error}; every line must be whole."""
    text = path.read_bytes().decode("utf-8")
    assert text == "" or text.endswith("\n"), "a torn last line"
    dialect = FORMATS[path.suffix[1:]]
    if dialect is None:
        rows = [json.loads(line) for line in text.splitlines()]
        return [{"input": r["input"], "caption": r["caption"], "error": r.get("error")} for r in rows]
    return [{"input": r["input"], "caption": r["caption"] or None, "error": r["error"] or None}
            for r in csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)]


def complete_records(path: Path) -> int:
    """Whole records in the file now (a header is not one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return -1
    lines = data.count(b"\n")
    return lines - 1 if path.suffix != ".jsonl" and lines else lines


def killed_after(args: list[str | Path], cwd: Path, captions: Callable[[], Path], count: int) -> None:
    """Run the CLI and SIGKILL it once the file ``captions()`` names holds ``count`` records (0: once it
    exists)."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while complete_records(captions()) < count and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before {count} records: {proc.stderr.read()!r}"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def in_input_order(names: list[str | None]) -> bool:
    return names == sorted(names, key=str)


@pytest.mark.parametrize("ext", list(FORMATS))
def test_killed_at_several_points_and_resumed_records_every_input_once(run_cli: RunCli, models: Path,
                                                                        tmp_path: Path, ext: str) -> None:
    photos = make_photos(tmp_path / "photos")
    plain_file = tmp_path / f"plain.{ext}"
    plain = run_cli("-i", tmp_path / "photos", "--captions-file", plain_file, *flags(models))
    assert plain.returncode == 0, plain.stderr
    want = {r["input"]: r["caption"] for r in records(plain_file)}
    assert len(want) == PHOTOS

    captions = tmp_path / f"captions.{ext}"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume",
                                 *flags(models)]
    segments: list[int] = []  # how many records each killed run left: each run's own records are in input order
    for count in (0, 8, 30):
        killed_after(command, tmp_path, lambda: captions, count)
        got = records(captions)
        names = [r["input"] for r in got]
        assert len(names) == len(set(names)) and all(r["caption"] == want[r["input"]] for r in got)
        assert len(got) >= max(count, segments[-1] if segments else 0)  # nothing recorded was lost
        segments.append(len(got))
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    got = records(captions)
    inputs = sorted(str(r["input"]) for r in got)
    assert inputs == sorted(map(str, want)) and len(got) == PHOTOS  # each input exactly once
    assert {r["input"]: r["caption"] for r in got} == want and all(r["error"] is None for r in got)
    bounds = [0, *segments, len(got)]
    assert all(in_input_order([r["input"] for r in got[a:b]]) for a, b in zip(bounds, bounds[1:], strict=False))
    # The last run printed only what it captioned: the inputs the killed runs had not recorded.
    assert len(done.stdout.splitlines()) == PHOTOS - segments[-1]
    again = run_cli(*command, "--json")
    assert again.returncode == 0 and again.stdout == "" and records(captions) == got  # nothing left to do
    assert str(photos[0]) in want


@pytest.mark.parametrize("ext", list(FORMATS))
def test_a_torn_last_line_is_cut_off_and_its_input_captioned_again(run_cli: RunCli, models: Path,
                                                                   tmp_path: Path, ext: str) -> None:
    make_photos(tmp_path / "photos", 5)
    captions = tmp_path / f"captions.{ext}"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume", *flags(models)]
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    whole = records(captions)
    data = captions.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    captions.write_bytes(data[: last + (len(data) - last) // 2])  # half of the last record, as a crash leaves it
    second = run_cli(*command, "--json")
    assert second.returncode == 0, second.stderr
    assert "ended in a cut-off line" in second.stderr and len(second.stderr.splitlines()) == 1
    assert [json.loads(line)["input"] for line in second.stdout.splitlines()] == [whole[-1]["input"]]
    assert records(captions) == whole and captions.read_bytes()[:last] == data[:last]  # the rest untouched


def test_failed_inputs_are_tried_again_and_done_ones_are_not_read_again(run_cli: RunCli, models: Path,
                                                                        tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 4)
    good = photos[1].read_bytes()
    photos[1].write_bytes(b"not an image at all")
    missing = tmp_path / "photos" / "later.png"
    captions = tmp_path / "captions.jsonl"
    command: list[str | Path] = ["-i", *photos, missing, "--captions-file", captions, "--resume", *flags(models)]
    first = run_cli(*command)
    assert first.returncode == 1
    assert [(r["input"], r["error"] is not None) for r in records(captions)] == [
        (str(photos[0]), False), (str(photos[1]), True), (str(photos[2]), False), (str(photos[3]), False),
        (str(missing), True)]
    photos[1].write_bytes(good)
    missing.write_bytes(good)
    photos[0].write_bytes(b"spoiled since: were it read again, it would fail")
    second = run_cli(*command, "--json")
    assert second.returncode == 0, second.stderr
    assert [json.loads(line)["input"] for line in second.stdout.splitlines()] == [str(photos[1]), str(missing)]
    got = records(captions)
    assert [r["input"] for r in got] == [str(photos[0]), str(photos[2]), str(photos[3]), str(photos[1]), str(missing)]
    assert all(r["caption"] and r["error"] is None for r in got)  # the failed records are gone


NOT_OURS = {  # each a file some other program (or another format) left at the captions path
    "other JSON": ("captions.jsonl", b'{"a": 1}\n'),
    "CSV in .jsonl": ("captions.jsonl", b"input,caption,confidence,output,metadata,error\nx.png,a cat,-0.5,,,\n"),
    "a JSON array": ("captions.json", b'{"input": "x.png", "caption": "a cat"}\n[1, 2, 3]\n'),
    "other header": ("captions.csv", b"name,text\nx.png,a cat\n"),
    "CSV in .tsv": ("captions.tsv", b"input,caption,confidence,output,metadata,error\n"),
    "binary": ("captions.csv", bytes(range(256)) * 64),
    "one long line": ("captions.jsonl", b"x" * (5 << 20)),
}


@pytest.mark.parametrize("case", list(NOT_OURS))
def test_a_file_that_is_not_ours_is_refused_and_left_as_it_was(run_cli: RunCli, models: Path, tmp_path: Path,
                                                               case: str) -> None:
    name, content = NOT_OURS[case]
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / name
    target.write_bytes(content)
    proc = run_cli("-i", SAMPLE, "--captions-file", target, "--resume", *flags(models))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"ERROR: --captions-file {target}: ") and len(proc.stderr.splitlines()) == 1
    assert "choose another file" in proc.stderr and len(proc.stderr) < 400
    assert target.read_bytes() == content and sorted(p.name for p in folder.iterdir()) == [name]


def test_links_and_pipes_at_the_captions_path_are_refused(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b"precious\n")
    linked = tmp_path / "captions.jsonl"
    linked.symlink_to(victim)
    proc = run_cli("-i", SAMPLE, "--captions-file", linked, "--resume", *flags(models))
    assert proc.returncode == 1 and proc.stdout == "" and "is a symbolic link" in proc.stderr
    assert victim.read_bytes() == b"precious\n" and linked.is_symlink()
    fifo = tmp_path / "captions.csv"
    os.mkfifo(fifo)
    piped = run_cli("-i", SAMPLE, "--captions-file", fifo, "--resume", *flags(models), timeout=60)
    assert piped.returncode == 1 and piped.stdout == "" and "is a pipe, device or socket" in piped.stderr


@pytest.mark.parametrize(("extra", "message"), [
    ((), "--resume needs --captions-file"),
    (("--captions-file", "captions.txt"), "JSON Lines, CSV or TSV files only"),
    (("--captions-file", "captions.jsonl", "--references", "refs.json"),
     "--resume cannot go with --references: a resumed run captions only part of the inputs; score the whole "
     "file afterwards with --score-captions captions.jsonl --references refs.json"),
])
def test_resume_needs_a_captions_file_it_can_read_back(run_cli: RunCli, models: Path, extra: tuple[str, ...],
                                                       message: str) -> None:
    proc = run_cli("-i", SAMPLE, "--resume", *extra, *flags(models))
    assert proc.returncode == 2 and message in proc.stderr


def test_a_second_run_on_the_same_file_is_refused_while_the_first_appends(run_cli: RunCli, models: Path,
                                                                          tmp_path: Path) -> None:
    make_photos(tmp_path / "photos")
    captions = tmp_path / "captions.jsonl"
    command = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume", *flags(models)]
    first = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, command)], cwd=tmp_path, env=cli_env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while complete_records(captions) < 2 and first.poll() is None:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # paused mid-run, the file open and locked: however slow the second is
        try:
            second = run_cli(*command)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1 and second.stdout == ""
    assert "is being written by another run" in second.stderr
    names = [r["input"] for r in records(captions)]
    assert len(names) == PHOTOS == len(set(names))


def test_without_resume_a_killed_run_leaves_the_old_file_whole(models: Path, tmp_path: Path) -> None:
    make_photos(tmp_path / "photos")
    captions = tmp_path / "captions.jsonl"
    captions.write_bytes(b"an earlier run's file\n")
    def part() -> Path:  # the hidden file the records go to until the run ends
        return next(tmp_path.glob(".captions.jsonl.part-*"), tmp_path / "none-yet.jsonl")

    killed_after(["-i", tmp_path / "photos", "--captions-file", captions, *flags(models)], tmp_path, part, 8)
    assert captions.read_bytes() == b"an earlier run's file\n"
