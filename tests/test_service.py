"""The caption service (--serve; docs/service.md): the real program serving on a free loopback port with
the test models, driven over HTTP: captions identical to the command line's under concurrent clients,
every limit, the token, CORS, a graceful stop, the Ollama-compatible endpoint with Ollama's own client,
and the page's files."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ollama
import pytest

from tests.conftest import ROOT, SAMPLE, RunCli, cli_env
from tests.service_helpers import (
    Service,
    make_photos,
    multipart,
    post_photo,
    request,
    serving,
    start_service,
    stop_all,
)
from tests.test_hostile import png_claiming

# Options that make the test models take seconds for one caption (100 groups decoded one after another).
SLOW = "beam_size=1000&max_length=100&group_size=100"
TOKEN = "s3cret-Token_42"


@pytest.fixture(scope="module")
def twelve(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_photos(tmp_path_factory.mktemp("twelve"))


@pytest.fixture(scope="module")
def service(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with its defaults (beam 5, 2 workers here), shared by the tests that do not stop it."""
    with serving(served_models, cwd=tmp_path_factory.mktemp("cwd")) as running:
        yield running


def cli_records(run_cli: RunCli, models: Path, photos: list[Path], *flags: str) -> dict[str, dict[str, Any]]:
    proc = run_cli("-i", *photos, "--json", "--model-dir", models, "--offline", "--onnx", *flags)
    assert proc.returncode == 0, proc.stderr
    return {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.splitlines())}


def same_record(served: dict[str, Any], cli: dict[str, Any], name: str) -> None:
    """The service's answer is the --json record: same keys (but the annotated copy's, which -s would
    fill), same caption and words, its input the upload's name."""
    assert served["input"] == name
    assert served.keys() == cli.keys() - {"output"}
    assert served["timings"].keys() == cli["timings"].keys() - {"save"}
    assert (served["caption"], served["indices"], served["model"], served["backend"]) == \
        (cli["caption"], cli["indices"], cli["model"], cli["backend"])
    assert served["confidence"] == pytest.approx(cli["confidence"], rel=1e-5)


def test_concurrent_clients_get_exactly_the_clis_captions(service: Service, run_cli: RunCli, served_models: Path,
                                                          twelve: list[Path]) -> None:
    """8 clients x 25 requests over 12 photos, half with their own options, as forms and as raw bodies."""
    other = "beam_size=2&remove_bad_endings=true&max_length=6"
    expected = {"": cli_records(run_cli, served_models, twelve),
                other: cli_records(run_cli, served_models, twelve, "--beam-size", "2", "--remove-bad-endings",
                                   "--max-length", "6")}
    assert len({r["caption"] for r in expected[""].values()}) > 3  # the photos are told apart

    def client(k: int) -> list[tuple[str, str, Any]]:
        out = []
        for i in range(25):
            photo = twelve[(k * 7 + i) % len(twelve)]
            query = other if (k + i) % 2 else ""
            answer = post_photo(service, photo, query, raw=bool(i % 3 == 0))
            assert answer.status == 200, answer.body
            out.append((photo.name, query, answer.json()))
        return out

    with ThreadPoolExecutor(8) as pool:
        answers = [a for done in pool.map(client, range(8)) for a in done]
    assert len(answers) == 200
    for name, query, record in answers:
        same_record(record, expected[query][name], name)


