"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the helpers
that turn other libraries' exceptions into such lines."""

from __future__ import annotations

import logging
import traceback

from utils.support.text import shortened

BUG_CHARS = 200  # a bug's message, in its one line


class CaptionError(Exception):
    """A problem the user can act on; its message names the problem and what to do."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to several), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def log_bug(logger: logging.Logger, error: BaseException) -> None:
    """An exception that is no problem of the input (a bug) as one ERROR line, its type and its message's
    first line; the traceback with --debug."""
    logger.debug("%s", "".join(traceback.format_exception(error)))
    text = str(error).strip()
    logger.error("internal error: %s: %s (run with --debug for details)", type(error).__name__,
                 shortened(text.splitlines()[0] if text else "", BUG_CHARS))


def exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, innermost last."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class UsageError(CaptionError):
    """A command line that cannot work, found only once a file it names was read (a malformed references
    file, a --resume file that is not this program's): reported like argparse's usage errors, with exit
    status 2, before any model loads."""
