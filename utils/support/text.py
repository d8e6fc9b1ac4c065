"""Text for one line of output, whatever it quotes (a file name may hold a newline), and of a bounded
length, whatever its source (a library's message, a name read from a file)."""

from __future__ import annotations

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}

NAME_CHARS = 80  # a name quoted in a message: at most this many characters


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a file name) written as \\xNN escapes."""
    return text.translate(_CONTROL)


def shortened(text: str, limit: int = NAME_CHARS) -> str:
    """``text`` as a message may quote it: on one line (``printable``), at most ``limit`` characters, the
    last an ellipsis where it was cut."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
