"""--format vtt/srt/csv/tsv and --captions-file: subtitle tracks and tables, checked with independent parsers
(webvtt-py, srt, csv) against the JSON output of the same runs."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import srt
import webvtt

from tests.conftest import SAMPLE, SCRIPT, RunCli, cli_env
from tests.test_video_cli import HEADLESS, model_flags
from tests.video_helpers import make_video, read_frames
from utils.engine.captioner import CaptionResult
from utils.images.steps import registry
from utils.images.steps.save import SavedImage
from utils.output.formats import FORMATS, ResultWriter
from utils.output.records import CaptionRecord, RunSummary, VideoPosition

Cue = tuple[float, float, str]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s at 10 fps, four scenes."""
    return make_video(tmp_path_factory.mktemp("video") / "clip.avi", 60)


def seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return round(int(h) * 3600 + int(m) * 60 + float(s), 3)


def parse_vtt(text: str) -> list[Cue]:
    assert text.startswith("WEBVTT\n\n") or text == "WEBVTT\n", text
    return [(seconds(c.start), seconds(c.end), c.text) for c in webvtt.from_string(text).captions]


def parse_srt(text: str) -> list[Cue]:
    subs = list(srt.parse(text))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    return [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs]


def expected_cues(records: list[dict[str, object]], duration: float) -> list[Cue]:
    """Cues from JSON records: one per caption change, each until the next change, the last until the end."""
    changes: list[tuple[float, str]] = []
    for r in records:
        if not changes or changes[-1][1] != r["caption"]:
            changes.append((float(str(r["time"])), str(r["caption"])))
    ends = [t for t, _ in changes[1:]] + [duration]
    return [(start, end, text) for (start, text), end in zip(changes, ends, strict=True)]


def video_record(t: float, caption: str, confidence: float | None = -0.5) -> CaptionRecord:
    return CaptionRecord("clip.mp4", CaptionResult(caption, [1, 2], confidence, {}, model="fc", backend="onnxruntime"),
                         video=VideoPosition(t, int(t * 10)))


def render(name: str, records: list[CaptionRecord], summary: RunSummary, inputs: int | None = None) -> str:
    out = io.StringIO()
    writer: ResultWriter = FORMATS[name](out, columns=registry.table_columns())  # as image mode gives them
    writer.begin(inputs)
    for r in records:
        writer.write(r)
    writer.end(summary)
    return out.getvalue()


HOSTILE = [video_record(0.0, "fish & chips"), video_record(1.0, "fish & chips"),
           video_record(2.0, "a <b>bold</b> --> arrow"), video_record(3.0, ""), video_record(4.0, "last\nline")]


def test_cues_merge_escape_and_leave_gaps_for_empty_captions() -> None:
    summary = RunSummary(end_time=5.0)
    want = [(0.0, 2.0, "fish &amp; chips"), (2.0, 3.0, "a &lt;b&gt;bold&lt;/b&gt; --&gt; arrow"),
            (4.0, 5.0, "last\\x0aline")]
    vtt = render("vtt", HOSTILE, summary)
    assert parse_vtt(vtt) == want
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n")
    srt_text = render("srt", HOSTILE, summary)
    # SubRip has no character references (players would show "&amp;"): its text is written as it is,
    # but for the arrow of a timing line.
    assert parse_srt(srt_text) == [(0.0, 2.0, "fish & chips"), (2.0, 3.0, "a <b>bold</b> -> arrow"),
                                   (4.0, 5.0, "last\\x0aline")]
    assert srt_text.startswith("1\n00:00:00,000 --> 00:00:02,000\nfish & chips\n\n2\n")
    for text in (vtt, srt_text):
        body = [line for line in text.splitlines() if line and " --> " not in line]
        assert not any("-->" in line for line in body)


