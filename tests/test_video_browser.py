"""The the HTML example of docs/output.md in a real browser: Chromium, driven by Playwright, plays the annotated .webm
that -s writes and loads the --captions-file .vtt as its text track, both served over http.

.ci/run installs Chromium (apt-get install chromium) and Playwright (requirements-dev.txt); without them
these tests are skipped, saying which is missing. Playwright only drives the system's Chromium: it never
downloads a browser.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import pytest
import webvtt

from tests.conftest import RunCli
from tests.video_helpers import has_caption_bar, make_video, read_frames

HEADLESS = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
FPS, FRAMES, SIZE = 10.0, 40, (160, 120)
# Chromium as root in a container, with nothing reached outside this machine.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The the example of docs/output.md, as a user would paste it.
PAGE = ('<!doctype html><meta charset="utf-8"><title>captions</title>\n'
        '<video controls src="{video}">\n'
        '  <track kind="descriptions" src="out.vtt" srclang="en" label="Descriptions" default>\n'
        '</video>\n')

# Resolves when the video has its first frame or fails: what a viewer sees before pressing play.
LOAD = """() => new Promise(resolve => {
  const video = document.querySelector('video');
  const done = how => resolve({how, readyState: video.readyState, width: video.videoWidth,
                               height: video.videoHeight, duration: video.duration,
                               error: video.error && video.error.code});
  if (video.error) return done('error');
  if (video.readyState >= 2) return done('loaded');
  video.addEventListener('loadeddata', () => done('loadeddata'));
  video.addEventListener('error', () => done('error'));
  setTimeout(() => done('timeout'), 20000);
})"""
# The track's cues, loaded as a player that shows them would (mode 'hidden' forces the load).
CUES = """() => new Promise(resolve => {
  const element = document.querySelector('track');
  const track = document.querySelector('video').textTracks[0];
  track.mode = 'hidden';
  const cues = () => track.cues ? Array.from(track.cues, c => [c.startTime, c.endTime, c.text]) : null;
  const done = how => resolve({how, readyState: element.readyState, cues: cues()});
  if (element.readyState === 2) return done('loaded');
  element.addEventListener('load', () => done('load'));
  element.addEventListener('error', () => done('error'));
  setTimeout(() => done('timeout'), 20000);
})"""
# Plays the video through, muted (as autoplay rules allow), noting the media time of each frame presented.
PLAY = """() => new Promise(resolve => {
  const video = document.querySelector('video');
  const presented = [];
  const onFrame = (now, frame) => { presented.push(frame.mediaTime); video.requestVideoFrameCallback(onFrame); };
  video.requestVideoFrameCallback(onFrame);
  const done = how => resolve({how, presented, time: video.currentTime, error: video.error && video.error.code});
  const timer = setTimeout(() => done('timeout'), 30000);
  video.addEventListener('ended', () => { clearTimeout(timer); done('ended'); }, {once: true});
  video.addEventListener('error', () => { clearTimeout(timer); done('error'); }, {once: true});
  video.muted = true;
  video.play().catch(error => done('play() refused: ' + error.name));
})"""
# The frame shown at a time, decoded by the browser and drawn on a canvas, as a PNG data URL. Drawn once
# the seek has ended and the frame for that time has been presented: at 'seeked' alone, Chromium may
# still show the frame from before the seek.
FRAME_AT = """([seconds, period]) => new Promise(resolve => {
  const video = document.querySelector('video');
  const timer = setTimeout(() => resolve(null), 20000);
  let seeked = false, presented = false;
  const draw = () => {
    clearTimeout(timer);
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    resolve(canvas.toDataURL('image/png'));
  };
  const frame = (now, metadata) => {
    if (Math.abs(metadata.mediaTime - seconds) <= period) {
      presented = true;
      if (seeked) draw();
    } else {
      video.requestVideoFrameCallback(frame);
    }
  };
  video.requestVideoFrameCallback(frame);
  video.addEventListener('seeked', () => { seeked = true; if (presented) draw(); }, {once: true});
  video.currentTime = seconds;
})"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile; skipped (saying why) where it or Playwright is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed; .ci/run installs it (pip install playwright)")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed; .ci/run installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=chromium, args=CHROMIUM_ARGS,
            headless=True)
        try:
            yield context
        finally:
            context.close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files as a web server serves them: labelled (browsers want text/vtt for a track) and in byte ranges.
    Python's own server ignores Range, and Chromium cannot seek in a video served without it."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".webm": "video/webm", ".mp4": "video/mp4", ".vtt": "text/vtt"}

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        path = Path(self.translate_path(self.path))
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted is None or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start, end = int(wanted[1]), min(int(wanted[2] or len(data) - 1), len(data) - 1)
        if start >= len(data) or end < start:
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start:end + 1])

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """tmp_path over http on localhost; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def write_video(run_cli: RunCli, models: Path, folder: Path, name: str) -> None:
    """The docs/output.md's command: the annotated video and its WebVTT track, from a 4 s clip of four scenes."""
    clip = make_video(folder / "clip.avi", FRAMES, fps=FPS, size=SIZE)
    proc = run_cli("-v", clip, "-s", folder / name, "--captions-file", folder / "out.vtt",
                   "--model-dir", models, "--offline", "--onnx", env=HEADLESS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # quiet, as every run: no notice from OpenCV about the WebM fourcc either
    (folder / "index.html").write_text(PAGE.format(video=name), encoding="utf-8")


def decode_data_url(url: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_webm_and_its_track_play_in_chromium(run_cli: RunCli, models: Path, tmp_path: Path, served: str,
                                             browser: Any) -> None:
    write_video(run_cli, models, tmp_path, "out.webm")
    page = browser.new_page()
    page.goto(f"{served}/index.html")

    loaded = page.evaluate(LOAD)
    assert loaded["how"] in ("loaded", "loadeddata") and loaded["readyState"] >= 2, loaded
    assert (loaded["width"], loaded["height"]) == SIZE
    assert abs(loaded["duration"] - FRAMES / FPS) <= 1 / FPS

    track = page.evaluate(CUES)
    assert track["readyState"] == 2, track
    cues = webvtt.read(str(tmp_path / "out.vtt")).captions
    assert len(cues) >= 2  # the clip's scenes get different captions
    assert [text for _, _, text in track["cues"]] == [cue.text for cue in cues]
    assert track["cues"][0][0] == 0 and abs(track["cues"][-1][1] - FRAMES / FPS) <= 1 / FPS

    played = page.evaluate(PLAY)
    assert played["how"] == "ended" and abs(played["time"] - FRAMES / FPS) <= 1 / FPS, played
    assert played["presented"] and max(played["presented"]) >= (FRAMES - 2) / FPS, played

    # Mid-frame times, so the frame shown is not in doubt: the browser's picture is the file's frame.
    written = read_frames(tmp_path / "out.webm")
    for index in (0, FRAMES // 2, FRAMES - 1):
        url = page.evaluate(FRAME_AT, [(index + 0.5) / FPS, 1 / FPS])
        assert url is not None, f"seeking to frame {index} never finished"
        shown = decode_data_url(url)
        assert shown.shape[:2] == (SIZE[1], SIZE[0]) and has_caption_bar(shown)
        assert cv2.absdiff(shown, written[index]).mean() < 4, f"frame {index} differs from the file's"
    page.close()


@pytest.mark.parametrize("name", ["out.mp4", "out.mkv", "out.avi"])
def test_other_formats_do_not_play_in_chromium(run_cli: RunCli, models: Path, tmp_path: Path, served: str,
                                               browser: Any, name: str) -> None:
    """Why the docs/output.md points browsers at .webm: the .mp4 this program writes is MPEG-4 part 2 (mp4v), the
    .mkv and .avi are MJPG, codecs browsers do not decode; Chromium reports the source as not supported."""
    write_video(run_cli, models, tmp_path, name)
    page = browser.new_page()
    page.goto(f"{served}/index.html")
    loaded = page.evaluate(LOAD)
    assert loaded["how"] == "error" and loaded["error"] == 4, loaded  # MEDIA_ERR_SRC_NOT_SUPPORTED
    assert (loaded["width"], loaded["height"]) == (0, 0)
    page.close()
