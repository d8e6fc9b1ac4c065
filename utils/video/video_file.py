"""Writing the annotated video: codec by extension, a temporary file beside, renamed when complete.

The final name only ever holds a finished, playable video: frames go to a hidden ``.NAME.EXT.part-XXXX.EXT``
file in the same folder, which is closed (so the container is finalised), flushed to disk and renamed
when the run ends, whether by the end of the source, q/Esc, closing the window or Ctrl-C. An error
removes it. Only a hard kill (SIGKILL, power loss) can leave a ``.part`` file behind, never a half video.

OpenCV's writer reports no write errors: on a full disk it goes on "writing" and leaves a truncated,
unplayable file. So free space is watched while writing, and before the rename the finished file is
opened again and must hold every frame written; otherwise it is removed with an error, and whatever
was at the final name before is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from utils.files.atomic import commit, create_temp_beside
from utils.files.checks import check_output_slot, check_writable_folder, never_an_input
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

SPACE_CHECK_FRAMES = 25  # frames between two looks at the free space
# Stop when the free space would hold fewer frames than this (at the file's bytes per frame so far),
# plus the container's closing index.
SPACE_MARGIN_FRAMES = 8
SPACE_MARGIN_BYTES = 1 << 16

# Codecs the pip OpenCV's FFmpeg writes. mp4v (MPEG-4 part 2) is the fastest and desktop players play it,
# but browsers do not, and H.264 ('avc1') cannot be had instead: that build opens no H.264 encoder (it
# tries a hardware one, v4l2m2m, and fails). VP8 in WebM is what a browser's <video> plays: about 8 times
# slower to encode than mp4v, still 6 times faster than VP9. MJPG keeps every frame independent, so even
# a file cut short by a crash decodes up to its last frame.
CODECS: dict[str, str] = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".webm": "VP80", ".avi": "MJPG",
                          ".mkv": "MJPG"}
# What OpenCV prints straight to the C stderr when a fourcc is not in the container's table of tags. WebM
# has no such table, so every WebM gets it: a notice, not an error; the codec is the one asked for.
_TAG_NOTICES = ("OpenCV: FFMPEG: tag ", "OpenCV: FFMPEG: fallback to use tag ")


def plan_video_output(savepath: Path, default_name: str, source: Path | None) -> Path:
    """The file to write: ``savepath`` itself, or ``default_name`` inside it when it is a folder.
    Checked before any work: a known video extension, a writable folder, never the input."""
    dest = savepath / default_name if savepath.is_dir() else savepath
    suffix = dest.suffix.lower()
    if suffix not in CODECS:
        known = ", ".join(CODECS)
        raise CaptionError(
            f"cannot save {dest}: {dest.suffix or 'no extension'} is not a video format this program writes; "
            f"use one of {known}"
        )
    check_writable_folder(dest.parent)
    check_output_slot(dest)
    never_an_input([dest], [source] if source is not None else [])
    return dest


class VideoFileWriter:
    """Frames of one size at one frame rate into ``dest``, atomically (see the module docstring)."""

    def __init__(self, dest: Path, fps: float, width: int, height: int) -> None:
        self.dest = dest
        self.fps = fps
        self.size = (width, height)
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        try:
            fd, tmp = create_temp_beside(dest)
            os.close(fd)  # OpenCV opens the file by name
            self._tmp: Path | None = tmp
        except OSError as exc:
            raise CaptionError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        fourcc = cv2.VideoWriter.fourcc(*CODECS[dest.suffix.lower()])
        with _without_tag_notices():
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, fps, self.size)
        if not self._writer.isOpened():
            self.abort()
            raise CaptionError(f"cannot write {dest}: OpenCV cannot encode {dest.suffix} video here")

    def write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self.size:  # a source that changed resolution mid-stream
            image = cv2.resize(image, self.size)
        assert self._writer is not None, "write after finish or abort"
        self._writer.write(image)
        self.frames += 1
        if self.frames % SPACE_CHECK_FRAMES == 0:
            self._check_space()

    def _check_space(self) -> None:
        assert self._tmp is not None
        try:
            written = self._tmp.stat().st_size
            disk = os.statvfs(self._tmp.parent)
        except OSError:
            return  # not knowable here; the final check still decides
        free = disk.f_bavail * disk.f_frsize
        if written and free < SPACE_MARGIN_FRAMES * written / self.frames + SPACE_MARGIN_BYTES:
            raise CaptionError(f"cannot write {self.dest}: the disk is full ({free // 1024} KiB left after "
                               f"{self.frames} frames); nothing was saved, free some space or save elsewhere")

    def finish(self) -> bool:
        """Close the file and give it its final name; False (and nothing written) if it has no frames."""
        if self._tmp is None:
            return False
        self._release()
        tmp, self._tmp = self._tmp, None
        if self.frames == 0:
            tmp.unlink(missing_ok=True)
            return False
        try:
            problem = _incomplete(tmp, self.frames)
            if problem is not None:
                raise CaptionError(f"cannot write {self.dest}: {problem} (is the disk full?); nothing was saved")
            check_output_slot(self.dest)  # a link or pipe put there during the run is not replaced
            with open(tmp, "rb+") as out:
                commit(out, tmp, self.dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CaptionError(f"cannot write {self.dest}: {exc.strerror or exc}; nothing was saved") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

    def abort(self) -> None:
        """Drop the partial file (after an error)."""
        self._release()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()  # finalises the container (an mp4's index is written here)
            self._writer = None


@contextlib.contextmanager
def _without_tag_notices() -> Iterator[None]:
    """Drop OpenCV's fourcc notices (``_TAG_NOTICES``) from what is printed to file descriptor 2 meanwhile;
    anything else printed there, by any thread, is passed on afterwards."""
    sys.stderr.flush()
    with contextlib.ExitStack() as stack:
        try:
            capture = stack.enter_context(tempfile.TemporaryFile())
            stack.callback(os.close, saved := os.dup(2))
        except OSError:  # no room for a temporary file, or no stderr at all: the notice is the lesser harm
            capture = None
        if capture is None:
            yield
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
        capture.seek(0)
        printed = capture.read().decode(errors="replace").splitlines(keepends=True)
    passed_on = "".join(line for line in printed if not line.startswith(_TAG_NOTICES))
    if passed_on:
        sys.stderr.write(passed_on)
        sys.stderr.flush()


def _incomplete(path: Path, frames: int) -> str | None:
    """Why the closed video at ``path`` does not hold ``frames`` decodable frames, or None.

    The frame count an mp4 or avi reports is the number of frames indexed; a WebM's is its duration times
    its frame rate, from a header written at the start, so it survives a cut tail. What decides is that
    the last frame decodes: FFmpeg writes nothing more after a failed write (full disk), so a video is
    only ever cut at its end. Bounded: one seek, then a few frames decoded from the key frame before."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return "the written video cannot be opened again"
        counted = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if counted != frames:
            return f"the written video holds {counted} of its {frames} frames"
        capture.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        if not capture.read()[0]:
            return "the written video's last frame cannot be decoded"
    finally:
        capture.release()
    return None
