"""The caption service for tests: the real program started with --serve in a subprocess, its URL read
from its ready line, and a small HTTP client (http.client) for requests of every shape."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from tests.conftest import SAMPLE, SCRIPT, cli_env
from tests.reference import imread

READY = re.compile(r"serving captions at (http://\S+)")


@dataclass
class Service:
    proc: subprocess.Popen[str]
    url: str
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM, then the exit status (killed, and the test fails, if it never exits)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start_service(models: Path, *flags: str | Path, cwd: Path, env: dict[str, str] | None = None,
                  address: str = "127.0.0.1:0", timeout: float = 120) -> Service:
    """The program serving on ``address`` with the test models, once it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--serve", address, "--model-dir", str(models), "--offline", "--onnx",
         *map(str, flags)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
        env=cli_env(env))
    lines: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def collect() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not found and (match := READY.search(line)):
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=collect, daemon=True).start()
    if not ready.wait(timeout) or not found:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the service never said it was ready: {''.join(lines)}")
    return Service(proc, found[0], lines)


@contextmanager
def serving(models: Path, *flags: str | Path, cwd: Path, env: dict[str, str] | None = None,
            quiet: bool = True) -> Iterator[Service]:
    """The service for the block, stopped at its end, which must be clean: exit status 0, no traceback,
    and (``quiet``) no ERROR line."""
    running = start_service(models, *flags, cwd=cwd, env=env)
    try:
        yield running
        assert running.stop() == 0, running.stderr
        assert "Traceback" not in running.stderr, running.stderr
        assert not quiet or "ERROR" not in running.stderr, running.stderr
    finally:
        stop_all(running)


def stop_all(*services: Service) -> None:
    for service in services:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(service: Service, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120) -> Answer:
    conn = http.client.HTTPConnection(service.host, service.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of file fields (name -> (file name, bytes)) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data) in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_photo(service: Service, path: Path, query: str = "", raw: bool = False,
               headers: dict[str, str] | None = None, timeout: float = 120) -> Answer:
    """POST /v1/captions with the photo as the form field 'image', or as the raw body."""
    data = path.read_bytes()
    if raw:
        kind = "image/png" if path.suffix == ".png" else "image/jpeg"
        body, extra = data, {"Content-Type": kind, "Content-Disposition": f'attachment; filename="{path.name}"'}
    else:
        body, kind = multipart({"image": (path.name, data)})
        extra = {"Content-Type": kind}
    return request(service, "POST", f"/v1/captions{'?' + query if query else ''}", body, {**extra, **(headers or {})},
                   timeout=timeout)


def make_photos(folder: Path, count: int = 12) -> list[Path]:
    """``count`` distinct photos (crops, zooms and flips of the sample), JPEG and PNG."""
    base = imread(SAMPLE)
    rng = np.random.default_rng(18)
    paths = []
    for i in range(count):
        h, w = base.shape[:2]
        top, left = int(rng.integers(0, h // 3)), int(rng.integers(0, w // 3))
        crop = base[top:top + h // 2 + int(rng.integers(0, h // 3)), left:left + w // 2 + int(rng.integers(0, w // 3))]
        crop = cv2.flip(crop, 1) if i % 3 == 1 else crop
        path = folder / f"photo_{i:02d}.{'png' if i % 2 else 'jpg'}"
        cv2.imwrite(str(path), crop)
        paths.append(path)
    return paths


