"""The video loops in-process: exact file captions, the live mailbox, disconnects, stopping, writing."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

import utils.video.run as video_run
import utils.video.source as video_source
from tests.stand_in_models import NewFCParams
from tests.video_helpers import make_video, read_frames, scene, video_info
from utils.decoding.options import DecodingOptions
from utils.engine.captioner import Captioner, CaptionerOptions, CaptionResult
from utils.engine.runtime import RuntimeOptions
from utils.output.formats import format_time
from utils.support.drawing import draw_caption
from utils.support.stopping import stop_requests
from utils.video.job import VideoJob
from utils.video.live import CaptionEvent
from utils.video.loops import process_video
from utils.video.presenter import Observer
from utils.video.run import run_video
from utils.video.schedule import CaptionSchedule
from utils.video.source import Frame, VideoSource, open_source, parse_source
from utils.video.video_file import VideoFileWriter, _incomplete, _without_tag_notices


@pytest.fixture(scope="module")
def captioner(model_set_dir: tuple[Path, dict[str, NewFCParams]]) -> Captioner:
    return Captioner(CaptionerOptions(model_dir=model_set_dir[0], offline=True, progress=False,
                                      runtime=RuntimeOptions(backend="onnxruntime")))


class SlowCaptioner:
    """Stands in for Captioner: takes ``seconds`` per caption, names the frame's mean grey level."""

    model = "slow"
    backend = "test"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def caption(self, image: np.ndarray, options: DecodingOptions | None = None) -> CaptionResult:
        self.calls += 1
        time.sleep(self.seconds)
        return CaptionResult(f"level {image.mean():.0f}", [], None, {})


Shown = list[tuple[Frame, CaptionEvent | None, np.ndarray]]


def observe(shown: Shown) -> Observer:
    return lambda frame, event, image: shown.append((frame, event, image))


def expected_caption_frames(count: int, fps: float, interval: float) -> list[int]:
    """For each frame, the frame whose caption it carries: the last k with k/fps >= j*interval for some j."""
    owners, owner, j = [], 0, 0
    for k in range(count):
        if k / fps >= j * interval - 1e-9:
            owner = k
            while j * interval <= k / fps + 1e-9:
                j += 1
        owners.append(owner)
    return owners


@pytest.mark.parametrize(("interval", "sync"), [(1.0, False), (0.3, False), (None, True)])
def test_file_output_equals_the_sequential_loop(captioner: Captioner, tmp_path: Path, interval: float | None,
                                                sync: bool) -> None:
    clip = make_video(tmp_path / "clip.avi", 40, fps=10.0)
    shown: Shown = []
    source = open_source(str(clip))
    job = VideoJob(source=str(clip), interval=interval, sync=sync, display=False)
    stats = process_video(job, captioner, source, out=io.StringIO(), observer=observe(shown))
    source.release()
    assert stats.end == "end" and stats.frames_shown == 40
    frames = read_frames(clip)
    owners = list(range(40)) if sync else expected_caption_frames(40, 10.0, interval or 1.0)
    captions = {k: captioner.caption(frames[k]).caption for k in set(owners)}
    for k, (frame, event, image) in enumerate(shown):
        assert frame.index == k and event is not None
        assert event.frame.index == owners[k]
        assert np.array_equal(image, draw_caption(frames[k], captions[owners[k]]))


def test_file_reading_runs_ahead_of_a_slow_model(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 30, fps=10.0)
    slow = SlowCaptioner(0.05)
    source = open_source(str(clip))
    shown: Shown = []
    read_when_shown: list[int] = []

    def watch(frame: Frame, event: CaptionEvent | None, image: np.ndarray) -> None:
        shown.append((frame, event, image))
        read_when_shown.append(source.received)

    stats = process_video(VideoJob(source=str(clip), interval=1.0, display=False), cast(Captioner, slow), source,
                          out=io.StringIO(), observer=watch)
    assert [f.index for f, _, _ in shown] == list(range(30))
    assert stats.captions == slow.calls == 3
    # While frame 0 was being captioned, the frames after it were already read (and queued in order).
    assert read_when_shown[0] > 5


