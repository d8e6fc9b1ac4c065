"""The caption service against hostile clients (docs/service.md#limits): decompression bombs, JSON built
to stall or overflow the parser, headers that arrive in one piece, a forced stop with requests in flight,
requests given up while they wait, and the answers every refusal must carry."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import SAMPLE, cli_env
from tests.service_helpers import Answer, Service, post_photo, request, serving, start_service, stop_all
from utils.decoding.options import DecodingOptions
from utils.engine.captioner import Captioner, CaptionerOptions, CaptionResult
from utils.engine.runtime import RuntimeOptions
from utils.service.caption_queue import CaptionQueue

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SLOW = "beam_size=1000&max_length=100&group_size=100"
TOKEN = "s3cret-Token_42"


@pytest.fixture(scope="module")
def service(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with serving(served_models, cwd=tmp_path_factory.mktemp("cwd")) as running:
        yield running


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.4 MB PNG of 134 megapixels (just under the decoding limit): a second of one core to decode."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    ok, data = cv2.imencode(".png", np.zeros((11585, 11585, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok and len(data) < 1_000_000
    path.write_bytes(data.tobytes())
    return path


def generate(service: Service, body: bytes, timeout: float = 60) -> Answer:
    return request(service, "POST", "/api/generate", body, {"Content-Type": "application/json"}, timeout=timeout)


def wait_until(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def test_an_ordinary_photo_is_not_held_up_by_decompression_bombs(service: Service, bomb: Path) -> None:
    """Four bombs, then a photo: the photo's answer comes before the bombs' (one reading thread decoded
    every upload in arrival order, so it came after all four)."""
    finished: dict[str, float] = {}

    def timed(name: str, path: Path) -> Answer:
        answer = post_photo(service, path, raw=True)
        finished[name] = time.monotonic()
        return answer

    with ThreadPoolExecutor(5) as pool:
        bombs = [pool.submit(timed, f"bomb{i}", bomb) for i in range(4)]
        wait_until(lambda: request(service, "GET", "/readyz").json()["pending"] == 4)
        photo = timed("photo", SAMPLE)
        assert photo.status == 200 and photo.json()["caption"]
        assert [b.result().status for b in bombs] == [200] * 4
    later = [name for name, at in finished.items() if at > finished["photo"]]
    assert len(later) >= 3, finished  # the bomb being decoded as the photo came may finish first


def test_json_nested_deep_is_a_400_in_one_line(service: Service) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"model": "m", "images": ' + b"[" * 40 + b"]" * 40 + b"}"):
        answer = generate(service, body)
        assert answer.status == 400 and answer.json() == {"error": "the JSON is nested more than 32 deep"}
    assert "RecursionError" not in service.stderr and "ERROR" not in service.stderr


def test_json_of_millions_of_keys_is_refused_at_once_and_health_answers_meanwhile(service: Service) -> None:
    keys = b"{" + b",".join(b'"k%d":1' % i for i in range(2_500_000)) + b"}"  # 31 MB: within the size limit
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(generate, service, keys) for _ in range(3)]
        health = [request(service, "GET", "/healthz", timeout=30).status for _ in range(5)]
        assert health == [200] * 5
        for answer in answers:
            assert answer.result().status == 400
            assert answer.result().json() == {"error": "the JSON has more than 10000 keys and values"}
    escaped = b'{"model": "m", "prompt": "' + b'\\"' * 20_000 + b'", "images": ["x"]}'
    assert generate(service, escaped).json() == {"error": "a JSON string has more than 10000 escaped quotes"}


def test_a_large_image_in_json_is_captioned_as_the_upload_is(service: Service) -> None:
    """The base64 of a photo over the long-string size is set aside, not parsed, and decodes in pieces;
    PHP's encoder escapes "/" as "\\/", which base64 may contain."""
    big = np.random.default_rng(3).integers(0, 256, (900, 1200, 3), np.uint8)
    data = cv2.imencode(".png", big)[1].tobytes()
    assert len(data) > 1_000_000
    expected = request(service, "POST", "/v1/captions", data, {"Content-Type": "image/png"}).json()["caption"]
    encoded = base64.b64encode(data).decode()
    assert "/" in encoded
    plain = json.dumps({"model": "m", "stream": False, "images": [encoded]}).encode()
    php = plain.replace(b"/", b"\\/")
    data_url = json.dumps({"model": "m", "stream": False, "images": ["data:image/png;base64," + encoded]}).encode()
    for body in (plain, php, data_url):
        answer = generate(service, body)
        assert answer.status == 200, answer.body[:300]
        assert answer.json()["response"] == expected
    forged = json.dumps({"model": "m", "stream": False, "images": [encoded],
                         "prompt": "long-string-0000000000000000-0"}).encode()
    assert generate(service, forged).json()["response"] == expected
    bad = plain.replace(encoded[:8].encode(), b"\\u0041" * 2)
    assert generate(service, bad).status == 400


