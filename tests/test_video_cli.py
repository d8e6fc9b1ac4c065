"""Video mode (-v) through the real CLI, headless, on small videos made by OpenCV and the test models."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests.conftest import SCRIPT, RunCli, cli_env
from tests.reference import reference_caption
from tests.stand_in_models import NewFCParams
from tests.video_helpers import SCENE_FRAMES, has_caption_bar, make_video, read_frames, video_info

HEADLESS = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}  # whatever the machine running the tests has


def model_flags(models: Path) -> list[str | Path]:
    return ["--model-dir", models, "--offline", "--onnx"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s at 10 fps, 160x120, four scenes."""
    return make_video(tmp_path_factory.mktemp("video") / "clip.avi", 60)


def parse_plain(stdout: str) -> list[tuple[str, str]]:
    lines = [line.split(" ", 1) for line in stdout.splitlines()]
    assert all(len(parts) == 2 for parts in lines), stdout
    return [(t, c) for t, c in lines]


def test_file_output_has_every_frame_with_its_caption(
    run_cli: RunCli, models: Path, weights: dict[str, NewFCParams], clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.avi"
    proc = run_cli("-v", clip, "-s", out, *model_flags(models), env=HEADLESS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    # Default interval 1 s: one caption per second of video, stamped with its video time.
    lines = parse_plain(proc.stdout)
    assert [t for t, _ in lines] == [f"00:00:0{s}.000" for s in range(6)]
    assert len({c for _, c in lines}) > 1
    frames, source = read_frames(out), read_frames(clip)
    assert len(frames) == len(source) == 60
    fps, count, size = video_info(out)
    assert (fps, count, size) == (10.0, 60, (160, 120))
    assert all(has_caption_bar(f) for f in frames)
    assert cv2.absdiff(frames[0][-40:], source[0][-40:]).mean() < 4  # below the bar: the source picture
    # The caption is the program's caption of that frame, as decoded from the file.
    still = tmp_path / "frame0.png"
    cv2.imwrite(str(still), source[0])
    assert lines[0][1] == reference_caption(models, weights["fc_nsc"], still)[0]
    assert not [p.name for p in tmp_path.iterdir() if ".part" in p.name]


def test_interval_and_sync(run_cli: RunCli, models: Path, clip: Path) -> None:
    half = run_cli("-v", clip, "--interval", "0.5", "--json", *model_flags(models), env=HEADLESS)
    assert half.returncode == 0, half.stderr
    records = [json.loads(line) for line in half.stdout.splitlines()]
    assert [r["time"] for r in records] == [0.5 * i for i in range(12)]
    assert [r["frame"] for r in records] == list(range(0, 60, 5))
    assert {"caption", "confidence", "model", "backend", "timings"} <= set(records[0])
    two = run_cli("-v", clip, "--interval", "2", *model_flags(models), env=HEADLESS)
    assert [t for t, _ in parse_plain(two.stdout)] == ["00:00:00.000", "00:00:02.000", "00:00:04.000"]
    sync = run_cli("-v", clip, "--sync", "--json", *model_flags(models), env=HEADLESS)
    assert sync.returncode == 0, sync.stderr
    frames = [json.loads(line)["frame"] for line in sync.stdout.splitlines()]
    assert frames == list(range(60))
    # The same frames get the same captions whichever schedule picked them.
    by_frame = {json.loads(line)["frame"]: json.loads(line)["caption"] for line in sync.stdout.splitlines()}
    assert all(by_frame[r["frame"]] == r["caption"] for r in records)


def test_no_display_flag_and_savepath_folder(run_cli: RunCli, models: Path, clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "outs"
    folder.mkdir()
    proc = run_cli("-v", clip, "--no-display", "-s", folder, "--interval", "3", *model_flags(models))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    assert len(read_frames(folder / "clip.avi")) == 60


def test_live_file_shows_frames_on_time_with_latest_captions(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    # 1.5 s played in real time; the pacing itself is tested on a clock of its own (test_video_loops.py).
    source = make_video(tmp_path / "cam.avi", 45, fps=30.0)
    out = tmp_path / "live.avi"
    proc = run_cli("-v", source, "--live", "-s", out, "--json", "--hud", *model_flags(models), env=HEADLESS)
    assert proc.returncode == 0, proc.stderr
    frames = read_frames(out)
    assert len(frames) >= 0.9 * 45  # shown ~ source frames: nothing waits for the model
    assert all(has_caption_bar(f) for f in frames)  # the HUD bar is there from the first frame
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) >= 3
    assert all(r["latency_ms"] > 0 for r in records)
    indices = [r["frame"] for r in records]
    assert indices == sorted(set(indices))  # each caption is of a newer frame than the last


def test_sigint_leaves_a_complete_video(models: Path, tmp_path: Path) -> None:
    source = make_video(tmp_path / "long.avi", 100, fps=10.0)  # 10 s in real time: interrupted long before
    out = tmp_path / "cut.mp4"  # an mp4 is unplayable unless closed properly
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "-v", source, "--live", "-s", out, *model_flags(models)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=cli_env(HEADLESS), stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # a caption: the loop is running
    assert first.startswith("00:00:0"), first
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and "interrupted at" in stderr and f"to {out}" in stderr
    frames = read_frames(out)
    assert 0 < len(frames) < 100
    assert video_info(out)[1] == len(frames)  # the container's index is complete
    assert all(f.shape == (120, 160, 3) and has_caption_bar(f) for f in frames[len(frames) // 2 :])
    assert not [p.name for p in tmp_path.iterdir() if ".part" in p.name]


@pytest.mark.parametrize("kind", ["camera", "missing", "corrupt", "empty", "folder"])
def test_bad_sources_fail_in_one_line(run_cli: RunCli, models: Path, tmp_path: Path, kind: str) -> None:
    (tmp_path / "corrupt.avi").write_bytes(b"RIFF" + bytes(range(256)) * 40)
    (tmp_path / "empty.mp4").write_bytes(b"")
    source = {"camera": "97", "missing": "nowhere.mp4", "corrupt": "corrupt.avi", "empty": "empty.mp4",
              "folder": str(tmp_path)}[kind]
    out = tmp_path / "never.mp4"
    proc = run_cli("-v", source, "-s", out, *model_flags(models), env=HEADLESS)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("ERROR: ")
    expected = {"camera": "cannot open camera 97", "missing": "does not exist", "corrupt": "not a video",
                "empty": "empty file", "folder": "is a folder"}[kind]
    assert expected in proc.stderr
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if ".part" in p.name]


def test_source_checked_before_models(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli("-v", "missing.avi", "--model-dir", tmp_path / "no_models", "--offline", env=HEADLESS)
    assert proc.returncode == 1 and proc.stderr.strip() == "ERROR: missing.avi does not exist"


def test_bad_savepath_is_refused_before_work(run_cli: RunCli, models: Path, clip: Path, tmp_path: Path) -> None:
    proc = run_cli("-v", clip, "-s", tmp_path / "out.gif", *model_flags(models), env=HEADLESS)
    assert proc.returncode == 1 and "not a video format" in proc.stderr and proc.stdout == ""
    proc = run_cli("-v", clip, "-s", clip, *model_flags(models), env=HEADLESS)
    assert proc.returncode == 1 and "would overwrite the input" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["-v", "0", "-i", "x.png"], "cannot be used together"),
    (["-v", "0", "--sync", "--interval", "2"], "cannot be used together"),
    (["--sync"], "only applies to video"),
    (["-v", "0", "--interval", "0"], "must be greater than 0"),
])
def test_usage_errors(run_cli: RunCli, args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_scene_changes_give_new_captions(run_cli: RunCli, models: Path, clip: Path) -> None:
    proc = run_cli("-v", clip, "--interval", str(SCENE_FRAMES / 10), *model_flags(models), env=HEADLESS)
    captions = [c for _, c in parse_plain(proc.stdout)]
    assert len(captions) == 4 and len(set(captions)) >= 3


def test_truncated_file_gives_the_frames_it_has_quietly(run_cli: RunCli, models: Path, clip: Path,
                                                        tmp_path: Path) -> None:
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    out = tmp_path / "out.avi"
    proc = run_cli("-v", cut, "-s", out, *model_flags(models), env=HEADLESS)
    assert proc.returncode == 0 and proc.stderr == ""  # FFmpeg's own complaints stay quiet
    assert 20 < len(read_frames(out)) < 60
