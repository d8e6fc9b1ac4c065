"""The service's pure-ASGI layers, around every route: the token, the header limits, one clean answer
for requests cut short by a forced stop, ``X-Content-Type-Options: nosniff`` on every answer, and a
lingering close for answers that refuse a body before it is in. Each
refusal is the service's one JSON shape, ``{"error": "one line"}``; the token's, on the OpenAI-compatible
paths, OpenAI's (its clients read ``error.message``)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.service import openai
from utils.service.job import MAX_HEADER_BYTES, MAX_HEADERS

OPEN_PATHS = frozenset({"/healthz"})  # answered without the token: a liveness probe has none
NOSNIFF = (b"x-content-type-options", b"nosniff")
CLOSE = (b"connection", b"close")
# A refused body is read and dropped for at most this long, this many bytes, or this long without a byte
# (nginx's lingering_time and lingering_timeout are 30 s and 5 s; a photo's upload is shorter).
LINGER_S = 10.0
LINGER_IDLE_S = 2.0
LINGER_BYTES = 64 * 1024 * 1024


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BearerToken:
    """Every request but OPEN_PATHS needs ``Authorization: Bearer TOKEN``; compared in constant time
    (digests of equal length, so not even the length leaks). Pure ASGI, so a refused request's body is
    never read."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode("ascii")).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": "Bearer", "Connection": "close"}
        if openai.is_openai_path(scope["path"]):  # OpenAI's clients: the token is their API key
            response = openai.error_response(401, "the API key is missing or wrong: this service's token "
                                                  "(--token) is its API key ('Authorization: Bearer TOKEN')", headers)
        else:
            response = error_response(401, "this service needs a token: send 'Authorization: Bearer TOKEN'", headers)
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) != 1:
            return False
        scheme, _, credentials = given[0].partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(credentials.strip()).digest(), self._digest)


class HeaderLimit:
    """At most MAX_HEADERS header fields and MAX_HEADER_BYTES of request line and headers together. h11
    bounds only headers still arriving; these bound those that came in one piece."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + sum(
                len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
                response = error_response(431, f"the request's headers are over {MAX_HEADERS} fields or "
                                               f"{MAX_HEADER_BYTES // 1024} KiB", {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class StopAnswer:
    """A request still running when a second Ctrl-C or SIGTERM forces the service to stop is cancelled:
    its client gets a 503 saying so (or, if its answer had begun, a closed connection), and the server
    logs nothing for it (uvicorn would log a traceback for each)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            if not started:
                response = error_response(503, "the service was stopped before this request was answered",
                                          {"Connection": "close"})
                await response(scope, receive, send)


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every answer: a browser takes each as the type it says."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), NOSNIFF]
            await send(message)

        await self.app(scope, receive, send_marked if scope["type"] == "http" else send)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    names = {name for name, _ in headers}
    return b"transfer-encoding" in names or any(name == b"content-length" and value.strip() not in (b"", b"0")
                                                for name, value in headers)


class LingeringClose:
    """An answer that closes the connection before the request's body is in (413, 401, 431, a full
    service's 503, ...) is sent whole at once, and then the rest of the body is read and dropped, within
    LINGER_S, LINGER_IDLE_S and LINGER_BYTES, before the connection closes. Closing at once would reset a
    connection the client is still writing to: it would see "connection reset" or "broken pipe" in place of
    the answer. A client that asked ``Expect: 100-continue`` sends no body after a refusal, so it is not
    waited for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope["headers"]) or (b"expect", b"100-continue") in [
                (name, value.lower()) for name, value in scope["headers"]]:
            await self.app(scope, receive, send)
            return
        body_in = False
        closing = CLOSE in [(name, value.lower()) for name, value in scope["headers"]]

        async def watched_receive() -> Message:
            nonlocal body_in
            message = await receive()
            body_in = body_in or message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def lingering_send(message: Message) -> None:
            nonlocal closing
            if message["type"] == "http.response.start":
                closing = closing or CLOSE in [(name.lower(), value.lower()) for name, value in message["headers"]]
            if message["type"] != "http.response.body" or message.get("more_body", False) or body_in or not closing:
                await send(message)
                return
            await send({**message, "more_body": True})
            await _drop_body(receive)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, watched_receive, lingering_send)


async def _drop_body(receive: Receive) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_S
    dropped = 0
    while dropped <= LINGER_BYTES and (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(receive(), min(left, LINGER_IDLE_S))
        except (TimeoutError, asyncio.TimeoutError):
            return
        dropped += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
