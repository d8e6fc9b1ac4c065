"""JSON request bodies parsed with a bound on their shape, in a thread, so that no body stalls the event
loop or fills the memory (docs/service.md#limits).

The standard library's parser holds the interpreter's lock from the first byte to the last and builds
every object it meets: 33 MB of small keys took seconds and a gigabyte, and JSON nested 100,000 deep
overflowed its recursion. So a scan in Python (which lets other threads run as it goes) first checks the
body's depth and its count of values, stopping at the first one over its bound, and sets aside each long
string, the base64 of an image, as a ``LongString``: its bytes are never copied or decoded by the parser.
What is left is small, and ``json.loads`` parses it quickly.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from utils.service.uploads import RequestError
from utils.support.text import shortened

MAX_DEPTH = 32  # arrays and objects inside one another
MAX_VALUES = 10_000  # keys and values in the whole body (an Ollama or OpenAI request has a few dozen)
LONG_STRING_BYTES = 64 * 1024  # a string this long stays undecoded, as a LongString
_STRUCTURE = re.compile(rb'["\[\]{}]')


@dataclass(frozen=True)
class LongString:
    """A string of the body left as its raw bytes between the quotes (escapes not yet undone)."""

    raw: memoryview

    def __len__(self) -> int:
        return len(self.raw)


def parse(body: bytes) -> Any:
    """The body's JSON, its long strings as ``LongString``; RequestError 400 (one line) when it is not
    JSON, or over ``MAX_DEPTH`` or ``MAX_VALUES``."""
    # A placeholder no client can guess, so that no string of theirs is taken for one.
    placeholder = f"long-string-{secrets.token_hex(8)}-"
    skeleton, strings = _scan(body, placeholder)
    try:
        value = json.loads(skeleton)
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, a number of 5,000 digits
        raise RequestError(400, f"the body is not JSON: {shortened(str(exc), 200)}") from None
    return _restore(value, strings, re.compile(re.escape(placeholder) + r"(\d{1,9})")) if strings else value


def _scan(body: bytes, placeholder: str) -> tuple[bytes, list[LongString]]:
    """The body with each long string replaced by a short placeholder, and the long strings."""
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    strings: list[LongString] = []
    depth = values = 0
    start = pos = 0
    while (match := _STRUCTURE.search(body, pos)) is not None:
        at = match.start()
        values += body.count(b",", pos, at) + body.count(b":", pos, at)
        if values > MAX_VALUES:
            raise RequestError(400, f"the JSON has more than {MAX_VALUES} keys and values")
        char = body[at]
        if char == ord('"'):
            end = _string_end(body, at + 1)
            if end - at - 1 > LONG_STRING_BYTES:
                pieces += [view[start:at], f'"{placeholder}{len(strings)}"'.encode()]
                strings.append(LongString(view[at + 1:end]))
                start = end + 1
            pos = end + 1
            continue
        if char in b"[{":
            depth += 1
            values += 1
            if depth > MAX_DEPTH:
                raise RequestError(400, f"the JSON is nested more than {MAX_DEPTH} deep")
        else:
            depth -= 1
        pos = at + 1
    if body.count(b",", pos) + body.count(b":", pos) + values > MAX_VALUES:
        raise RequestError(400, f"the JSON has more than {MAX_VALUES} keys and values")
    if not strings:
        return body, strings
    pieces.append(view[start:])
    return b"".join(pieces), strings


def _string_end(body: bytes, pos: int) -> int:
    """Where the string starting at ``pos`` (after its opening quote) closes: the next quote that no
    backslash escapes. Each escaped quote costs a step, so they count against MAX_VALUES too."""
    steps = 0
    while (end := body.find(b'"', pos)) != -1:
        backslashes = 0
        while body[end - 1 - backslashes] == ord("\\"):
            backslashes += 1
        if backslashes % 2 == 0:
            return end
        steps += 1
        if steps > MAX_VALUES:
            raise RequestError(400, f"a JSON string has more than {MAX_VALUES} escaped quotes")
        pos = end + 1
    raise RequestError(400, "the body is not JSON: a string never ends")


def _restore(value: Any, strings: list[LongString], placeholder: re.Pattern[str]) -> Any:
    """``value`` with each placeholder put back as its LongString (the skeleton is small: this is quick)."""
    if isinstance(value, str) and (match := placeholder.fullmatch(value)):
        return strings[int(match[1])]
    if isinstance(value, list):
        return [_restore(item, strings, placeholder) for item in value]
    if isinstance(value, dict):
        return {key: _restore(item, strings, placeholder) for key, item in value.items()}
    return value
