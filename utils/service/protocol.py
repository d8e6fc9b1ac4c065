"""uvicorn's h11 protocol with a time limit on each request's headers, and a bound on connections.

uvicorn closes a connection left idle between requests (its keep-alive time-out), but a client that
sends its headers a byte at a time (slowloris) keeps the connection for ever: every byte restarts
nothing and no time-out covers the headers. Here a connection waiting for a request's headers gets
``header_timeout_s`` to send all of them, and is closed after that. Bodies have their own deadline
where the application reads them (utils/service/uploads.py). The event loop serves the other
connections meanwhile either way: a slow client costs a socket, never a thread.

Past ``max_connections`` connections (or requests running) at once, a request gets the service's own 503,
JSON with ``nosniff`` like every other answer; uvicorn's own (``limit_concurrency``) is plain text.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from utils.service.middleware import NOSNIFF, LingeringClose, error_response


class ConnectionGate:
    """The application behind one connection, refusing a request while too many are open."""

    def __init__(self, app: ASGIApp, connections: set[Any], tasks: set[Any], limit: int) -> None:
        self.app = app
        self._connections = connections
        self._tasks = tasks  # this request's own task is among them
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if len(self._connections) > self._limit or len(self._tasks) > self._limit:
            response = error_response(503, f"the service has {self._limit} connections open, the most it "
                                           "takes; retry later", {"Connection": "close", "Retry-After": "1"})
            response.raw_headers.append(NOSNIFF)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout_s = 30.0  # set by ``service_protocol``
    max_connections = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Outermost, so that the gate's own 503 lingers too: a refused client reads its Retry-After.
        self.app = LingeringClose(ConnectionGate(self.app, self.connections, self.tasks, self.max_connections))

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_headers():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_headers():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


def service_protocol(header_timeout_s: float, max_connections: int) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``Config(http=...)``, with these limits."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,),
                {"header_timeout_s": header_timeout_s, "max_connections": max_connections})
