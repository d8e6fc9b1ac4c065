"""Ctrl-C (SIGINT) and SIGTERM at many moments, in every mode (docs/limits.md): the program ends with
128 + the first signal and one line on stderr, never a traceback or an "Exception ignored"; nothing
half-written is left; what it keeps is whole (a video that opens with every frame it says it saved, a
complete captions file, images that decode).

Each test runs the real CLI and sends signals to it from outside at one moment of several: during the
start-up imports, while the models load, at the first frame or photo, mid-run, while the outputs are
closed. A moment can come after the run has finished; then it must have finished properly (status 0,
complete outputs). Moments are counted from something the test sees the program do, never from when
the process was started: the interpreter's own start-up, before the program's first line, can answer
no signal (Python dies there with a fatal error), and how long it takes depends on the machine.
"""

from __future__ import annotations

import csv
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import pytest

from tests.checkpoint_files import FIXTURES
from tests.conftest import SAMPLE, SCRIPT, cli_env
from tests.stand_in_models import make_feature_model
from tests.video_helpers import make_video
from utils.metadata import require_exiftool
from utils.metadata.files import TEMP_MARKER
from utils.output.formats import format_time
from utils.support.errors import CaptionError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the program start")

HEADLESS = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
FPS = 30.0
CLIP_FRAMES = 1500  # several seconds of frames: every signal below comes before the end
PHOTOS = 40
INTERRUPTED = "ERROR: interrupted\n"
SAVED = re.compile(r"WARNING: interrupted (at \S+ \(frame \d+\)|before the first frame); saved (\d+) frames? to (.+)\n")
CUE = re.compile(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n.+")


def flags(models: Path) -> list[str | Path]:
    return ["--model-dir", models, "--offline", "--onnx", "--beam-size", "1"]


def start(args: Sequence[str | Path], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(HEADLESS), cwd=cwd,
                            stdin=subprocess.DEVNULL)


def wait_until(proc: subprocess.Popen[str], seen: Callable[[], bool], timeout: float = 60) -> None:
    """Until ``seen()`` or the process ended."""
    deadline = time.monotonic() + timeout
    while not seen() and proc.poll() is None:
        assert time.monotonic() < deadline, "the program never got there"
        time.sleep(0.001)


def imports_begun(proc: subprocess.Popen[str]) -> Callable[[], bool]:
    """NumPy's core is mapped: the program's first heavy import is under way, so its own first lines
    (which answer the signals) have run."""

    def seen() -> bool:
        try:
            return "_multiarray_umath" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False

    return seen


def first_line(proc: subprocess.Popen[str]) -> None:
    """The first caption is out: the loop is running."""
    assert proc.stdout is not None
    proc.stdout.readline()


def send(proc: subprocess.Popen[str], signals: Sequence[int], gap: float = 0.0) -> None:
    for k, sig in enumerate(signals):
        if k:
            time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(sig)


def end_cleanly(proc: subprocess.Popen[str], signals: Sequence[int]) -> str:
    """The program's stderr, once it ended with 128 + the first of ``signals`` (or 0: it finished before
    them). Signals that arrive together are handled in the order of their numbers (Python's rule), so
    then any of them may count as the first."""
    _, err = proc.communicate(timeout=90)
    assert "Traceback" not in err and "Exception ignored" not in err and "Fatal" not in err, err
    firsts = {128 + signals[0]} if len(set(signals)) == 1 else {128 + s for s in signals}
    assert proc.returncode in {0} | firsts, (proc.returncode, err)
    return err


def temp_leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders for p in folder.rglob("*")
                  if ".part-" in p.name or TEMP_MARKER in p.name)


def frame_count(video: Path) -> int:
    capture = cv2.VideoCapture(str(video))
    try:
        assert capture.isOpened(), f"{video} does not open"
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
        assert capture.read()[0], f"the last frame of {video} does not decode"
        return count
    finally:
        capture.release()


