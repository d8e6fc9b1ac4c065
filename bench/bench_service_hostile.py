#!/usr/bin/env python3
"""The caption service under hostile load, on the full-size benchmark models (docs/service.md#limits).

    python3 bench/bench_service_hostile.py [--models bench/models] [--rounds 3]

1. An ordinary photo's latency on an idle service, and sent right after four decompression bombs (1 MB
   PNGs of 134 megapixels at 16-bit RGBA, within every bound); beside them, one bomb's decode and
   preprocess in this process, and one caption's model time, the two that bound the photo's wait.
2. /healthz latency on an idle service, and while four clients send large JSON bodies to /api/generate:
   31 MB of 2.5 million small keys (refused by the shape bound) and a 25 MB random upload in base64 (a
   legal body: set aside unparsed, its base64 decoded in pieces, refused as not an image).
The service's resident memory before and after the JSON rounds.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_service import Endpoint, service  # noqa: E402
from bench.common import ensure_models, timed_ms  # noqa: E402
from utils.service.decode_lanes import decode  # noqa: E402


def send(endpoint: Endpoint, path: str, body: bytes, kind: str) -> tuple[int, float]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": kind})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, time.perf_counter() - start


def health(endpoint: Endpoint) -> float:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=600)
    start = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    conn.close()
    return time.perf_counter() - start


def pending(endpoint: Endpoint) -> int:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=60)
    conn.request("GET", "/readyz")
    value = int(json.loads(conn.getresponse().read())["pending"])
    conn.close()
    return value


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def behind_bombs(endpoint: Endpoint, photo: bytes, bomb: bytes) -> float:
    with ThreadPoolExecutor(4) as pool:
        bombs = [pool.submit(send, endpoint, "/v1/captions", bomb, "image/png") for _ in range(4)]
        while pending(endpoint) < 4:
            time.sleep(0.01)
        status, seconds = send(endpoint, "/v1/captions", photo, "image/jpeg")
        assert status == 200 and all(b.result()[0] == 200 for b in bombs)
    return seconds


def health_during(endpoint: Endpoint, body: bytes) -> list[float]:
    seen: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            seen.append(health(endpoint))
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    with ThreadPoolExecutor(4) as pool:
        statuses = [f.result()[0] for f in [pool.submit(send, endpoint, "/api/generate", body, "application/json")
                                           for _ in range(4)]]
    done.set()
    prober.join()
    assert all(status in (400, 422) for status in statuses), statuses
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_models(args.models)
    photo = (ROOT / "samples" / "rocket.jpg").read_bytes()
    ok, encoded = cv2.imencode(".png", np.zeros((11585, 11585, 4), np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    bomb = encoded.tobytes()
    decode_s = min(timed_ms(lambda: decode(bomb, "bomb")) for _ in range(2)) / 1e3
    keys = b"{" + b",".join(b'"k%d":1' % i for i in range(2_500_000)) + b"}"
    upload = json.dumps({"model": "m", "images": [base64.b64encode(os.urandom(25 << 20)).decode()]}).encode()
    print(f"CPU: {os.cpu_count()} cores; bomb: {len(bomb) / 1e6:.1f} MB PNG, decode + preprocess {decode_s:.2f} s "
          "in this process")
    with service(args.models, "fp32", 2, 5) as endpoint:
        idle = [send(endpoint, "/v1/captions", photo, "image/jpeg")[1] for _ in range(args.rounds + 1)][1:]
        loaded = [behind_bombs(endpoint, photo, bomb) for _ in range(args.rounds)]
        print(f"ordinary photo, idle: median {statistics.median(idle):.2f} s; behind four bombs: median "
              f"{statistics.median(loaded):.2f} s (max {max(loaded):.2f}); ratio "
              f"{statistics.median(loaded) / statistics.median(idle):.2f}")
        quiet = [health(endpoint) for _ in range(50)]
        before = rss_mb(endpoint.pid)
        for name, body in (("2.5 million keys, 31 MB", keys), ("25 MB upload in base64, 33 MB", upload)):
            seen = health_during(endpoint, body)
            print(f"/healthz during four bodies of {name}: median {1e3 * statistics.median(seen):.1f} ms, max "
                  f"{1e3 * max(seen):.1f} ms over {len(seen)} probes (idle: median "
                  f"{1e3 * statistics.median(quiet):.1f} ms, max {1e3 * max(quiet):.1f} ms)")
        print(f"service memory: {before:.0f} MB before the JSON rounds, {rss_mb(endpoint.pid):.0f} MB after")


if __name__ == "__main__":
    main()
