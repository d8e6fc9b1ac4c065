"""An image sent inside a JSON body in base64, as Ollama's ``images`` and OpenAI's ``data:`` URLs carry
it: decoded in pieces in the parsing thread (never on the event loop), straight from the raw bytes that
``json_body`` set aside for a long string, so that a 33 MB string is neither parsed nor copied twice."""

from __future__ import annotations

import base64
import binascii
import re

from utils.service.json_body import LongString
from utils.service.uploads import RequestError

DATA_URL = re.compile(rb"data:image/[\w.+-]+;base64,", re.IGNORECASE)
_CHUNK = 1 << 20  # characters decoded at a time: other threads (the event loop) run in between


def max_body_bytes(max_upload_bytes: int) -> int:
    """A JSON body carrying an upload of the limit in base64, with room for the other fields."""
    return (max_upload_bytes + 2) // 3 * 4 + 64 * 1024


def text_of(value: str | LongString) -> bytes:
    """The string's bytes. A LongString is still escaped, but JSON's only escape base64 can carry is
    "\\/" for "/" (PHP's encoder writes it by default), so that one is undone and no other."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    return value.raw.tobytes().replace(b"\\/", b"/")


def data_url_end(text: bytes) -> int | None:
    """Where the base64 of a ``data:image/...;base64,`` URL starts, or None if ``text`` is not one."""
    match = DATA_URL.match(text, 0, 64)
    return match.end() if match else None


def decode(text: bytes, start: int, field: str, hint: str) -> bytes:
    """The bytes of the base64 in ``text[start:]``; RequestError 400 naming ``field`` (and ``hint``,
    what to send instead) when it is not base64 or is empty. A trailing newline (``base64``'s own) is
    tolerated."""
    end = len(text.rstrip(b" \t\r\n"))
    try:
        data = b"".join(base64.b64decode(text[at:min(at + _CHUNK, end)], validate=True)
                        for at in range(start, end, _CHUNK))
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{field} is not base64 ({hint})") from None
    if not data:
        raise RequestError(400, f"{field} is empty")
    return data