def last_cue_end(vtt: Path) -> str:
    """The end of the last cue of a complete WebVTT file (every cue whole)."""
    text = vtt.read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n"), text[-200:]
    cues = text[len("WEBVTT\n\n"):].rstrip("\n").split("\n\n")
    assert cues and all(CUE.fullmatch(cue) for cue in cues), text[-200:]
    match = CUE.fullmatch(cues[-1])
    assert match is not None
    return match.group(2)


# ---------------------------------------------------------------------------------------------
# Video mode: -s out.avi --captions-file out.vtt
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.avi", CLIP_FRAMES, fps=FPS)


def start_video(clip: Path, models: Path, folder: Path) -> subprocess.Popen[str]:
    return start(["-v", clip, "--sync", "-s", folder / "out.avi", "--captions-file", folder / "out.vtt",
                  "--no-display", *flags(models)], folder)


def check_video_outputs(folder: Path, err: str, status: int) -> None:
    """After a video run stopped by a signal (or finished): one line, and the video and its captions file
    whole and agreeing with each other; nothing else left."""
    out, vtt = folder / "out.avi", folder / "out.vtt"
    assert temp_leftovers(folder) == []
    if status == 0:
        assert err == "" and frame_count(out) == CLIP_FRAMES
        assert last_cue_end(vtt) == format_time(CLIP_FRAMES / FPS)
        return
    if err == INTERRUPTED:  # stopped before the loop began (start-up, model loading): nothing written
        assert not out.exists() and not vtt.exists()
        return
    saved = SAVED.fullmatch(err)
    assert saved is not None, err
    frames = int(saved.group(2))
    assert saved.group(3) == str(out) and frames > 0
    assert frame_count(out) == frames
    assert last_cue_end(vtt) == format_time(frames / FPS)  # the captions cover the video, last cue closed


@pytest.mark.parametrize(("moment", "gap"), [
    ("first frame", 0.0), ("first frame", 0.01), ("first frame", 0.05), ("first frame", 0.2),
    ("mid-run", 0.01), ("mid-run", 0.2),
])
def test_two_ctrl_c_in_video_mode_keep_the_video_and_its_captions(
        clip: Path, models: Path, tmp_path: Path, moment: str, gap: float) -> None:
    """The second Ctrl-C stops at once, but through the same close as the first: the frames written so
    far are a whole video, the captions file is committed, and the line says what was saved."""
    proc = start_video(clip, models, tmp_path)
    first_line(proc)
    if moment == "mid-run":
        time.sleep(0.3)
    send(proc, [signal.SIGINT, signal.SIGINT], gap)
    err = end_cleanly(proc, [signal.SIGINT])
    assert proc.returncode == 130, err
    check_video_outputs(tmp_path, err, 130)


@pytest.mark.parametrize(("closed", "later"), [
    ("out.vtt", [signal.SIGINT]),  # the captions file is committed: the video is being finalised
    ("out.vtt", [signal.SIGINT, signal.SIGTERM]),  # and a third signal on top
    ("out.avi", [signal.SIGINT]),  # the video has its name: the program is reporting and exiting
])
def test_signals_while_the_video_is_closed(clip: Path, models: Path, tmp_path: Path, closed: str,
                                           later: list[int]) -> None:
    proc = start_video(clip, models, tmp_path)
    first_line(proc)
    send(proc, [signal.SIGINT])
    wait_until(proc, (tmp_path / closed).exists)
    send(proc, later)
    err = end_cleanly(proc, [signal.SIGINT])
    assert proc.returncode == 130, err
    check_video_outputs(tmp_path, err, 130)


@pytest.mark.parametrize(("delay", "signals"), [
    (0.0, [signal.SIGTERM]),
    (0.4, [signal.SIGTERM]),
    (0.8, [signal.SIGTERM, signal.SIGINT]),
])
def test_signals_while_video_mode_starts(clip: Path, models: Path, tmp_path: Path, delay: float,
                                         signals: list[int]) -> None:
    """While OpenCV and ONNX Runtime are imported, the models load, or the first frames pass."""
    proc = start_video(clip, models, tmp_path)
    wait_until(proc, imports_begun(proc))
    time.sleep(delay)
    send(proc, signals, 0.01)
    err = end_cleanly(proc, signals)
    check_video_outputs(tmp_path, err, proc.returncode)


