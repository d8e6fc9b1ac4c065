#!/usr/bin/env python3
"""The caption service against the command line, on the same full-size benchmark models, photos,
precision, workers and decoding options.

    python3 bench/bench_service.py [--models bench/models] [--photos 24] [--rounds 2] [--clients 8]
                                   [--precision fp32 int8] [--workers N] [--beam-size 1] [--single 20]

Throughput: the service (the real program with --serve, in its own process) answering --clients
concurrent clients, each posting the photos in turn as raw bodies over a kept-alive connection, in
requests per second; against the command line's image mode on the same folder (`-i folder --json`, run
in this process with its models loaded once, so neither side pays for loading), in photos per second.
Rounds alternate between the two so that drift in machine load favours neither; each service round is
run through each API (raw upload to /v1/captions, Ollama's /api/generate, OpenAI's /v1/chat/completions,
the last two with the photo's base64 in JSON), reported as a ratio of /v1/captions. Latency: single requests
one at a time on an idle service (p50, p99), against the command line's own time for one photo (`-i
photo.jpg --json`, models loaded, which gives that photo one worker with every core), and the same
single requests through each API: the raw upload (/v1/captions), Ollama's /api/generate and OpenAI's
/v1/chat/completions (the photo's base64 in JSON).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models  # noqa: E402
from bench.photos import make_photos  # noqa: E402
from utils.decoding.options import DecodingOptions  # noqa: E402
from utils.engine.captioner import Captioner, CaptionerOptions, available_cores, default_workers  # noqa: E402
from utils.engine.runtime import RuntimeOptions  # noqa: E402
from utils.images.job import ImageJob  # noqa: E402
from utils.images.run import run_images  # noqa: E402
from utils.quantization import PRECISIONS, Precision  # noqa: E402

READY = re.compile(r"serving captions at http://([\d.]+):(\d+)/")




@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    pid: int = 0  # the service's process


@contextmanager
def service(models: Path, precision: Precision, workers: int, beam_size: int) -> Iterator[Endpoint]:
    """The program serving the models on a free loopback port, until the block ends (SIGTERM)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "image_captioning_pytorch.py"), "--serve", "127.0.0.1:0", "--model-dir",
         str(models), "--offline", "--onnx", "--precision", precision, "--workers", str(workers), "--beam-size",
         str(beam_size), "--queue-size", "64"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if match := READY.search(line):
                break
            print(f"  service: {line.rstrip()}", file=sys.stderr)
        else:
            raise SystemExit(f"the service did not start (exit status {proc.wait()})")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its stderr drained
        yield Endpoint(match.group(1), int(match.group(2)), proc.pid)
    finally:
        proc.terminate()
        proc.wait(120)


APIS = ("/v1/captions", "/api/generate", "/v1/chat/completions")
Request = tuple[str, bytes, dict[str, str]]  # path, body, headers


def api_request(api: str, photo: bytes) -> Request:
    """``photo``'s request to ``api`` (one of APIS), as its clients send it."""
    if api == "/v1/captions":
        return api, photo, {"Content-Type": "image/jpeg"}
    encoded = base64.b64encode(photo).decode()
    if api == "/api/generate":
        body: dict[str, object] = {"model": "fc_nsc", "stream": False, "images": [encoded]}
    else:
        body = {"model": "fc_nsc", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encoded}"}}]}]}
    return api, json.dumps(body).encode(), {"Content-Type": "application/json"}


def post(conn: http.client.HTTPConnection, asked: Request) -> None:
    path, body, headers = asked
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        raise SystemExit(f"the service answered {response.status}: {answer[:200]!r}")


def service_round(endpoint: Endpoint, photos: list[bytes], clients: int, api: str = APIS[0]) -> float:
    """Seconds for ``clients`` clients to get every photo captioned once between them, through ``api``."""
    asked = [api_request(api, photo) for photo in photos]
    turns = iter(range(len(photos)))
    lock = threading.Lock()
    conns = [http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=600) for _ in range(clients)]
    for conn in conns:  # connected before the clock starts, as a client with a pool would be
        conn.connect()

    def client(conn: http.client.HTTPConnection) -> None:
        while True:
            with lock:
                index = next(turns, None)
            if index is None:
                return
            post(conn, asked[index])

    threads = [threading.Thread(target=client, args=(c,)) for c in conns]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return wall


