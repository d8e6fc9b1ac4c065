"""Request bodies, read with bounds: a size limit (refused from Content-Length before any byte is read,
or as soon as a body without one passes it), a deadline for the whole body, and a budget of bytes being
received at once across requests. An image comes as the raw body (``image/*``) or as the ``image`` field
of a multipart form, parsed as it arrives (python-multipart) and kept in memory: nothing is written to
disk, and no name a client sends is ever used as a path on the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from utils.service.job import MAX_NAME_CHARS, MB
from utils.support.text import printable, shortened

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]  # ASGI's receive
DEFAULT_NAME = "upload"
MAX_PARTS = 16  # form fields in one multipart body


class RequestError(Exception):
    """A request refused: its HTTP status, a one-line message, and headers for the answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed the connection before its body was in: there is nobody to answer."""


@dataclass(frozen=True)
class Upload:
    data: bytes
    name: str  # the client's file name, only ever echoed back ("input") and quoted in messages


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float


class UploadBudget:
    """Bytes of request bodies being received at once, across requests. Used from the event loop's
    thread only, so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise RequestError(503, f"the service is receiving {self.used / MB:.0f} MB of uploads, the most it "
                                    "holds at once; retry later", {"Retry-After": "1"})
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


def file_name(raw: str | None) -> str:
    """A client's file name as the service echoes it: one line, bounded, or ``upload``."""
    name = printable((raw or "").strip())[:MAX_NAME_CHARS]
    return name or DEFAULT_NAME


def _too_large(limits: BodyLimits, length: int | None = None) -> RequestError:
    size = f" of {length / MB:.1f} MB" if length is not None else ""
    return RequestError(413, f"the request body{size} is over the {limits.max_bytes / MB:g} MB limit "
                             "(--max-upload-mb)", {"Connection": "close"})


class BodyReader:
    """One request's body (see the module docstring). Its bytes count against the budget from the
    start (all of a declared Content-Length at once, so that a body that cannot fit is refused before
    it is read) until ``release``."""

    def __init__(self, receive: Receive, headers: dict[str, str], limits: BodyLimits, budget: UploadBudget,
                 deadline: float) -> None:
        self._receive = receive
        self._limits = limits
        self._budget = budget
        self._deadline = deadline
        self._taken = 0
        text = headers.get("content-length")
        if text is not None and (length := int(text)) > limits.max_bytes:  # h11 has checked it is a number
            raise _too_large(limits, length)
        if text is not None:
            self._take(int(text))

    def _take(self, size: int) -> None:
        self._budget.take(size)
        self._taken += size

    def release(self) -> None:
        self._budget.give_back(self._taken)
        self._taken = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they come: RequestError 413 past the size limit, 408 past the deadline."""
        loop = asyncio.get_running_loop()
        received = 0
        while True:
            left = self._deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(self._receive(), left)
            except (TimeoutError, asyncio.TimeoutError):
                raise RequestError(408, f"the request body did not arrive within {self._limits.timeout_s:g} s "
                                        "(--client-timeout)", {"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            body: bytes = message.get("body", b"")
            received += len(body)
            if received > self._limits.max_bytes:
                raise _too_large(self._limits)
            if received > self._taken:  # a body without Content-Length
                self._take(received - self._taken)
            if body:
                yield body
            if not message.get("more_body", False):
                return


async def read_raw(chunks: AsyncIterator[bytes]) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
    return bytes(data)


class _Form:
    """The ``image`` field of a multipart body, gathered as python-multipart parses it."""

    def __init__(self) -> None:
        self.parts = 0
        self.image: bytearray | None = None
        self.name: str | None = None
        self._field = b""
        self._value = b""
        self._disposition = b""
        self._in_image = False

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data}

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise RequestError(400, f"more than {MAX_PARTS} fields in the form; send the image as the field 'image'")
        self._disposition, self._in_image = b"", False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.strip().lower() == b"content-disposition":
            self._disposition = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        if params.get(b"name") != b"image":
            return
        if self.image is not None:
            raise RequestError(400, "the form has more than one field 'image'; send one image per request")
        self.image, self._in_image = bytearray(), True
        raw = params.get(b"filename")
        self.name = file_name(raw.decode("utf-8", "replace")) if raw is not None else DEFAULT_NAME

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_image and self.image is not None:
            self.image += data[start:end]


async def read_form_image(chunks: AsyncIterator[bytes], boundary: bytes) -> Upload:
    form = _Form()
    try:
        parser = MultipartParser(boundary, form.callbacks())
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise RequestError(400, f"the multipart form is malformed: {shortened(str(exc), 200)}") from None
    if form.image is None:
        raise RequestError(400, "the form has no field 'image'; send the photo as the form field 'image'")
    return Upload(bytes(form.image), form.name or DEFAULT_NAME)


def content_kind(content_type: str | None) -> tuple[str, dict[bytes, bytes]]:
    """The media type (lower case) and its parameters."""
    kind, params = parse_options_header(content_type or "")
    return kind.decode("latin-1"), params