def test_cue_written_when_its_end_is_known_and_zero_length_last_cue() -> None:
    out = io.StringIO()
    writer = FORMATS["vtt"](out)
    writer.begin()
    writer.write(video_record(0.0, "one"))
    assert out.getvalue() == "WEBVTT\n"  # its end is not known yet
    writer.write(video_record(1.5, "two"))
    assert out.getvalue().endswith("00:00:00.000 --> 00:00:01.500\none\n")
    writer.end(RunSummary(end_time=1.5))  # no frame after the last caption's: it lasts 1 ms
    assert parse_vtt(out.getvalue())[-1] == (1.5, 1.501, "two")
    assert render("vtt", [], RunSummary()) == "WEBVTT\n" and render("srt", [], RunSummary()) == ""


def test_subtitles_are_video_only_tables_for_both() -> None:
    assert FORMATS["vtt"].modes == FORMATS["srt"].modes == {"video"}
    assert FORMATS["csv"].modes == FORMATS["tsv"].modes == {"images", "video"}


def test_table_rows_for_images_and_video() -> None:
    images = [CaptionRecord("a,b.jpg", CaptionResult('say "hi"', [1], -0.25, {}),
                            sections=(SavedImage(Path("out/a,b.jpg")),)),
              CaptionRecord("gone.png", None, error="gone.png does not exist"),
              CaptionRecord("blank.png", CaptionResult("", [], None, {}))]
    for name, delimiter in (("csv", ","), ("tsv", "\t")):
        rows = list(csv.reader(io.StringIO(render(name, images, RunSummary(), 3)), delimiter=delimiter))
        assert rows == [["input", "caption", "confidence", "output", "metadata", "error"],
                        ["a,b.jpg", 'say "hi"', "-0.25", "out/a,b.jpg", "", ""],
                        ["gone.png", "", "", "", "", "gone.png does not exist"],
                        ["blank.png", "", "", "", "", ""]]
    rows = list(csv.reader(io.StringIO(render("csv", HOSTILE[:2], RunSummary(end_time=2.0)))))
    assert rows == [["time", "frame", "caption", "confidence"], ["0.0", "0", "fish & chips", "-0.5"],
                    ["1.0", "10", "fish & chips", "-0.5"]]


@pytest.mark.parametrize("interval", ["0.5", "2"])
def test_vtt_and_srt_of_a_video_match_its_json(run_cli: RunCli, models: Path, clip: Path, interval: str) -> None:
    flags = ["-v", clip, "--interval", interval, *model_flags(models)]
    records = [json.loads(line) for line in run_cli(*flags, "--json", env=HEADLESS).stdout.splitlines()]
    want = expected_cues(records, 60 / 10)
    assert len(want) >= 2
    vtt = run_cli(*flags, "--format", "vtt", env=HEADLESS)
    srt_run = run_cli(*flags, "--format", "srt", env=HEADLESS)
    assert vtt.returncode == srt_run.returncode == 0 and vtt.stderr == srt_run.stderr == ""
    assert parse_vtt(vtt.stdout) == want
    assert parse_srt(srt_run.stdout) == want


def test_csv_and_tsv_of_images(run_cli: RunCli, models: Path, photos: list[Path], tmp_path: Path) -> None:
    inputs = [photos[0], tmp_path / "missing.jpg", photos[1]]
    flags = ["-i", *inputs, "--model-dir", models, "--offline", "--onnx"]
    records = [json.loads(line) for line in run_cli(*flags, "--json").stdout.splitlines()]
    for name, delimiter in (("csv", ","), ("tsv", "\t")):
        proc = run_cli(*flags, "--format", name)
        assert proc.returncode == 1 and proc.stderr == ""  # as with --json, the error is in its row
        rows = list(csv.DictReader(io.StringIO(proc.stdout), delimiter=delimiter))
        assert proc.stdout.split("\n", 1)[0] == delimiter.join(["input", "caption", "confidence", "output", "metadata",
                                                                 "error"])
        assert [r["input"] for r in rows] == [str(p) for p in inputs]
        assert [r["caption"] for r in rows] == [r["caption"] or "" for r in records]
        assert [float(r["confidence"]) for r in rows if r["confidence"]] == [
            r["confidence"] for r in records if r.get("confidence") is not None]
        assert rows[1]["error"] == records[1]["error"] and rows[1]["caption"] == ""
        assert rows[0]["error"] == rows[2]["error"] == ""


