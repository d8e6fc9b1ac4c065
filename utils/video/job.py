"""What a video run is asked to do (``VideoJob``) and what it measured (``VideoStats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from utils.decoding.options import DecodingOptions

if TYPE_CHECKING:
    from utils.video.source import Frame

DEFAULT_INTERVAL = 1.0  # seconds of video time between captions of a file

End = Literal["end", "quit", "interrupted", "disconnected"]


@dataclass(frozen=True)
class VideoJob:
    source: str  # camera index, file, URL or pipeline
    savepath: Path | None = None  # annotated video (.mp4, .m4v, .mov: mp4v; .avi, .mkv: MJPG)
    format: str = "text"  # a name in utils.output.formats.FORMATS
    captions_file: Path | None = None  # also write the captions here, in its extension's format
    interval: float | None = None  # files: video seconds between captions (None: 1.0); live: minimum spacing
    sync: bool = False  # caption every frame (files) / caption each frame before showing it (live)
    live: bool = False  # play a file at its frame rate as a live source
    display: bool = True  # False: never open a window
    hud: bool = False  # draw display fps, caption latency and the model under the caption
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    quiet_gui: bool = True  # silence the GUI toolkit's own warnings


@dataclass
class VideoStats:
    end: End = "end"
    frames_shown: int = 0  # frames passed to the window / writer / observer
    frames_on_time: int = 0  # of those, shown within one frame period of their arrival (live sources)
    dropped: int = 0  # frames a real-time file skipped because the loop was late
    captions: int = 0
    latency_ms: list[float] = field(default_factory=list)  # live: frame captured -> its caption shown
    compute_ms: list[float] = field(default_factory=list)  # model time per caption
    first_shown: float | None = None
    last_shown: float | None = None
    last_frame: Frame | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def shown_fps(self) -> float:
        if self.first_shown is None or self.last_shown is None or self.frames_shown < 2:
            return 0.0
        return (self.frames_shown - 1) / max(1e-9, self.last_shown - self.first_shown)
