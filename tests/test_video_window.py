"""A real window on a virtual X server (Xvfb): the caption bar is on screen; q and closing the window quit.

.ci/run installs Xvfb, xwd/import and xdotool; without them these tests fail rather than skip, so that a
CI machine missing them cannot pass silently.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SCRIPT, cli_env
from tests.video_helpers import make_video, read_frames

TITLE = "image_captioning_pytorch"
SIZE = (320, 240)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs it (apt-get install xvfb x11-apps xdotool imagemagick)")
    return path


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private X server on the first free display from :99; yields its DISPLAY."""
    binary = need("Xvfb")
    for number in range(99, 160):
        if Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists():
            continue
        server = subprocess.Popen([binary, f":{number}", "-nolisten", "tcp", "-screen", "0", "800x600x24"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.poll() is None:
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                break
            time.sleep(0.05)
        if server.poll() is None:
            try:
                yield f":{number}"
            finally:
                server.terminate()
                server.wait(10)
            return
    pytest.fail("no free X display number between :99 and :159")


def x_env(display: str) -> dict[str, str]:
    return cli_env({"DISPLAY": display, "WAYLAND_DISPLAY": ""})


def start_cli(display: str, *args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=x_env(display), stdin=subprocess.DEVNULL)


def screenshot(display: str, dest: Path) -> np.ndarray:
    """The whole screen, taken by ImageMagick's import (falls back to xwd + convert)."""
    if shutil.which("import"):
        subprocess.run(["import", "-window", "root", str(dest)], env=x_env(display), check=True, timeout=30)
    else:
        xwd = dest.with_suffix(".xwd")
        subprocess.run([need("xwd"), "-root", "-silent", "-out", str(xwd)], env=x_env(display), check=True,
                       timeout=30)
        subprocess.run([need("convert"), str(xwd), str(dest)], check=True, timeout=30)
    image = cv2.imread(str(dest))
    assert image is not None, "screenshot unreadable"
    return image


def find_window(display: str) -> str:
    xdotool = need("xdotool")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = subprocess.run([xdotool, "search", "--name", TITLE], env=x_env(display), capture_output=True,
                               text=True)
        if found.stdout.split():
            return found.stdout.split()[-1]
        time.sleep(0.1)
    pytest.fail("the CLI's window never appeared")


def white_band_rows(image: np.ndarray, min_width: int) -> int:
    """Rows holding a run of at least ``min_width`` white pixels side by side."""
    white = (image > 235).all(axis=2).astype(np.int32)
    sums = np.cumsum(np.pad(white, ((0, 0), (1, 0))), axis=1)
    windows = sums[:, min_width:] - sums[:, :-min_width]  # white pixels in each run of min_width
    return int((windows == min_width).any(axis=1).sum())


@pytest.fixture
def long_clip(tmp_path: Path) -> Path:
    return make_video(tmp_path / "clip.avi", 200, fps=10.0, size=SIZE)  # 20 s on screen: quit long before


def test_window_shows_the_caption_bar_and_q_quits(xvfb: str, models: Path, long_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "shown.avi"
    proc = start_cli(xvfb, "-v", long_clip, "-s", out, "--model-dir", models, "--offline", "--onnx", cwd=tmp_path)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("00:00:00.000 "), proc.communicate(timeout=5)
    window = find_window(xvfb)
    time.sleep(0.5)  # a few frames on screen
    shot = screenshot(xvfb, tmp_path / "screen.png")
    # The screen is black but for the window: a white caption bar as wide as the frame, some rows tall.
    assert white_band_rows(shot, int(0.9 * SIZE[0])) >= 8
    assert (shot > 235).all(axis=2).sum() < 0.5 * SIZE[0] * SIZE[1]  # the bar, not a blank window
    subprocess.run([need("xdotool"), "key", "--window", window, "q"], env=x_env(xvfb), check=True)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert stderr == ""  # no GUI toolkit chatter
    frames = read_frames(out)
    assert 0 < len(frames) < 200  # quit early, the video closed properly


class _XClientMessage(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]


class _XEvent(ctypes.Union):
    _fields_ = [("xclient", _XClientMessage), ("pad", ctypes.c_long * 24)]


def close_window(display: str, window: int) -> None:
    """What a window manager does when the user clicks the close button: send WM_DELETE_WINDOW."""
    x11 = ctypes.CDLL("libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    conn = x11.XOpenDisplay(display.encode())
    assert conn, f"cannot connect to {display}"
    event = _XEvent()
    event.xclient.type = 33  # ClientMessage
    event.xclient.window = window
    event.xclient.message_type = x11.XInternAtom(conn, b"WM_PROTOCOLS", 0)
    event.xclient.format = 32
    event.xclient.data[0] = x11.XInternAtom(conn, b"WM_DELETE_WINDOW", 0)
    x11.XSendEvent(conn, window, 0, 0, ctypes.byref(event))
    x11.XFlush(conn)
    x11.XCloseDisplay(conn)


def test_closing_the_window_quits_with_the_video_complete(xvfb: str, models: Path, long_clip: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "closed.mp4"
    proc = start_cli(xvfb, "-v", long_clip, "--live", "-s", out, "--model-dir", models, "--offline", "--onnx",
                     cwd=tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline()
    close_window(xvfb, int(find_window(xvfb)))
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert 0 < len(read_frames(out)) < 200