def test_health_readiness_page_and_openapi(service: Service) -> None:
    assert request(service, "GET", "/healthz").json() == {"status": "ok"}
    ready = request(service, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready" and ready.json()["workers"] == 2
    page = request(service, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    files = [page.body] + [request(service, "GET", f"/static/{name}").body for name in ("app.js", "style.css")]
    assert all(files) and b"Copy alt text" in page.body
    for text in files:  # self-contained: nothing is loaded from anywhere else
        assert b"http://" not in text and b"https://" not in text and b'src="//' not in text
    spec = request(service, "GET", "/openapi.json").json()
    captions = spec["paths"]["/v1/captions"]["post"]
    assert {p["name"] for p in captions["parameters"]} >= {"beam_size", "nbest", "max_length", "sample_method",
                                                           "temperature", "seed"}
    assert set(captions["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert "/api/generate" in spec["paths"]
    for path in ("/docs", "/redoc"):  # Swagger UI and ReDoc would load their scripts from a CDN
        missing = request(service, "GET", path)
        assert missing.status == 404 and missing.json() == {"error": "Not Found"}


def test_bad_requests_get_one_line_json_errors(service: Service, tmp_path: Path) -> None:
    def error(answer: Any, status: int, *words: str) -> None:
        assert answer.status == status, answer.body
        message = answer.json()["error"]
        assert "\n" not in message and all(w in message for w in words), message

    error(request(service, "POST", "/v1/captions", b"hello", {"Content-Type": "text/plain"}), 415, "text/plain")
    error(request(service, "POST", "/v1/captions", b"hello"), 415, "no Content-Type")
    garbage = tmp_path / "notes.png"
    garbage.write_bytes(b"this is not a photo" * 10)
    error(post_photo(service, garbage), 422, "notes.png is not an image OpenCV can decode")
    error(post_photo(service, garbage, raw=True), 422, "notes.png is not an image OpenCV can decode")
    bomb = png_claiming(tmp_path / "bomb.png", 50000, 50000)
    error(post_photo(service, bomb), 422, "bomb.png is larger than 134 megapixels")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    error(post_photo(service, empty, raw=True), 422, "empty.jpg is an empty file")
    body, kind = multipart({"photo": ("cat.png", SAMPLE.read_bytes())})
    error(request(service, "POST", "/v1/captions", body, {"Content-Type": kind}), 400, "no field 'image'")
    error(request(service, "POST", "/v1/captions", b"--x\r\nbroken", {"Content-Type": "multipart/form-data"}), 400,
          "boundary")
    for query, words in [("beam_size=0", ["beam size must be between 1 and 1000, got 0"]),
                         ("beam_size=five", ["beam_size: must be a whole number"]),
                         ("temperature=nan", ["temperature: must be a finite number"]),
                         ("sample_method=top0", ["sample method 'top0'"]),
                         ("nbest=9", ["9 best captions asked for"]),
                         ("path=/etc/passwd", ["unknown option 'path'"]),
                         ("seed=1&seed=2", ["seed is given twice"])]:
        error(post_photo(service, SAMPLE, query), 422, *words)
    error(request(service, "GET", "/v1/captions"), 405)
    error(request(service, "GET", "/nothing"), 404, "Not Found")
    assert request(service, "GET", "/healthz").status == 200  # nothing else disturbed


def test_a_request_never_names_a_server_side_file(service: Service, tmp_path: Path) -> None:
    """A file name is only echoed; a path where an image belongs is taken for (bad) image bytes."""
    body, kind = multipart({"image": ("../../../etc/passwd", SAMPLE.read_bytes())})
    answer = request(service, "POST", "/v1/captions", body, {"Content-Type": kind})
    assert answer.status == 200 and answer.json()["input"] == "../../../etc/passwd"
    answer = request(service, "POST", "/v1/captions", str(SAMPLE).encode(), {"Content-Type": "image/png"})
    assert answer.status == 422 and "is not an image OpenCV can decode" in answer.json()["error"]
    asked = {"model": "fc_nsc", "images": [str(SAMPLE)]}
    answer = request(service, "POST", "/api/generate", json.dumps(asked).encode(), {"Content-Type": "application/json"})
    assert answer.status == 400 and "not base64" in answer.json()["error"]


def test_ollama_client_gets_the_caption(service: Service, run_cli: RunCli, served_models: Path,
                                        twelve: list[Path]) -> None:
    """Ollama's own Python client, pointed at the service, as a photo manager's Ollama engine would be."""
    expected = cli_records(run_cli, served_models, twelve[:3])
    client = ollama.Client(host=service.url.rstrip("/"))
    for photo in twelve[:3]:
        answer = client.generate(model="fc_nsc", prompt="Describe this photo.", images=[photo.read_bytes()])
        assert answer.response == expected[photo.name]["caption"]
        assert answer.done and answer.done_reason == "stop" and answer.model == "fc_nsc"
        assert answer.eval_count == len(expected[photo.name]["indices"]) and (answer.total_duration or 0) > 0
    pieces = list(client.generate(model="fc_nsc", prompt="Describe", images=[twelve[0].read_bytes()], stream=True))
    assert "".join(p.response or "" for p in pieces) == expected[twelve[0].name]["caption"]
    assert [p.done for p in pieces] == [False, True] and pieces[-1].done_reason == "stop"
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="fc_nsc", prompt="Describe", images=[b"not a photo"])
    assert refused.value.status_code == 422 and "images[0] is not an image" in refused.value.error

    # The wire format: Ollama streams unless "stream" is false, one JSON object per line.
    image = base64.b64encode(twelve[1].read_bytes()).decode()
    raw = request(service, "POST", "/api/generate", json.dumps({"model": "llava", "prompt": "Describe",
                                                               "images": [image]}).encode(),
                  {"Content-Type": "application/json"})
    assert raw.status == 200 and raw.headers["content-type"] == "application/x-ndjson"
    first, last = [json.loads(line) for line in raw.body.decode().splitlines()]
    assert first["response"] == expected[twelve[1].name]["caption"] and first["done"] is False
    assert first["model"] == last["model"] == "llava" and last["done"] is True and last["response"] == ""
    assert {"created_at", "total_duration", "eval_count", "done_reason"} <= last.keys()
    for bad, words in [({"model": "x", "images": []}, "exactly one image"),
                       ({"images": [image]}, "model is required"),
                       ({"model": "x", "images": [image, image]}, "exactly one image"),
                       ({"model": "x", "images": [image], "stream": "yes"}, "stream must be")]:
        refusal = request(service, "POST", "/api/generate", json.dumps(bad).encode(),
                          {"Content-Type": "application/json"})
        assert refusal.status == 400 and words in refusal.json()["error"], refusal.body


# Services of their own: limits set low enough to reach, and stops
# ---------------------------------------------------------------------------------------------


def raw_exchange(service: Service, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` on a fresh connection and read the answer until the server closes it."""
    with socket.create_connection((service.host, service.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_uploads_over_the_limit_get_413_without_being_read(served_models: Path, tmp_path: Path) -> None:
    running = start_service(served_models, "--max-upload-mb", "1", cwd=tmp_path)
    try:
        # Only the headers are sent: the answer comes without waiting for the 2 MB they announce.
        answer = raw_exchange(running, b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                       b"Content-Length: 2000000\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
        assert "over the 1 MB limit" in json.loads(body)["error"]
        # Without a length (chunked), it is cut off once it passes the limit.
        chunk = b"\xff" * 65536
        chunked = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
        answer = raw_exchange(running, b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        assert answer.startswith(b"HTTP/1.1 413")
        # A client sending a body far past what the sockets buffer still reads its 413 (a lingering close:
        # the server drops the rest before closing), rather than "broken pipe" or "connection reset".
        big = tmp_path / "big.png"
        big.write_bytes(SAMPLE.read_bytes() + b"\0" * (16 << 20))
        for raw in (False, True, False):
            refused = post_photo(running, big, raw=raw)
            assert refused.status == 413 and "over the 1 MB limit" in refused.json()["error"]
        assert post_photo(running, SAMPLE).status == 200  # nothing else disturbed
        assert running.stop() == 0
    finally:
        stop_all(running)


def wait_until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(served_models: Path, tmp_path: Path) -> None:
    running = start_service(served_models, "--workers", "1", "--queue-size", "1", cwd=tmp_path)
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post_photo, running, SAMPLE, SLOW)
            wait_until(lambda: request(running, "GET", "/readyz").json().get("pending") == 1)
            refused = post_photo(running, SAMPLE)
            assert refused.status == 503 and int(refused.headers["retry-after"]) >= 1
            assert "--queue-size" in refused.json()["error"]
            assert slow.result().status == 200  # the request in the queue is not disturbed
        assert post_photo(running, SAMPLE).status == 200
        assert running.stop() == 0
    finally:
        stop_all(running)


def test_a_request_over_its_time_limit_gets_504_and_the_service_goes_on(served_models: Path, tmp_path: Path) -> None:
    running = start_service(served_models, "--workers", "1", "--request-timeout", "0.5", cwd=tmp_path)
    try:
        late = post_photo(running, SAMPLE, SLOW)
        assert late.status == 504 and "--request-timeout" in late.json()["error"]
        wait_until(lambda: request(running, "GET", "/readyz").json().get("pending") == 0)
        assert post_photo(running, SAMPLE, "beam_size=1").status == 200
        assert running.stop() == 0
    finally:
        stop_all(running)


def test_slow_clients_do_not_block_others(served_models: Path, tmp_path: Path) -> None:
    """25 connections send their headers a byte at a time (slowloris), 25 send a body that trickles in:
    a normal request is answered meanwhile, and each slow one is cut off at the client time limit."""
    running = start_service(served_models, "--client-timeout", "3", cwd=tmp_path)
    slow: list[socket.socket] = []
    try:
        for i in range(50):
            sock = socket.create_connection((running.host, running.port), timeout=60)
            if i % 2:
                sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                             b"Content-Length: 100000\r\n\r\n" + SAMPLE.read_bytes()[:1000])
            else:
                sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        answer = post_photo(running, SAMPLE, timeout=30)
        assert answer.status == 200 and answer.json()["caption"]
        closed = [False] * len(slow)
        answers: dict[int, bytes] = {}

        def trickle() -> None:
            for _ in range(200):  # at most 20 s
                for i, sock in enumerate(slow):
                    if closed[i]:
                        continue
                    try:
                        sock.sendall(b"X" if i % 2 == 0 else b"\x00")
                    except OSError:
                        closed[i] = True
                if all(closed):
                    return
                time.sleep(0.1)

        sender = threading.Thread(target=trickle)
        sender.start()
        for i, sock in enumerate(slow):
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError as exc:  # not closed by the server within the socket's 60 s
                data = f"not closed: {exc}".encode()
            answers[i] = data
            closed[i] = True
        sender.join()
        assert all(answers[i] == b"" for i in range(0, 50, 2)), answers[0]  # slowloris: closed at the time limit
        assert all(answers[i].startswith(b"HTTP/1.1 408") for i in range(1, 50, 2)), answers[1]
        assert "--client-timeout" in json.loads(answers[1].partition(b"\r\n\r\n")[2])["error"]
        assert running.stop() == 0
    finally:
        for sock in slow:
            sock.close()
        stop_all(running)


def test_token_cors_and_their_order(served_models: Path, tmp_path: Path) -> None:
    """With a token, every route but /healthz needs it; a CORS preflight (which carries none) is still
    answered for the origin named, and only for it."""
    running = start_service(served_models, "--cors-origin", "http://photos.test", cwd=tmp_path,
                            env={"IMAGE_CAPTIONING_TOKEN": TOKEN})
    try:
        assert request(running, "GET", "/healthz").status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}):
            answer = post_photo(running, SAMPLE, headers=headers)
            assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer TOKEN" in answer.json()["error"]
        for path in ("/", "/readyz", "/openapi.json", "/static/app.js"):
            assert request(running, "GET", path).status == 401
        big = tmp_path / "big.jpg"  # refused before its body is read, and answered all the same
        big.write_bytes(SAMPLE.read_bytes() * (16 * 1024 * 1024 // SAMPLE.stat().st_size))
        assert post_photo(running, big, raw=True).status == 401
        good = post_photo(running, SAMPLE, headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 200 and good.json()["caption"]
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = request(running, "OPTIONS", "/v1/captions", headers={"Origin": "http://photos.test", **preflight})
        assert allowed.status == 200 and allowed.headers["access-control-allow-origin"] == "http://photos.test"
        other = request(running, "OPTIONS", "/v1/captions", headers={"Origin": "http://evil.test", **preflight})
        assert "access-control-allow-origin" not in other.headers
        simple = post_photo(running, SAMPLE, headers={"Authorization": f"Bearer {TOKEN}", "Origin": "http://photos.test"})
        assert simple.headers["access-control-allow-origin"] == "http://photos.test"
        assert running.stop() == 0
    finally:
        stop_all(running)


def test_cors_is_off_unless_asked(service: Service) -> None:
    preflight = {"Origin": "http://photos.test", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in request(service, "OPTIONS", "/v1/captions", headers=preflight).headers
    answer = post_photo(service, SAMPLE, headers={"Origin": "http://photos.test"})
    assert answer.status == 200 and "access-control-allow-origin" not in answer.headers


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(served_models: Path, tmp_path: Path) -> None:
    running = start_service(served_models, "--workers", "2", cwd=tmp_path)
    try:
        query = "beam_size=1000&max_length=100&group_size=20"
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(post_photo, running, SAMPLE, query) for _ in range(4)]
            wait_until(lambda: request(running, "GET", "/readyz").json().get("pending") == 4)
            running.proc.send_signal(signal.SIGTERM)
            assert running.proc.wait(120) == 0, running.stderr
            results = [a.result() for a in answers]
        assert [r.status for r in results] == [200] * 4 and all(r.json()["caption"] for r in results)
        with pytest.raises(OSError):  # no longer listening
            socket.create_connection((running.host, running.port), timeout=5).close()
        assert "Traceback" not in running.stderr and "ERROR" not in running.stderr, running.stderr
    finally:
        stop_all(running)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LOADING = """
import sys, time
from pathlib import Path
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.engine.runtime import RuntimeOptions
from utils.service.job import Address, ServiceOptions
from utils.service.run import serve
from utils.support.stopping import Interrupts, program_work

def load(options):
    while not Path(sys.argv[3]).exists():  # the test says when the load may finish
        time.sleep(0.02)
    return Captioner(options)

Interrupts(mode="exit").install_for_program()
with program_work():
    sys.exit(serve(ServiceOptions(address=Address("127.0.0.1", int(sys.argv[2]))),
                   CaptionerOptions(model_dir=Path(sys.argv[1]), offline=True, progress=False,
                                    runtime=RuntimeOptions(backend="onnxruntime")), load=load))
"""


def test_healthz_says_503_until_the_models_are_loaded(served_models: Path, tmp_path: Path) -> None:
    port, flag = free_port(), tmp_path / "loaded"
    proc = subprocess.Popen([sys.executable, "-c", LOADING, str(served_models), str(port), str(flag)], cwd=ROOT,
                            env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    running = Service(proc, f"http://127.0.0.1:{port}/")
    try:
        wait_until(lambda: _answers(running))
        loading = request(running, "GET", "/healthz")
        assert loading.status == 503 and loading.json() == {"status": "loading"}
        refused = post_photo(running, SAMPLE)
        assert refused.status == 503 and "loading" in refused.json()["error"] and refused.headers["retry-after"]
        flag.touch()
        wait_until(lambda: request(running, "GET", "/healthz").status == 200)
        assert post_photo(running, SAMPLE).status == 200
        assert running.stop() == 0
        assert proc.stderr is not None and "serving captions at http://127.0.0.1:" in proc.stderr.read()
    finally:
        stop_all(running)


def _answers(service: Service) -> bool:
    try:
        request(service, "GET", "/healthz", timeout=5)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("flags", "message"), [
    (["--serve", "0.0.0.0:8000"], "--serve 0.0.0.0 is reachable from other machines: set a token"),
    (["--serve", "[::]:8000"], "--serve :: is reachable from other machines"),
    (["--serve", "example.com:8000"], "--allow-anonymous"),
    (["--serve", "99999"], "must be [HOST:]PORT"),
    (["--serve", "8000", "-i", "x.jpg"], "--serve cannot be used with -i/--input"),
    (["--serve", "8000", "-v", "0"], "--serve cannot be used with -v/--video"),
    (["--serve", "8000", "-s", "out", "--json", "-b"], "-s/--savepath, --format/--json, -b/--benchmark"),
    (["--serve", "8000", "--write-metadata"], "--write-metadata"),
    (["--serve", "8000", "--captions-file", "c.csv"], "--captions-file"),
    (["--serve", "8000", "--references", "refs.json"], "--serve cannot be used with --references"),
    (["--serve", "8000", "--score-captions", "c.jsonl", "--references", "r.json"], "--score-captions"),
    (["--serve", "8000", "--resume"], "--serve cannot be used with --resume"),
    (["--serve", "8000", "--ray"], "--serve cannot be used with --ray"),
    (["--serve", "8000", "--token", "two words"], "--token: the token must be printable ASCII"),
    (["--serve", "8000", "--cors-origin", "photos.test"], "--cors-origin: 'photos.test' is not an origin"),
    (["--token", "x", "--queue-size", "3"], "--token, --queue-size only apply to --serve"),
    (["--serve", "8000", "--max-upload-mb", "0"], "--max-upload-mb"),
    (["--serve", "8000", "--request-timeout", "nan"], "--request-timeout"),
])
def test_usage_errors(run_cli: RunCli, flags: list[str], message: str) -> None:
    proc = run_cli(*flags)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1


def test_a_port_in_use_is_one_line(run_cli: RunCli, models: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_cli("--serve", f"127.0.0.1:{taken.getsockname()[1]}", "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 1 and proc.stderr.startswith("ERROR: cannot listen on 127.0.0.1:")
    assert len(proc.stderr.splitlines()) == 1