class Clock:
    """A monotonic clock that moves only when waited on (or moved by hand): pacing without real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_a_realtime_file_is_paced_to_its_frame_rate_and_drops_what_a_late_reader_missed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = make_video(tmp_path / "cam.avi", 45, fps=30.0)
    source = open_source(str(clip), realtime=True)
    clock = Clock()
    monkeypatch.setattr(video_source, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.wait))
    frames = [source.read() for _ in range(11)]  # frames 0 to 10, each read as soon as it is due
    assert [f.index for f in frames if f is not None] == list(range(11)) and source.dropped == 0
    assert clock.waits == pytest.approx([1 / 30] * 10)  # frame 0 at once, then one frame period each
    clock.now += 0.5  # the reader is 15 frame periods late: frames 11 to 24 went by meanwhile
    late = source.read()
    assert late is not None and late.index == 25 and source.dropped == 14
    assert late.time == pytest.approx(25 / 30) and late.captured == pytest.approx(1000.0 + 25 / 30)
    rest = [f.index for f in iter(source.read, None)]
    assert rest == list(range(26, 45)) and source.dropped == 14
    assert clock.now == pytest.approx(1000.0 + 45 / 30)  # the clip played for its length, 45 frame periods


def test_live_mailbox_captions_the_latest_frame(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "cam.avi", 45, fps=30.0)
    slow = SlowCaptioner(0.1)  # 3 frame periods per caption
    source = open_source(str(clip), realtime=True)
    shown: Shown = []
    stats = process_video(VideoJob(source=str(clip), live=True, display=False), cast(Captioner, slow), source,
                          out=io.StringIO(), observer=observe(shown))
    assert stats.end == "end"
    assert stats.frames_shown + stats.dropped == 45 and stats.frames_shown >= 42
    events = [e for _, e, _ in shown]
    distinct = list(dict.fromkeys(e for e in events if e is not None))
    assert 5 <= len(distinct) <= 16 and slow.calls <= 17  # never one caption per frame: no backlog
    # A caption stays on screen until the next one replaces it, and captions only move forward.
    first = events.index(distinct[0])
    assert all(e is None for e in events[:first])
    runs = [e for i, e in enumerate(events[first:], first) if e is not events[i - 1]]
    assert runs == distinct
    for frame, event, _ in shown:
        if event is not None:
            assert event.frame.index < frame.index and event.ready <= time.monotonic()
    # The worker always took the newest frame: it had arrived at most a frame period before.
    for event in distinct:
        assert event.started - event.frame.captured < 2 / 30 + 0.05
    assert stats.latency_ms and min(stats.latency_ms) >= 100


def test_live_interval_spaces_the_captions(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "cam.avi", 45, fps=30.0)
    fast = SlowCaptioner(0.0)
    source = open_source(str(clip), realtime=True)
    shown: Shown = []
    process_video(VideoJob(source=str(clip), live=True, interval=0.4, display=False), cast(Captioner, fast),
                  source, out=io.StringIO(), observer=observe(shown))
    events = list(dict.fromkeys(e for _, e, _ in shown if e is not None))
    assert 3 <= len(events) <= 4 and fast.calls <= 4  # 1.5 s of video, a caption every 0.4 s at most
    starts = [e.started for e in events]
    assert all(b - a >= 0.4 - 1e-3 for a, b in zip(starts, starts[1:], strict=False))


def test_live_sync_is_the_demo_loop(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "cam.avi", 30, fps=30.0)
    slow = SlowCaptioner(0.1)
    source = open_source(str(clip), realtime=True)
    shown: Shown = []
    stats = process_video(VideoJob(source=str(clip), live=True, sync=True, display=False), cast(Captioner, slow),
                          source, out=io.StringIO(), observer=observe(shown))
    assert all(e is not None and e.frame is f for f, e, _ in shown)  # each frame waits for its own caption
    assert stats.dropped > 10 and stats.frames_shown + stats.dropped == 30


class FakeCamera:
    """A camera that sends ``frames`` frames at 30 fps and then stops, as an unplugged one does."""

    name, kind, live, realtime, path = "camera 5", "camera", True, False, None
    fps, width, height, dropped = 30.0, 160, 120, 0
    frame_period = 1 / 30

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.sent = 0

    def read(self, wait: Any = None) -> Frame | None:
        if self.sent == self.frames:
            return None
        time.sleep(self.frame_period)
        self.sent += 1
        index = self.sent - 1
        return Frame(index, scene(index, (160, 120)), index / 30, time.monotonic())

    def release(self) -> None:
        pass


def test_camera_disconnect_ends_cleanly_with_the_video_saved(
    captioner: Captioner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(video_run, "open_source", lambda spec, realtime: cast(VideoSource, FakeCamera(20)))
    out = tmp_path / "cam.mp4"
    sink = io.StringIO()
    with caplog.at_level(logging.WARNING):
        status = run_video(VideoJob(source="5", savepath=out, display=False), CaptionerOptions(),
                           load=lambda _: captioner, out=sink)
    assert status == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"camera 5 stopped sending frames at 00:00:00.633 (frame 19); saved 20 frames to {out}"
    ]
    assert len(read_frames(out)) == 20 and sink.getvalue()


def test_stop_requests_first_signal_asks_second_insists_none_raises() -> None:
    # What was there before is put back: Python's handler, or SIG_IGN for a job started in the background.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2) and stop.signum == signal.SIGTERM and not stop.insisted
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 2
        while not stop.insisted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.insisted and stop.signum == signal.SIGTERM  # the first one is the run's status
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("live", [False, True])
def test_a_second_signal_stops_waiting_for_the_model(tmp_path: Path, live: bool) -> None:
    """After the first signal the loop ends and waits for the caption being made (one model run); a
    second one means "at once": the loop returns with the model still at work, and nothing raised."""
    clip = make_video(tmp_path / "clip.avi", 30, fps=10.0)
    slow = SlowCaptioner(1.5)
    source = open_source(str(clip), realtime=live)

    def twice_at_the_first_frame(frame: Frame, event: CaptionEvent | None, image: np.ndarray) -> None:
        if frame.index == 0:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    try:
        with stop_requests() as stop:
            stats = process_video(VideoJob(source=str(clip), live=live, display=False), cast(Captioner, slow), source,
                                  out=io.StringIO(), stop=stop, observer=twice_at_the_first_frame)
        assert stats.end == "interrupted" and stop.insisted
        assert [t for t in threading.enumerate() if t.name.startswith("captioner") and t.is_alive()]
    finally:
        source.release()
        for thread in threading.enumerate():
            if thread.name.startswith("captioner"):
                thread.join()


def test_writer_is_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "out.mp4"
    writer = VideoFileWriter(dest, 10.0, 160, 120)
    assert not dest.exists() and len(list(tmp_path.iterdir())) == 1  # a hidden .part file
    assert writer.finish() is False and not any(tmp_path.iterdir())  # no frames: nothing at all
    writer = VideoFileWriter(dest, 10.0, 160, 120)
    writer.write(scene(0, (160, 120)))
    writer.abort()
    assert not any(tmp_path.iterdir())
    writer = VideoFileWriter(dest, 10.0, 160, 120)
    for k in range(5):
        writer.write(scene(k, (320, 240)))  # resized to the video's size
    assert writer.finish() and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert len(read_frames(dest)) == 5


def test_writer_check_finds_a_webm_cut_short(tmp_path: Path) -> None:
    """A WebM's frame count is its duration times its frame rate, from a header written first: a cut tail
    keeps it. The check before the rename must see the missing frames all the same, even one."""
    dest = tmp_path / "out.webm"
    writer = VideoFileWriter(dest, 10.0, 160, 120)
    for k in range(40):
        writer.write(scene(k, (160, 120)))
    assert writer.finish() and len(read_frames(dest)) == 40 and _incomplete(dest, 40) is None
    data, cut = dest.read_bytes(), tmp_path / "cut.webm"
    low, high = 0, len(data)  # the shortest prefix that still decodes every frame: data[:high]
    while high - low > 1:
        middle = (low + high) // 2
        cut.write_bytes(data[:middle])
        low, high = (low, middle) if len(read_frames(cut)) == 40 else (middle, high)
    for keep in (len(data) // 2, high - 1):
        cut.write_bytes(data[:keep])
        assert len(read_frames(cut)) < 40 and video_info(cut)[1] == 40  # the header still says 40
        assert _incomplete(cut, 40) is not None


def test_opencv_fourcc_notice_is_dropped_and_nothing_else(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    VideoFileWriter(tmp_path / "out.webm", 10.0, 160, 120).abort()  # OpenCV prints a notice for WebM
    assert capfd.readouterr().err == ""
    with _without_tag_notices():
        os.write(2, b"OpenCV: FFMPEG: tag 0x30385056/'VP80' is not supported with codec id 139\nother words\n")
    assert capfd.readouterr().err == "other words\n"


def test_schedule_and_timestamps() -> None:
    schedule = CaptionSchedule(1.0, every_frame=False)
    assert [k for k in range(75) if schedule.due(k / 29.97)] == [0, 30, 60]
    schedule = CaptionSchedule(0.05, every_frame=False)  # shorter than a frame: every frame
    assert all(schedule.due(k / 10) for k in range(20))
    assert format_time(0) == "00:00:00.000" and format_time(3723.0456) == "01:02:03.046"
    assert parse_source("0") == ("camera", 0) and parse_source(" 12 ") == ("camera", 12)
    assert parse_source("rtsp://cam/stream")[0] == "stream" and parse_source("clip.mp4") == ("file", "clip.mp4")
    assert parse_source("frames/%04d.png")[0] == "stream"


def test_worker_error_is_reported(tmp_path: Path) -> None:
    class Broken(SlowCaptioner):
        def caption(self, image: np.ndarray, options: DecodingOptions | None = None) -> CaptionResult:
            raise RuntimeError("model exploded")

    # 3 s of live playback: ample time for the worker thread to fail even on a loaded machine.
    clip = make_video(tmp_path / "cam.avi", 30, fps=10.0)
    for live in (True, False):
        source = open_source(str(clip), realtime=live)
        with pytest.raises(RuntimeError, match="model exploded"):
            process_video(VideoJob(source=str(clip), live=live, display=False), cast(Captioner, Broken(0)), source,
                          out=io.StringIO())
        source.release()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("captioner")]  # none left behind
