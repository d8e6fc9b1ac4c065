"""Text for one line of output, whatever it quotes (a file name may hold a newline)."""

from __future__ import annotations

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a file name) written as \\xNN escapes."""
    return text.translate(_CONTROL)
