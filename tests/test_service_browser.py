"""The service's page (GET /) in a real browser: Debian's Chromium driven by Playwright, against the real
program serving the test models. A person's steps: choose photos (and drop one) and see each caption,
copy one as alt text, and turn on the camera (Chromium's fake camera) to see live captions drawn over it.
The page's checks run at a phone's width (390 px) and a desktop's (1280 px): the layout, the keyboard
focus on the file chooser, and a page load free of console errors and failed requests.

.ci/run installs Chromium (apt-get install chromium) and Playwright (requirements-dev.txt); Playwright
only drives the system's Chromium and never downloads a browser.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from tests.service_helpers import Service, make_photos, post_photo, serving

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 60_000
PHONE, DESKTOP = 390, 1280
WIDTHS = pytest.mark.parametrize("width", [PHONE, DESKTOP], ids=["phone-390px", "desktop-1280px"])
HEIGHT = 844

# Drops a file on the drop zone as a person dragging it from a file manager would.
DROP = """([name, data]) => {
  const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: 'image/png'}));
  const zone = document.getElementById('drop');
  zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""
# The style that shows where the keyboard is on an element: its outline and box shadow.
FOCUS_STYLE = """(selector) => {
  const style = getComputedStyle(document.querySelector(selector));
  return {outline: `${style.outlineStyle} ${style.outlineWidth} ${style.outlineColor}`,
          width: parseFloat(style.outlineWidth) || 0, style: style.outlineStyle, shadow: style.boxShadow};
}"""
# How many lines an element's text takes: the distinct tops of its text's line boxes.
LINES = """(selector) => {
  const range = document.createRange();
  range.selectNodeContents(document.querySelector(selector));
  return new Set(Array.from(range.getClientRects(), (r) => Math.round(r.top))).size;
}"""
# How many of the overlay's pixels are drawn (not transparent).
DRAWN = """() => {
  const canvas = document.getElementById('overlay');
  if (!canvas.width || !canvas.height) return 0;
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn += 1;
  return drawn;
}"""