def test_csv_of_a_video(run_cli: RunCli, models: Path, clip: Path) -> None:
    flags = ["-v", clip, *model_flags(models)]
    records = [json.loads(line) for line in run_cli(*flags, "--json", env=HEADLESS).stdout.splitlines()]
    proc = run_cli(*flags, "--format", "csv", env=HEADLESS)
    assert proc.returncode == 0
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert proc.stdout.startswith("time,frame,caption,confidence\n")
    assert [(float(r["time"]), int(r["frame"]), r["caption"]) for r in rows] == [
        (r["time"], r["frame"], r["caption"]) for r in records]


def no_part_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if ".part" in p.name]


def test_captions_file_takes_its_extensions_format(run_cli: RunCli, models: Path, photos: list[Path],
                                                   tmp_path: Path) -> None:
    flags = ["-i", *photos[:3], "--model-dir", models, "--offline", "--onnx"]
    plain = run_cli(*flags)
    as_json = run_cli(*flags, "--json")
    table = run_cli(*flags, "--captions-file", tmp_path / "caps.CSV")
    assert table.returncode == 0 and table.stdout == plain.stdout  # stdout keeps --format (text)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "caps.CSV").read_text(encoding="utf-8"))))
    assert [r["caption"] for r in rows] == [json.loads(line)["caption"] for line in as_json.stdout.splitlines()]
    lines = run_cli(*flags, "--format", "tsv", "--captions-file", tmp_path / "caps.jsonl")
    assert lines.stdout.startswith("input\tcaption")
    drop = [{k: v for k, v in json.loads(line).items() if k != "timings"} for line in as_json.stdout.splitlines()]
    got = [{k: v for k, v in json.loads(line).items() if k != "timings"}
           for line in (tmp_path / "caps.jsonl").read_text(encoding="utf-8").splitlines()]
    assert got == drop
    run_cli(*flags, "--json", "--captions-file", tmp_path / "caps.txt")
    assert (tmp_path / "caps.txt").read_text(encoding="utf-8") == plain.stdout
    assert no_part_files(tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["-i", "x.jpg", "--captions-file", "out.vtt"], "--captions-file out.vtt: .vtt (vtt) is for video, not images"),
    (["-i", "x.jpg", "--captions-file", "out.srt"], "is for video, not images"),
    (["-i", "x.jpg", "--captions-file", "out.xml"], "unknown extension '.xml'"),
    (["-v", "clip.avi", "--captions-file", "out"], "unknown extension"),
    (["-i", "x.jpg", "--format", "vtt"], "--format vtt is for video, not images"),
    (["-i", "x.jpg", "--format", "srt"], "--format srt is for video, not images"),
])
def test_usage_errors(run_cli: RunCli, tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_captions_file_never_an_input_nor_a_missing_folder(run_cli: RunCli, tmp_path: Path, clip: Path) -> None:
    no_models = ["--model-dir", tmp_path / "no_models", "--offline"]  # checked before any model is needed
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    proc = run_cli("-i", SAMPLE, notes, "--captions-file", notes, *no_models)
    assert proc.returncode == 1 and "--captions-file would overwrite the input" in proc.stderr
    assert notes.read_text() == "keep me"
    proc = run_cli("-i", SAMPLE, "--captions-file", tmp_path / "nowhere" / "c.csv", *no_models)
    assert proc.returncode == 1 and "the folder does not exist" in proc.stderr
    proc = run_cli("-v", clip, "--captions-file", tmp_path / "nowhere" / "c.vtt", *no_models, env=HEADLESS)
    assert proc.returncode == 1 and "the folder does not exist" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_annotated_video_and_its_track_in_one_run(run_cli: RunCli, models: Path, clip: Path,
                                                  tmp_path: Path) -> None:
    flags = ["-v", clip, *model_flags(models)]
    alone = run_cli(*flags, "--format", "vtt", env=HEADLESS)
    proc = run_cli(*flags, "-s", tmp_path / "out.avi", "--captions-file", tmp_path / "out.vtt", env=HEADLESS)
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 6  # text on stdout, as without the file
    assert (tmp_path / "out.vtt").read_text(encoding="utf-8") == alone.stdout
    assert len(read_frames(tmp_path / "out.avi")) == 60
    assert no_part_files(tmp_path)


def test_captions_file_is_complete_when_stdout_closes_early(models: Path, clip: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out.srt"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-v", clip, "--interval", "0.5", "--captions-file", dest,
         *model_flags(models)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=cli_env(HEADLESS),
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    assert first.startswith("00:00:00.000 ")
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in stderr, stderr
    full = subprocess.run([sys.executable, str(SCRIPT), "-v", clip, "--interval", "0.5", "--format", "srt",
                           *model_flags(models)], capture_output=True, text=True, cwd=tmp_path,
                          env=cli_env(HEADLESS), stdin=subprocess.DEVNULL, timeout=60)
    assert dest.read_text(encoding="utf-8") == full.stdout and len(parse_srt(full.stdout)) >= 2
    assert no_part_files(tmp_path)


def test_first_ctrl_c_closes_the_last_cue(models: Path, tmp_path: Path) -> None:
    source = make_video(tmp_path / "long.avi", 100, fps=10.0)  # 10 s in real time: interrupted long before
    dest = tmp_path / "cut.vtt"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-v", source, "--live", "--captions-file", dest, *model_flags(models)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=cli_env(HEADLESS),
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("00:00:0")  # a caption: the loop is running
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    cues = parse_vtt(dest.read_text(encoding="utf-8"))
    assert cues and all(start < end for start, end, _ in cues)
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in zip(cues, cues[1:], strict=False))
    # The last cue ends where the run stopped: the last frame shown plus one frame period.
    stopped = seconds(stderr.split("interrupted at ", 1)[1].split()[0])
    assert cues[-1][1] == pytest.approx(stopped + 0.1, abs=0.002)
    assert no_part_files(tmp_path)


def test_a_failed_image_is_reported_once_with_a_text_captions_file(run_cli: RunCli, models: Path, tmp_path: Path
                                                                   ) -> None:
    missing = tmp_path / "missing.jpg"
    proc = run_cli("-i", SAMPLE, missing, "--model-dir", models, "--offline", "--onnx",
                   "--captions-file", tmp_path / "caps.txt")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"ERROR: {missing} does not exist"]
    assert (tmp_path / "caps.txt").read_text(encoding="utf-8") == proc.stdout


def test_live_track_matches_the_json_of_the_same_run(run_cli: RunCli, models: Path, clip: Path,
                                                    tmp_path: Path) -> None:
    """A live run's captions depend on timing, so the track is checked against the JSON printed by the
    same run: stdout in JSON, the file in WebVTT."""
    track = tmp_path / "live.vtt"
    proc = run_cli("-v", clip, "--live", "--json", "--captions-file", track, *model_flags(models), env=HEADLESS)
    assert proc.returncode == 0 and proc.stderr == ""
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    cues = parse_vtt(track.read_text(encoding="utf-8"))
    want = expected_cues(records, cues[-1][1])  # the last cue ends where the run stopped
    assert cues == want and len(cues) >= 1
    assert 6.0 - 0.2 <= cues[-1][1] <= 6.0 + 0.2  # the video lasts 6 s, played in real time
