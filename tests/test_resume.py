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


def paused_run(args: list[str | Path], cwd: Path, captions: Callable[[], Path], count: int,
               stdout: Path | None = None) -> subprocess.Popen[bytes]:
    """The CLI started, and stopped (SIGSTOP) once the file ``captions()`` names holds ``count`` records:
    mid-run, its file open, however slow what the test does next. The caller sends SIGCONT."""
    out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=cli_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    finally:
        if not isinstance(out, int):
            out.close()
    deadline = time.monotonic() + 120
    while complete_records(captions()) < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if proc.poll() is not None or time.monotonic() >= deadline:
        proc.kill()
        pytest.fail(f"the run did not reach {count} records: {proc.communicate(timeout=30)[1]!r}")
    proc.send_signal(signal.SIGSTOP)
    return proc


def finished(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Go on with a paused run to its end (bounded): its exit status and stderr."""
    proc.send_signal(signal.SIGCONT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode("utf-8", "replace")


def damage(data: bytes, ext: str, line: int) -> bytes:
    """``data`` with its line ``line`` (from 1) damaged: a quote opened before the caption and never closed
    in a table, a JSON object cut short in JSON Lines; every other byte kept."""
    lines = data.splitlines(keepends=True)
    if ext == "jsonl":
        lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2] + b"\n"
    else:
        sep = b"\t" if ext == "tsv" else b","
        lines[line - 1] = lines[line - 1].replace(sep, sep + b'"', 1)
    return b"".join(lines)


@pytest.mark.parametrize("torn_end", [False, True], ids=["whole end", "torn end too"])
@pytest.mark.parametrize("ext", list(FORMATS))
def test_a_damaged_record_in_the_middle_is_refused_and_nothing_is_cut(run_cli: RunCli, models: Path,
                                                                     tmp_path: Path, ext: str,
                                                                     torn_end: bool) -> None:
    make_photos(tmp_path / "photos", 20)
    captions = tmp_path / f"captions.{ext}"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume", *flags(models)]
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    line = 10 if ext == "jsonl" else 11  # the 10th record of 20 (after a table's header)
    damaged = damage(captions.read_bytes(), ext, line)
    if torn_end:  # and the last line cut short: still the damage is refused, not the rest cut off
        damaged = damaged[:-20]
    captions.write_bytes(damaged)
    proc = run_cli(*command)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith(f"ERROR: --captions-file {captions}: line {line} is not one of this program's "
                                  "records") and len(proc.stderr.splitlines()) == 1
    assert captions.read_bytes() == damaged  # byte for byte


@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_a_record_spanning_lines_is_read_whole_and_a_torn_last_line_after_it_cut(run_cli: RunCli, models: Path,
                                                                                 tmp_path: Path, ext: str) -> None:
    photos = make_photos(tmp_path / "photos", 3)
    photos[0].rename(tmp_path / "photos" / "a\nname with a line break.png")  # quoted by the writer: two lines
    captions = tmp_path / f"captions.{ext}"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume", *flags(models)]
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    whole = records(captions)
    data = captions.read_bytes()
    assert data.count(b"\n") == 5 and "\n" in str(whole[0]["input"])
    again = run_cli(*command)
    assert again.returncode == 0 and again.stdout == "" and captions.read_bytes() == data, again.stderr
    captions.write_bytes(data[:-10])  # the last record cut short
    third = run_cli(*command, "--json")
    assert third.returncode == 0 and "ended in a cut-off line" in third.stderr, third.stderr
    assert [json.loads(line)["input"] for line in third.stdout.splitlines()] == [whole[-1]["input"]]
    assert records(captions) == whole


@pytest.mark.parametrize("ext", list(FORMATS))
def test_an_input_recorded_twice_ends_with_one_record_the_last_done_one(run_cli: RunCli, models: Path,
                                                                       tmp_path: Path, ext: str) -> None:
    photos = make_photos(tmp_path / "photos", 3)
    captions = tmp_path / f"captions.{ext}"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume", *flags(models)]
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    lines = captions.read_bytes().splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if ext != "jsonl" else ([], lines)
    elsewhere = str(tmp_path / "elsewhere.png")  # not an input of these runs

    def failed(name: str, error: str) -> bytes:
        if ext == "jsonl":
            return json.dumps({"input": name, "caption": None, "error": error}).encode() + b"\n"
        return ("\t" if ext == "tsv" else ",").join([name, "", "", "", "", error]).encode() + b"\n"

    sep = b'"caption": "' if ext == "jsonl" else (b"\t" if ext == "tsv" else b",")
    older = body[1].replace(sep, sep + b"an older caption ", 1)
    assert older != body[1]
    # photo 0: a failed record, then a done one; photo 1: two done ones; photo 2: one; elsewhere: two failed
    captions.write_bytes(b"".join([*head, failed(elsewhere, "first"), failed(str(photos[0]), "cannot read it"),
                                   older, body[0], body[1], failed(elsewhere, "second"), body[2]]))
    again = run_cli(*command)
    assert again.returncode == 0 and again.stdout == "", again.stderr
    # one record per input: the last done one of each, or else the last one
    assert captions.read_bytes() == b"".join([*head, body[0], body[1], failed(elsewhere, "second"), body[2]])
    assert "recorded some inputs more than once: 3 records were removed" in again.stderr
    assert len(again.stderr.splitlines()) == 1
    kept = captions.read_bytes()
    third = run_cli(*command)
    assert third.returncode == 0 and third.stdout == third.stderr == "" and captions.read_bytes() == kept


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_captions_file_replaced_or_removed_mid_run_is_an_error_and_the_records_stay_on_stdout(
        run_cli: RunCli, models: Path, tmp_path: Path, how: str) -> None:
    make_photos(tmp_path / "photos")
    captions = tmp_path / "captions.jsonl"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, "--resume", *flags(models)]
    stdout = tmp_path / "stdout.jsonl"
    proc = paused_run([*command, "--json"], tmp_path, lambda: captions, 2, stdout)
    try:
        if how == "replaced":  # a copy renamed over it: the same records, another file
            copy = tmp_path / "copy.jsonl"
            copy.write_bytes(captions.read_bytes())
            os.replace(copy, captions)
            kept = captions.read_bytes()
        else:
            captions.unlink()
    finally:
        status, err = finished(proc)
    assert status == 1
    assert err == (f"ERROR: --captions-file {captions} was replaced or removed while this run appended to it, so "
                   "it lacks some of this run's records (they are on standard output); run again with --resume "
                   "to caption what it lacks\n")
    printed = [json.loads(line)["input"] for line in stdout.read_text().splitlines()]
    assert len(printed) == len(set(printed)) == PHOTOS  # every caption still printed
    if how == "removed":
        assert not captions.exists()
        return
    assert captions.read_bytes() == kept  # the file put there was never written to
    done = run_cli(*command)  # and a run with --resume makes it whole
    assert done.returncode == 0, done.stderr
    names = [r["input"] for r in records(captions)]
    assert len(names) == len(set(names)) == PHOTOS


def test_a_run_without_resume_is_refused_the_file_a_resume_run_appends_to(run_cli: RunCli, models: Path,
                                                                         tmp_path: Path) -> None:
    make_photos(tmp_path / "photos")
    captions = tmp_path / "captions.jsonl"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, *flags(models)]
    first = paused_run([*command, "--resume"], tmp_path, lambda: captions, 2)
    try:
        before = captions.read_bytes()
        second = run_cli(*command)
        after = captions.read_bytes()
    finally:
        status, err = finished(first)
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == (f"ERROR: --captions-file {captions} is being written by another run of this "
                             "program; let it finish, or choose another file\n")
    assert after == before and not list(tmp_path.glob(".captions.jsonl.part-*"))
    assert status == 0, err
    names = [r["input"] for r in records(captions)]
    assert len(names) == len(set(names)) == PHOTOS


def test_a_run_without_resume_does_not_rename_over_a_resume_run_that_began_after_it(models: Path,
                                                                                   tmp_path: Path) -> None:
    make_photos(tmp_path / "photos")
    captions = tmp_path / "captions.jsonl"
    command: list[str | Path] = ["-i", tmp_path / "photos", "--captions-file", captions, *flags(models)]

    def part() -> Path:  # the hidden file the plain run's records go to until it ends
        return next(tmp_path.glob(".captions.jsonl.part-*"), tmp_path / "none-yet.jsonl")

    plain = paused_run(command, tmp_path, part, 2)  # past its start's check: nothing to refuse then
    try:
        resumed = paused_run([*command, "--resume"], tmp_path, lambda: captions, 2)
        try:
            plain_status, plain_err = finished(plain)  # it ends while the --resume run holds the file
        finally:
            status, err = finished(resumed)
    finally:
        if plain.poll() is None:
            finished(plain)
    assert plain_status == 1
    assert plain_err == (f"ERROR: --captions-file {captions} is being written by another run of this program; "
                         "let it finish, or choose another file; it was not replaced, and this run's records "
                         "are on standard output only\n")
    assert not list(tmp_path.glob(".captions.jsonl.part-*"))
    assert status == 0, err
    names = [r["input"] for r in records(captions)]
    assert len(names) == len(set(names)) == PHOTOS


def test_a_run_that_prints_no_records_does_not_say_they_are_on_stdout(tmp_path: Path) -> None:
    # --ray writes its records to the captions file only (open_writers with no stdout stream).
    from utils.engine.caption_types import CaptionResult
    from utils.output.captions_file import open_writers
    from utils.output.records import CaptionRecord, RunSummary
    from utils.output.resume import read_resumable
    from utils.support.errors import CaptionError

    captions = tmp_path / "captions.jsonl"
    resumable = read_resumable(captions, "json")
    # The error comes when the block ends.
    with pytest.raises(CaptionError) as raised, open_writers("text", None, captions, resumable, set()) as out:
        out.begin(2)
        out.write(CaptionRecord("a.png", CaptionResult("a cat", [1, 2], -0.5, {})))
        captions.unlink()
        out.write(CaptionRecord("b.png", CaptionResult("a dog", [3, 4], -0.5, {})))
        out.end(RunSummary(model="fc_nsc"))
    assert str(raised.value) == (f"--captions-file {captions} was replaced or removed while this run appended to "
                                 "it, so it lacks some of this run's records; run again with --resume to caption "
                                 "what it lacks")