@pytest.fixture(scope="module")
def service(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with serving(served_models, cwd=tmp_path_factory.mktemp("browser-service"), quiet=False) as running:
        yield running


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    context = playwright.chromium.launch_persistent_context(
        tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        yield context
    finally:
        context.close()


def new_page(browser: Any, width: int) -> Any:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_viewport_size({"width": width, "height": HEIGHT})
    return page


def box_gap(a: dict[str, float], b: dict[str, float]) -> float:
    """The distance between two boxes (boundingBox): 0 when they touch or overlap."""
    dx = max(0.0, b["x"] - (a["x"] + a["width"]), a["x"] - (b["x"] + b["width"]))
    dy = max(0.0, b["y"] - (a["y"] + a["height"]), a["y"] - (b["y"] + b["height"]))
    return max(dx, dy)


@WIDTHS
def test_photos_chosen_and_dropped_get_their_captions_and_alt_text_copies(service: Service, browser: Any,
                                                                          tmp_path: Path, width: int) -> None:
    photos = make_photos(tmp_path, 3)
    expected = {p.name: post_photo(service, p).json()["caption"] for p in photos}
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(service.url))
    browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = new_page(browser, width)
    page.goto(service.url)
    page.set_input_files("#files", [str(p) for p in photos[:2]])
    page.evaluate(DROP, [photos[2].name, base64.b64encode(photos[2].read_bytes()).decode()])
    page.wait_for_function("() => document.querySelectorAll('.result[data-caption]').length === 3")
    shown = {page.locator(".result .name").nth(i).inner_text(): page.locator(".result .caption").nth(i).inner_text()
             for i in range(3)}
    assert shown == expected
    first = page.locator(".result").filter(has_text=photos[0].name)
    assert first.locator("img").get_attribute("alt") == expected[photos[0].name]
    first.locator("button.copy").click()
    page.wait_for_function("() => document.querySelector('button.copy[data-copied]') !== null")
    assert page.evaluate("navigator.clipboard.readText()") == expected[photos[0].name]
    assert page.locator(".result.failed").count() == 0
    page.close()


@WIDTHS
def test_the_view_buttons_do_not_touch_the_drop_zone(service: Service, browser: Any, width: int) -> None:
    page = new_page(browser, width)
    page.goto(service.url)
    drop = page.locator("#drop").bounding_box()
    for button in ("#show-photos", "#show-camera"):
        assert box_gap(page.locator(button).bounding_box(), drop) >= 8, button  # half a line, at least
    assert box_gap(page.locator("#show-photos").bounding_box(), page.locator("#show-camera").bounding_box()) > 0
    page.close()


@WIDTHS
def test_the_cards_stack_on_a_phone_and_keep_the_desktop_row(service: Service, browser: Any, tmp_path: Path,
                                                             width: int) -> None:
    page = new_page(browser, width)
    page.goto(service.url)
    page.set_input_files("#files", [str(make_photos(tmp_path, 1)[0])])
    page.wait_for_selector(".result[data-caption]")
    image = page.locator(".result img").bounding_box()
    caption = page.locator(".result .caption").bounding_box()
    assert page.evaluate(LINES, ".result .copy") == 1  # "Copy alt text" on one line
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider than the screen
    if width == PHONE:  # the caption gets the card's width, below the photo, not a column of two words
        assert caption["width"] >= 300, caption
        assert caption["y"] >= image["y"] + image["height"], (image, caption)
    else:  # the photo beside its caption, in one row
        assert caption["x"] >= image["x"] + image["width"], (image, caption)
        assert caption["y"] < image["y"] + image["height"], (image, caption)
    page.close()


@WIDTHS
def test_the_file_chooser_shows_where_the_keyboard_is(service: Service, browser: Any, width: int) -> None:
    page = new_page(browser, width)
    page.goto(service.url)
    unfocused = page.evaluate(FOCUS_STYLE, "#drop")
    for _ in range(10):  # Tab from the top of the page: the view buttons, then the file chooser
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "files":
            break
    assert page.evaluate("document.activeElement.id") == "files"
    assert page.evaluate("document.getElementById('files').matches(':focus-visible')")
    focused = page.evaluate(FOCUS_STYLE, "#drop")  # the input is hidden: its drop zone shows the focus
    assert focused != unfocused
    assert (focused["style"] != "none" and focused["width"] >= 2) or focused["shadow"] != "none", focused
    page.keyboard.press("Shift+Tab")  # and only while it has it
    assert page.evaluate(FOCUS_STYLE, "#drop") == unfocused
    page.close()


@WIDTHS
def test_the_page_loads_without_console_errors_or_failed_requests(service: Service, playwright: Any,
                                                                  width: int) -> None:
    # A fresh browser, as Chromium asks a site for /favicon.ico once and then remembers the answer.
    fresh = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        page = fresh.new_page(viewport={"width": width, "height": HEIGHT})
        page.set_default_timeout(TIMEOUT_MS)
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        page.goto(service.url)
        page.wait_for_load_state("networkidle")  # the icon is asked for after the load event
        assert problems == []
        assert page.title() == "Image captions"
    finally:
        fresh.close()


def test_a_photo_the_server_refuses_shows_its_message(service: Service, browser: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a photo at all")
    page = new_page(browser, PHONE)
    page.goto(service.url)
    page.set_input_files("#files", [str(bad)])
    page.wait_for_selector(".result.failed")
    assert "broken.jpg is not an image OpenCV can decode" in page.locator(".result.failed .caption").inner_text()
    page.close()


def test_camera_mode_draws_live_captions_one_request_at_a_time(service: Service, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    in_flight, most, finished = 0, 0, 0

    def sent(req: Any) -> None:
        nonlocal in_flight, most
        if req.url.endswith("/v1/captions"):
            in_flight += 1
            most = max(most, in_flight)

    def ended(req: Any) -> None:
        nonlocal in_flight, finished
        if req.url.endswith("/v1/captions"):
            in_flight -= 1
            finished += 1

    page.on("request", sent)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    page.goto(service.url)
    page.click("#show-camera")
    page.click("#camera-start")
    page.wait_for_function("() => document.getElementById('overlay').dataset.caption")
    page.wait_for_function("() => document.getElementById('live-caption').textContent.length > 0")
    while finished < 4:  # several frames captioned in turn
        page.wait_for_timeout(100)
    caption = page.evaluate("document.getElementById('overlay').dataset.caption")
    assert caption and page.evaluate(DRAWN) > 0  # drawn over the video, not only written below it
    assert page.evaluate("document.getElementById('camera').videoWidth") > 0
    page.click("#camera-stop")
    assert most == 1
    page.close()
