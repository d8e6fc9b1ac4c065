"""Video mode (-v): open the source and the outputs, run the loop, report how the run ended.

How frames are captioned is in utils/video/loops.py; what happens to each shown frame in
utils/video/presenter.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

from utils.engine.captioner import Captioner, CaptionerOptions
from utils.output.captions_file import check_captions_file
from utils.output.formats import format_time
from utils.support.stopping import stop_requests
from utils.video.job import VideoJob, VideoStats
from utils.video.loops import process_video
from utils.video.source import VideoSource, open_source
from utils.video.video_file import CODECS, VideoFileWriter, plan_video_output
from utils.video.window import Window, display_available

logger = logging.getLogger(__name__)


def _default_name(source: VideoSource) -> str:
    """The video's name in a -s folder: the input's own name when it is a format this program writes, else
    .mp4, whose mp4v encodes fastest: the writer runs in step with the frames shown, so a slower codec
    (.webm's VP8) could make a camera drop frames; a browser-ready .webm is asked for by name."""
    if source.path is not None:
        return source.path.name if source.path.suffix.lower() in CODECS else source.path.stem + ".mp4"
    return source.name.replace(" ", "_") + ".mp4" if source.kind == "camera" else "stream.mp4"


def _open_window(job: VideoJob, source: VideoSource) -> Window | None:
    available, why = display_available()
    if not available:
        # No display at all is the normal case on a server; a display that does not work is worth a word.
        (logger.warning if "does not answer" in why or "Wayland" in why else logger.debug)(
            "cannot show a window (%s); running headless", why)
        return None
    try:
        return Window(f"image_captioning_pytorch - {source.name}", quiet=job.quiet_gui)
    except OSError as exc:
        logger.warning("%s; running headless", exc)
        return None


def run_video(job: VideoJob, options: CaptionerOptions, out: TextIO = sys.stdout,
              load: Callable[[CaptionerOptions], Captioner] = Captioner) -> int:
    """Caption a video source with a captioner loaded by ``load``; return the exit status."""
    # Source and output are checked before the models load: a typo costs no download.
    source = open_source(job.source, realtime=job.live)
    video_out: VideoFileWriter | None = None
    window: Window | None = None
    try:
        if job.captions_file is not None:
            check_captions_file(job.captions_file, [source.path] if source.path is not None else [])
        if job.savepath is not None:
            dest = plan_video_output(job.savepath, _default_name(source), source.path)
            video_out = VideoFileWriter(dest, source.fps, source.width, source.height)
        captioner = load(options)
        if job.display:
            window = _open_window(job, source)
    except BaseException:
        if video_out is not None:
            video_out.abort()
        source.release()
        raise
    # From here on a signal never raises: the first stops the loop after the current frame, a second
    # stops its waits at once; either way the run ends here, with the video closed and the captions
    # file committed (utils/support/stopping.py).
    with stop_requests() as stop:
        try:
            stats = process_video(job, captioner, source, video_out, window, out, stop)
        except BaseException:
            if video_out is not None:
                video_out.abort()
            raise
        finally:
            source.release()
            if window is not None:
                window.close()
        saved = video_out.finish() if video_out is not None else False
        return _report_end(stats, source, video_out, saved, stop.signum)


def _report_end(stats: VideoStats, source: VideoSource, video_out: VideoFileWriter | None, saved: bool,
                signum: int) -> int:
    where = stats.last_frame
    at = f"at {format_time(where.time)} (frame {where.index})" if where is not None else "before the first frame"
    note = ""
    if video_out is not None:
        dest = video_out.dest
        frames = f"{video_out.frames} frame{'' if video_out.frames == 1 else 's'}"
        note = f"; saved {frames} to {dest}" if saved else f"; nothing saved to {dest}"
    if stats.end == "interrupted":
        logger.warning("interrupted %s%s", at, note)
        return 128 + signum
    if stats.end == "disconnected":
        logger.error("%s stopped sending frames %s%s", source.name, at, note)
        return 1
    if video_out is not None and not saved:
        logger.warning("no frames were shown%s", note)
    return 0
