"""Running the service: listen, load the models, serve until Ctrl-C or SIGTERM, then stop gracefully.

The port is bound first (a port in use is one line at once), and uvicorn serves from its own thread
while the main thread loads the models, so /healthz answers 503 until they are loaded. Because uvicorn
runs outside the main thread it installs no signal handlers of its own: the program's (utils/support/stopping.py)
stay in charge. During loading a signal stops the program as it stops any other (exit status 128 + n);
once the service is up, the first signal makes uvicorn stop accepting connections and finish the
requests in flight (each bounded by the client and request time limits), and the program exits 0; a
second one gives up on them.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable

import uvicorn

from utils.engine.captioner import Captioner, CaptionerOptions
from utils.service.app import ServiceState, create_app
from utils.service.caption_queue import CaptionQueue
from utils.service.job import MAX_HEADER_BYTES, Address, ServiceOptions
from utils.service.protocol import service_protocol
from utils.support.errors import CaptionError
from utils.support.stopping import Interrupted, stop_requests

logger = logging.getLogger(__name__)

BACKLOG = 1024
KEEP_ALIVE_S = 5  # an idle connection between requests is closed after this (uvicorn's default)
_POLL_S = 0.1


def listen(address: Address) -> socket.socket:
    """A listening socket at ``address``; CaptionError (one line) if it cannot be had."""
    where = address.url().removeprefix("http://").rstrip("/")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CaptionError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise CaptionError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


def uvicorn_config(state: ServiceState) -> uvicorn.Config:
    options = state.options
    return uvicorn.Config(
        create_app(state), lifespan="off", log_config=None, access_log=options.access_log, loop="asyncio",
        http=service_protocol(options.client_timeout_s, options.max_connections), ws="none", proxy_headers=False,
        server_header=False, timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=int(options.shutdown_grace_s) + 1, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


class _ServerThread(threading.Thread):
    def __init__(self, server: uvicorn.Server, sock: socket.socket) -> None:
        super().__init__(name="http", daemon=True)
        self.server = server
        self.sock = sock
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # SystemExit included: uvicorn exits that way when it cannot start
            self.failure = exc


def give_large_blocks_back() -> None:
    """Have glibc's malloc map each block of 1 MB or more on its own, so that a request's body or image
    goes back to the system when it is freed. By default the threshold rises with every large block
    freed, up to 32 MB, and blocks under it stay in the heap: after a few 30 MB JSON bodies the service
    kept most of a gigabyte it no longer used. Elsewhere (musl, macOS, Windows) nothing changes."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 20)


def serve(options: ServiceOptions, captioner_options: CaptionerOptions,
          load: Callable[[CaptionerOptions], Captioner] = Captioner) -> int:
    """Serve until stopped; 0 after a graceful stop."""
    give_large_blocks_back()
    sock = listen(options.address)
    state = ServiceState(options)
    thread = _ServerThread(uvicorn.Server(uvicorn_config(state)), sock)
    thread.start()
    try:
        state.start(CaptionQueue(load(captioner_options), options.queue_size))
        url = options.address.url(sock.getsockname()[1])
        print(f"serving captions at {url}", file=sys.stderr, flush=True)
        with stop_requests() as stop:
            while thread.is_alive() and not stop.wait(_POLL_S):
                pass
            state.stopping = True
            thread.server.should_exit = True
            while thread.is_alive():
                if stop.insisted:
                    thread.server.force_exit = True
                thread.join(_POLL_S)
            state.close(stop)
            if stop.insisted:
                raise Interrupted(stop.signum)
    finally:
        state.stopping = True
        thread.server.should_exit = True
        thread.join(options.shutdown_grace_s)
        sock.close()
    if not stop.is_set():
        raise CaptionError(f"the HTTP server stopped: {thread.failure!r:.200}")
    return 0
