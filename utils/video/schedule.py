"""Which frames of a video file are captioned."""

from __future__ import annotations

import math


class CaptionSchedule:
    """The first frame at or after each multiple of ``interval`` seconds of video time (every frame
    with ``every_frame``); a caption is kept on screen until the next one."""

    def __init__(self, interval: float, every_frame: bool) -> None:
        self.interval = interval
        self.every_frame = every_frame
        self._next = 0.0

    def due(self, t: float) -> bool:
        if self.every_frame:
            return True
        if t + 1e-6 < self._next:
            return False
        self._next = (math.floor((t + 1e-6) / self.interval) + 1) * self.interval
        return True