# ---------------------------------------------------------------------------------------------
# Image mode: a folder, -s out/ --captions-file, and --metadata-sidecar where ExifTool is installed
# ---------------------------------------------------------------------------------------------


def exiftool_flags() -> list[str]:
    try:
        require_exiftool()
    except CaptionError:
        return []
    return ["--metadata-sidecar"]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for k in range(PHOTOS):
        shutil.copy(SAMPLE, folder / f"p{k:02d}.png")
    return folder


def start_images(photo_folder: Path, models: Path, folder: Path) -> subprocess.Popen[str]:
    photos = folder / "photos"
    shutil.copytree(photo_folder, photos)
    (folder / "out").mkdir()
    return start(["-i", photos, "-s", folder / "out", "--captions-file", folder / "captions.csv",
                  *exiftool_flags(), *flags(models)], folder)


def check_image_outputs(folder: Path, err: str, status: int) -> None:
    assert temp_leftovers(folder) == []
    saved = sorted((folder / "out").iterdir())
    for image in saved:
        assert cv2.imread(str(image)) is not None, f"{image.name} does not decode"
    captions = folder / "captions.csv"
    if status == 0:
        assert err == "" and len(saved) == PHOTOS
        with open(captions, newline="", encoding="utf-8") as f:
            assert len(list(csv.reader(f))) == 1 + PHOTOS
    else:
        assert err == INTERRUPTED and not captions.exists()


@pytest.mark.parametrize(("moment", "delay", "signals"), [
    ("start-up", 0.0, [signal.SIGTERM]),
    ("start-up", 0.4, [signal.SIGTERM]),
    ("start-up", 0.8, [signal.SIGTERM]),
    ("first photo", 0.0, [signal.SIGTERM]),
    ("first photo", 0.3, [signal.SIGTERM, signal.SIGTERM]),
    ("first photo", 0.0, [signal.SIGINT, signal.SIGINT]),
    ("first photo", 0.1, [signal.SIGTERM, signal.SIGINT, signal.SIGINT]),
])
def test_signals_in_image_mode_leave_only_whole_files(photo_folder: Path, models: Path, tmp_path: Path,
                                                      moment: str, delay: float, signals: list[int]) -> None:
    """SIGTERM is Ctrl-C: the photo at hand is finished (saved, its sidecar written), the run ends with
    128 + the signal and one line, the captions file is not left half-written."""
    proc = start_images(photo_folder, models, tmp_path)
    if moment == "start-up":
        wait_until(proc, imports_begun(proc))
    else:
        first_line(proc)
    time.sleep(delay)
    send(proc, signals, 0.02)
    err = end_cleanly(proc, signals)
    check_image_outputs(tmp_path, err, proc.returncode)


# ---------------------------------------------------------------------------------------------
# --import-checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 0.7])
def test_sigterm_during_a_checkpoint_import(tmp_path: Path, delay: float) -> None:
    models = tmp_path / "models"
    make_feature_model(models / "model_feat.onnx", out_dim=16)
    proc = start(["--import-checkpoint", FIXTURES / "model-zip.pth", FIXTURES / "infos_py2.pkl", "--name", "mine",
                  "--model-dir", models], tmp_path)
    wait_until(proc, imports_begun(proc))
    time.sleep(delay)
    send(proc, [signal.SIGTERM])
    err = end_cleanly(proc, [signal.SIGTERM])
    assert temp_leftovers(models) == []
    imported = models / "imported" / "mine"
    whole = ["model.onnx", "model.onnx.sha256", "vocab.json", "vocab.json.sha256"]
    if proc.returncode == 0:
        assert err.count("\n") == 1 and "takes 16-value image vectors" in err  # the import's own warning
    else:
        assert err.endswith(INTERRUPTED) and err.count("ERROR") == 1, err
    if proc.returncode == 0 or imported.exists():  # the model appears whole, or not at all
        assert sorted(p.name for p in imported.iterdir()) == whole
