"""The caption service's application in this process (the fast tier's view of utils/service/): uvicorn
serving it from a thread on a free loopback port, with the service's own protocol, middleware, queue and
decoding lanes over the test models; and the bounded JSON parser on its own. The real program with
--serve is tests/test_service.py and tests/test_service_hostile.py."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from tests.conftest import SAMPLE, copy_models
from tests.reference import imread
from tests.service_helpers import multipart
from utils.decoding.options import DecodingOptions
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.engine.runtime import RuntimeOptions
from utils.service import json_body, middleware, ollama
from utils.service.app import ServiceState
from utils.service.caption_queue import CaptionQueue
from utils.service.job import Address, ServiceOptions
from utils.service.json_body import LongString
from utils.service.run import listen, uvicorn_config
from utils.service.uploads import RequestError


class InProcess:
    def __init__(self, port: int, captioner: Captioner) -> None:
        self.port = port
        self.captioner = captioner

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def app_service(model_set_dir: tuple[Path, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    models = copy_models(model_set_dir[0], tmp_path_factory.mktemp("app") / "models")
    captioner = Captioner(CaptionerOptions(model_dir=models, offline=True, progress=False,
                                           runtime=RuntimeOptions(backend="onnxruntime")))
    sock = listen(Address("127.0.0.1", 0))
    state = ServiceState(ServiceOptions(address=Address("127.0.0.1", 0)))
    state.start(CaptionQueue(captioner, 8))
    server = uvicorn.Server(uvicorn_config(state))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
    yield InProcess(sock.getsockname()[1], captioner)
    server.should_exit = True
    thread.join(30)
    state.close()
    sock.close()


def test_an_upload_and_its_json_twin_get_the_python_apis_caption(app_service: InProcess) -> None:
    expected = app_service.captioner.caption(imread(SAMPLE), DecodingOptions()).caption
    body, kind = multipart({"image": ("cat.png", SAMPLE.read_bytes())})
    status, headers, answer = app_service.request("POST", "/v1/captions", body, {"Content-Type": kind})
    assert status == 200 and headers["x-content-type-options"] == "nosniff"
    assert json.loads(answer)["caption"] == expected and json.loads(answer)["input"] == "cat.png"
    generate = json.dumps({"model": "m", "stream": False, "images": [base64.b64encode(SAMPLE.read_bytes()).decode()]})
    status, _, answer = app_service.request("POST", "/api/generate", generate.encode(),
                                            {"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer)["response"] == expected


def test_refusals_in_one_line(app_service: InProcess) -> None:
    status, headers, answer = app_service.request("GET", "/healthz", headers={f"X-{i}": "1" for i in range(120)})
    assert status == 431 and headers["x-content-type-options"] == "nosniff"
    status, _, answer = app_service.request("POST", "/api/generate", b"[" * 50 + b"]" * 50,
                                            {"Content-Type": "application/json"})
    assert (status, json.loads(answer)) == (400, {"error": "the JSON is nested more than 32 deep"})
    status, _, answer = app_service.request("POST", "/v1/captions?beam_size=0", SAMPLE.read_bytes(),
                                            {"Content-Type": "image/png"})
    assert status == 422 and "beam size" in json.loads(answer)["error"]
    status, _, answer = app_service.request("POST", "/v1/captions", b"not an image", {"Content-Type": "image/png"})
    assert status == 422 and "not an image" in json.loads(answer)["error"]
    assert app_service.request("HEAD", "/readyz")[0] == 200


def _refused_while_sending(port: int, trickle: bool) -> tuple[bytes, float]:
    """Announce a body over the upload limit, then send a byte every 0.1 s (or nothing): the answer, and
    how long the server took to close the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: %d\r\n\r\n" % (1 << 40))
        answer = sock.recv(65536)
        while not answer.endswith(b"}"):  # the JSON answer, whole, before any byte of the body was read
            answer += sock.recv(65536)
        answered = time.monotonic()
        sock.settimeout(0.1)
        while time.monotonic() - answered < 30:
            try:
                if trickle:
                    sock.sendall(b"x")
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed while this client wrote
                break
        return answer, time.monotonic() - answered


def test_a_refused_body_lingers_only_within_its_bounds(app_service: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to a refused body comes at once and whole; then the rest of the body is dropped for at
    most LINGER_S (a client sending for ever) or LINGER_IDLE_S without a byte, and the connection closes."""
    monkeypatch.setattr(middleware, "LINGER_S", 1.0)
    monkeypatch.setattr(middleware, "LINGER_IDLE_S", 0.3)
    for trickle, bound in ((True, 1.0), (False, 0.3)):
        answer, closed_after = _refused_while_sending(app_service.port, trickle)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and "limit" in json.loads(body)["error"]
        # Closed after the bound, and long before the terabyte announced (the margin is for a loaded machine).
        assert bound - 0.2 < closed_after < 20, (trickle, closed_after)


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 33 + b"]" * 33, "nested more than 32 deep"),
    (b"[" + b"1," * 10_001 + b"1]", "more than 10000 keys and values"),
    (b'{"a": "' + b"x" * 100 + b"}", "a string never ends"),
    (b'{"a": 1' + b"2" * 5000 + b"}", "not JSON"),
    (b"", "not JSON"),
])
def test_the_json_bounds(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message) as refused:
        json_body.parse(body)
    assert refused.value.status == 400


def test_long_strings_are_set_aside_and_the_rest_parsed() -> None:
    long = "A" * (json_body.LONG_STRING_BYTES + 1)
    value = json_body.parse(json.dumps({"images": [long], "k": ['"x"', {"n": 1}], "short": "s"}).encode())
    assert isinstance(value["images"][0], LongString) and bytes(value["images"][0].raw) == long.encode()
    assert value["k"] == ['"x"', {"n": 1}] and value["short"] == "s"
    assert json_body.parse(b'"long-string-0-0"') == "long-string-0-0"  # a client's string is never a placeholder


def test_ollama_request_fields() -> None:
    image = base64.b64encode(SAMPLE.read_bytes()).decode()
    asked = ollama.parse_request(json.dumps({"model": "x" * 300, "images": [image]}).encode())
    assert asked.stream and len(asked.model) == ollama.MAX_MODEL_CHARS and asked.image.data == SAMPLE.read_bytes()
    for body, message in ((b'{"images": ["aGk="]}', "model is required"),
                          (b'{"model": "m", "images": []}', "exactly one image"),
                          (b'{"model": "m", "images": ["%%%"]}', "not base64"),
                          (b'{"model": "m", "stream": 1, "images": ["aGk="]}', "stream must be")):
        with pytest.raises(RequestError, match=message):
            ollama.parse_request(body)
