"""The caption overlay: the demo's white bar with black text, wrapped and scaled to the image."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
REFERENCE_WIDTH = 640  # the demo's 1.0-scale text was laid out for 640-px frames
MIN_SCALE = 0.25


@dataclass(frozen=True)
class Layout:
    lines: list[str]
    scale: float
    thickness: int
    margin: int
    line_height: int

    @property
    def bar_height(self) -> int:
        return self.margin + self.line_height * len(self.lines)


def _text_width(text: str, scale: float, thickness: int) -> int:
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def _wrap(words: list[str], scale: float, thickness: int, width: int, hard_break: bool) -> list[str] | None:
    """Greedy line filling. A word wider than the line makes the layout fail (None) so a smaller
    scale is tried, unless ``hard_break``: then it is split by characters."""
    lines: list[str] = []
    for word in words:
        if _text_width(word, scale, thickness) > width:
            if not hard_break:
                return None
            pieces = _split_word(word, scale, thickness, width)
            lines += pieces[:-1]
            word = pieces[-1]
        if lines and _text_width(f"{lines[-1]} {word}", scale, thickness) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _split_word(word: str, scale: float, thickness: int, width: int) -> list[str]:
    pieces: list[str] = []
    while word:
        n = len(word)
        while n > 1 and _text_width(word[:n], scale, thickness) > width:
            n -= 1
        pieces.append(word[:n])
        word = word[n:]
    return pieces


def layout(text_lines: list[str], width: int, height: int) -> Layout:
    """The largest scale, up to the demo's relative to the width, at which every word fits on a
    line and the bar covers at most half the image; the smallest scale if none does."""
    scale = max(MIN_SCALE, width / REFERENCE_WIDTH)
    while True:
        smallest = scale <= MIN_SCALE
        thickness = max(1, round(2 * scale))
        margin = max(2, round(12 * scale))
        (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
        line_height = text_h + baseline + max(2, round(6 * scale))
        lines: list[str] = []
        for text in text_lines:
            wrapped = _wrap(text.split(), scale, thickness, max(1, width - 2 * margin), smallest)
            if wrapped is None:
                break
            lines += wrapped
        else:
            if smallest or margin + line_height * len(lines) <= height // 2:
                return Layout(lines, scale, thickness, margin, line_height)
        scale = max(MIN_SCALE, scale * 0.85)


def draw_caption(image: np.ndarray, caption: str, extra_lines: list[str] | None = None) -> np.ndarray:
    """A copy of a BGR image with the caption (and any extra lines) in a white bar at the top."""
    out = image.copy()
    h, w = out.shape[:2]
    lay = layout([caption, *(extra_lines or [])], w, h)
    cv2.rectangle(out, (0, 0), (w, min(h, lay.bar_height)), (255, 255, 255), thickness=-1)
    (_, text_h), _ = cv2.getTextSize("Ag", FONT, lay.scale, lay.thickness)
    for i, line in enumerate(lay.lines):
        y = lay.margin // 2 + i * lay.line_height + text_h + lay.margin // 2
        cv2.putText(out, line, (lay.margin, y), FONT, lay.scale, (0, 0, 0), lay.thickness, cv2.LINE_AA)
    return out
