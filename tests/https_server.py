"""A local HTTPS file server for download tests, with a self-signed certificate made by openssl.

Clients trust it through ``SSL_CERT_FILE=<server.cert>``, which OpenSSL's default verify paths
(and so Python's default SSL context) honour; certificate checks stay on.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key), valid for a day."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make the test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Server:
    """What to serve and how to misbehave; every set holds file names (the URL path without '/')."""

    root: Path
    url: str = ""
    cert: Path = Path()
    requests: list[str] = field(default_factory=list)  # paths of GET requests, in order
    cut: set[str] = field(default_factory=set)  # full Content-Length, half the body, then close
    no_length: set[str] = field(default_factory=set)  # no Content-Length; the body ends at close
    not_found: set[str] = field(default_factory=set)  # 404 even if the file exists
    stall: set[str] = field(default_factory=set)  # headers, then silence until the server stops
    slow: set[str] = field(default_factory=set)  # body in 10 pieces, 0.1 s apart
    redirects: dict[str, str] = field(default_factory=dict)  # name -> Location of a 302
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean; `server.requests` is the record

        def do_GET(self) -> None:
            with server.lock:
                server.requests.append(self.path)
            name = self.path.lstrip("/")
            path = server.root / name
            if name in server.redirects:
                self._headers(302, {"Location": server.redirects[name], "Content-Length": "0"})
                return
            if name in server.not_found or not path.is_file():
                self._headers(404, {"Content-Length": "0"})
                return
            body = path.read_bytes()
            headers = {"Content-Type": "application/octet-stream"}
            if name not in server.no_length:
                headers["Content-Length"] = str(len(body))
            self._headers(200, headers)
            if name in server.stall:
                server.stopping.wait(10)
            elif name in server.cut:
                self.wfile.write(body[: len(body) // 2])
            elif name in server.slow:
                step = max(1, len(body) // 10)
                for start in range(0, len(body), step):
                    self.wfile.write(body[start : start + step])
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.wfile.write(body)
            if name in server.cut or name in server.no_length or name in server.stall:
                self.close_connection = True

        def _headers(self, code: int, headers: dict[str, str]) -> None:
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

    return Handler


@contextlib.contextmanager
def https_server(root: Path, workdir: Path) -> Iterator[Server]:
    """Serve ``root`` on https://127.0.0.1:<free port> until the block ends."""
    cert, key = make_certificate(workdir)
    server = Server(root=root, cert=cert)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.url = f"https://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
