"""The service's page (GET /) in a real browser: Debian's Chromium driven by Playwright, against the real
program serving the test models. A person's steps: choose photos (and drop one) and see each caption,
copy one as alt text, and turn on the camera (Chromium's fake camera) to see live captions drawn over it.

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

from models.synthetic import NewFCParams
from tests.service_helpers import Service, copy_models, make_photos, post_photo, start_service, stop_all

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 60_000

# Drops a file on the drop zone as a person dragging it from a file manager would.
DROP = """([name, data]) => {
  const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: 'image/png'}));
  const zone = document.getElementById('drop');
  zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
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
def service(model_set_dir: tuple[Path, dict[str, NewFCParams]],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("browser-service")
    running = start_service(copy_models(model_set_dir[0], folder / "models"), cwd=folder)
    yield running
    try:
        assert running.stop() == 0, running.stderr
        assert "Traceback" not in running.stderr, running.stderr
    finally:
        stop_all(running)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=chromium, args=CHROMIUM_ARGS,
            headless=True)
        try:
            yield context
        finally:
            context.close()


def test_photos_chosen_and_dropped_get_their_captions_and_alt_text_copies(service: Service, browser: Any,
                                                                          tmp_path: Path) -> None:
    photos = make_photos(tmp_path, 3)
    expected = {p.name: post_photo(service, p).json()["caption"] for p in photos}
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(service.url))
    browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
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


def test_a_photo_the_server_refuses_shows_its_message(service: Service, browser: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a photo at all")
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
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