def test_headers_sent_in_one_piece_are_bounded(service: Service) -> None:
    for head in (b"X-Big: " + b"a" * 20_000 + b"\r\n", b"".join(b"X-%d: 1\r\n" % i for i in range(1000))):
        with socket.create_connection((service.host, service.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large", reply[:200]
        assert b"x-content-type-options: nosniff" in rest.lower()
        assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
            "error": "the request's headers are over 100 fields or 16 KiB"}
    assert request(service, "GET", "/healthz").status == 200


def test_head_probes_and_the_icon(service: Service) -> None:
    for path in ("/healthz", "/readyz"):
        answer = request(service, "HEAD", path)
        assert answer.status == 200 and answer.body == b""
    for path in ("/favicon.ico", "/static/favicon.svg"):
        icon = request(service, "GET", path)
        assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml" and b"<svg" in icon.body


def test_every_refusal_says_nosniff(served_models: Path, tmp_path: Path) -> None:
    """The token's 401, a CORS preflight's answer and the 503 for too many connections come from layers
    around the routes: each carries nosniff and the one JSON error shape like every other answer."""
    running = start_service(served_models, "--cors-origin", "http://photos.test", cwd=tmp_path,
                            env={"IMAGE_CAPTIONING_TOKEN": TOKEN})
    idle: list[socket.socket] = []
    try:
        refused = request(running, "GET", "/readyz")
        assert refused.status == 401 and refused.headers["x-content-type-options"] == "nosniff"
        preflight = request(running, "OPTIONS", "/v1/captions", headers={
            "Origin": "http://photos.test", "Access-Control-Request-Method": "POST"})
        assert preflight.status == 200 and preflight.headers["x-content-type-options"] == "nosniff"
        for _ in range(520):  # past the 512 connections the service holds at once
            idle.append(socket.create_connection((running.host, running.port), timeout=30))
        full = request(running, "GET", "/healthz")
        assert full.status == 503 and full.headers["x-content-type-options"] == "nosniff"
        assert "connections open" in full.json()["error"] and full.headers["retry-after"] == "1"
        for sock in idle:
            sock.close()
        idle.clear()
        wait_until(lambda: request(running, "GET", "/healthz").status == 200)
        assert running.stop() == 0
    finally:
        for sock in idle:
            sock.close()
        stop_all(running)


def test_a_second_signal_answers_the_requests_in_flight_without_a_traceback(served_models: Path,
                                                                           tmp_path: Path) -> None:
    running = start_service(served_models, "--workers", "2", cwd=tmp_path)
    try:
        with ThreadPoolExecutor(10) as pool:
            answers: list[Future[Answer]] = [pool.submit(post_photo, running, SAMPLE, SLOW, timeout=60)
                                             for _ in range(10)]
            wait_until(lambda: request(running, "GET", "/readyz").json().get("pending") == 10)
            running.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            running.proc.send_signal(signal.SIGTERM)
            assert running.proc.wait(60) == 128 + signal.SIGTERM
            statuses = []
            for answer in answers:
                try:
                    statuses.append(answer.result().status)
                except OSError:  # the connection closed without an answer: also clean
                    statuses.append(0)
        assert all(status in (0, 503) for status in statuses), statuses
        lines = [line for line in running.stderr.splitlines() if "serving captions at" not in line]
        assert lines == ["ERROR: interrupted"], running.stderr
    finally:
        stop_all(running)


class CountingCaptioner(Captioner):
    """The real captioner, counting its model runs."""

    runs = 0

    def _caption(self, *args: Any, **kwargs: Any) -> CaptionResult:
        type(self).runs += 1
        return super()._caption(*args, **kwargs)


def test_requests_given_up_while_they_wait_are_never_run(served_models: Path) -> None:
    """The service cancels a request's future when its time limit passes; one waiting for a worker (the
    pipeline had read it ahead) must then be dropped without a model run."""
    captioner = CountingCaptioner(CaptionerOptions(model_dir=served_models, offline=True, progress=False,
                                                   runtime=RuntimeOptions(backend="onnxruntime")))
    queue = CaptionQueue(captioner, capacity=10)
    try:
        slow = DecodingOptions(beam_size=1000, max_length=100, group_size=100)
        data = SAMPLE.read_bytes()
        first = queue.submit(data, "first", slow)
        wait_until(lambda: CountingCaptioner.runs == 1)
        later = [queue.submit(data, f"later{i}", slow) for i in range(5)]
        time.sleep(1.0)  # long enough for each to be decoded and read ahead by the pipeline
        assert all(future.cancel() for future in later)
        assert first.result(timeout=120).caption
        wait_until(lambda: queue.pending == 0)
        assert CountingCaptioner.runs == 1
    finally:
        queue.close()


def test_schemathesis_finds_the_service_as_its_openapi_document_says(service: Service, tmp_path: Path) -> None:
    """Every check of schemathesis, bounded: each answer's status, content type, schema and headers are
    the ones the document gives, schema-valid requests are served and schema-violating ones refused."""
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(FIXTURES / "schemathesis.toml"), "run",
         f"{service.url}openapi.json", "--checks", "all", "--max-examples", "15", "--seed", "1",
         "--request-timeout", "60", "--workers", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout or "passed" in proc.stdout, proc.stdout[-3000:]
