"""The caption bar: white, at the top, text wrapped to the width and never wider than the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.support.drawing import FONT, draw_caption, layout

LONG = "a man riding a wave on top of a surfboard next to a very tall lighthouse at sunset"


@pytest.mark.parametrize("size", [(480, 640), (1080, 1920), (120, 160), (20, 30), (1, 1)])
def test_lines_fit_the_width(size: tuple[int, int]) -> None:
    h, w = size
    lay = layout([LONG], w, h)
    for line in lay.lines:
        width = cv2.getTextSize(line, FONT, lay.scale, lay.thickness)[0][0]
        assert width <= max(1, w - 2 * lay.margin) or len(line) == 1
    assert " ".join(lay.lines).replace(" ", "") == LONG.replace(" ", "")


def test_bar_is_white_with_dark_text_and_input_untouched() -> None:
    image = np.full((480, 640, 3), 90, np.uint8)
    out = draw_caption(image, LONG)
    assert (image == 90).all()
    lay = layout([LONG], 640, 480)
    assert len(lay.lines) >= 2
    bar = out[: lay.bar_height]
    assert (bar > 200).mean() > 0.7 and (bar < 60).any()
    assert (out[lay.bar_height + 2 :] == 90).all()


def test_scales_with_frame() -> None:
    assert layout(["a cat"], 1920, 1080).scale > layout(["a cat"], 640, 480).scale


def test_extra_lines_are_drawn() -> None:
    assert len(layout(["a cat", "12.0 fps"], 640, 480).lines) == 2