def cli_round(captioner: Captioner, inputs: list[str], decoding: DecodingOptions) -> float:
    """Seconds for image mode (`-i ... --json`) on ``inputs``, models already loaded."""
    sink = io.StringIO()
    start = time.perf_counter()
    status = run_images(ImageJob(inputs=inputs, format="json", decoding=decoding), captioner.options, out=sink,
                        load=lambda options: captioner if options.workers == captioner.workers else Captioner(options))
    wall = time.perf_counter() - start
    assert status == 0, sink.getvalue()
    return wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def single_latencies(endpoint: Endpoint, photos: list[bytes], count: int, api: str = APIS[0]) -> list[float]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=600)
    asked = [api_request(api, photo) for photo in photos]  # built before the clock starts, as a client would
    out = []
    for i in range(count):
        start = time.perf_counter()
        post(conn, asked[i % len(asked)])
        out.append(time.perf_counter() - start)
    conn.close()
    return out


def load(models: Path, precision: Precision, workers: int) -> Captioner:
    return Captioner(CaptionerOptions(model_dir=models, offline=True, progress=False, precision=precision,
                                      runtime=RuntimeOptions(backend="onnxruntime"), workers=workers))


def measure(args: argparse.Namespace, precision: Precision, paths: list[Path]) -> None:
    decoding = DecodingOptions(beam_size=args.beam_size)
    photos = [p.read_bytes() for p in paths]
    names = [str(p) for p in paths]
    n = len(paths)
    folder = load(args.models, precision, args.workers)
    one = load(args.models, precision, 1)
    cli_round(folder, names, decoding)  # warm-up: the file cache, every worker's sessions
    with service(args.models, precision, args.workers, args.beam_size) as endpoint:
        service_round(endpoint, photos, args.clients)  # warm-up
        cli_s: list[float] = []
        served_s: dict[str, list[float]] = {api: [] for api in APIS}
        for round_ in range(args.rounds):
            if round_ % 2 == 0:
                cli_s.append(cli_round(folder, names, decoding))
            for api in APIS if round_ % 2 == 0 else APIS[::-1]:
                served_s[api].append(service_round(endpoint, photos, args.clients, api))
            if round_ % 2 == 1:
                cli_s.append(cli_round(folder, names, decoding))
        by_api = {api: single_latencies(endpoint, photos, args.single, api) for api in APIS}
        idle = by_api[APIS[0]]
    with service(args.models, precision, 1, args.beam_size) as endpoint:
        idle_one = single_latencies(endpoint, photos, args.single)
    cli_one = [cli_round(one, [names[i % n]], decoding) for i in range(args.single)]
    cli_rate = n / statistics.median(cli_s)
    rates = {api: n / statistics.median(times) for api, times in served_s.items()}
    served_rate = rates[APIS[0]]
    print(f"{precision}, --workers {args.workers}, beam size {args.beam_size}, {args.clients} clients:")
    print(f"  command line -i folder: {cli_rate:.2f} photos/s; service: {served_rate:.2f} requests/s; "
          f"service/command line {served_rate / cli_rate:.3f}")
    print("  through the other APIs, against /v1/captions: " + ", ".join(
        f"{api} {rates[api]:.2f} requests/s ({rates[api] / served_rate:.3f})" for api in APIS[1:]))
    print(f"  one request at a time, idle service (--workers {args.workers}): p50 "
          f"{1e3 * percentile(idle, 0.5):.0f} ms, p99 {1e3 * percentile(idle, 0.99):.0f} ms; (--workers 1): p50 "
          f"{1e3 * percentile(idle_one, 0.5):.0f} ms, p99 {1e3 * percentile(idle_one, 0.99):.0f} ms")
    print("  the same through each API: " + ", ".join(
        f"{api} p50 {1e3 * percentile(times, 0.5):.0f} ms" for api, times in by_api.items()))
    print(f"  command line, one photo (one worker, every core): p50 {1e3 * percentile(cli_one, 0.5):.0f} ms, "
          f"p99 {1e3 * percentile(cli_one, 0.99):.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--beam-size", type=int, default=1, help="1 (default): greedy, the published graphs")
    parser.add_argument("--single", type=int, default=20, help="single requests timed for the latency")
    args = parser.parse_args()
    ensure_models(args.models)
    print(f"{args.photos} photos 640x480, {args.rounds} rounds, medians; ONNX Runtime {ort.__version__}, "
          f"{available_cores()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.photos)
        for precision in args.precision:
            measure(args, precision, paths)


if __name__ == "__main__":
    main()
