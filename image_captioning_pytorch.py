#!/usr/bin/env python3
"""Caption photos with the ImageCaptioning.pytorch FC models on the ailia SDK or ONNX Runtime.

A thin entry point: the command line is utils/cli/; every option is in docs/options.md.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # First of all: Ctrl-C or SIGTERM while the libraries below load (seconds, on a cold disk) ends the
    # program at once, with nothing to clean up yet; main() says how they are answered once work starts
    # (utils/support/stopping.py).
    from utils.support.stopping import Interrupts

    Interrupts(mode="exit").install_for_program()
    from utils.engine.limits import apply_decoding_limit

    apply_decoding_limit()  # OpenCV reads it once, when it loads

from utils.cli.main import main  # noqa: E402


def _exit(status: int) -> None:
    """Flush and exit with ``status``, without the interpreter's shutdown: by now every file of ours is
    complete or removed, and the shutdown could only go wrong. After an interruption a model thread may
    still be inside ONNX Runtime, which the shutdown would destroy under it (SIGABRT); and a signal
    that came during it would end the process by that signal, after a run that had finished."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":
    _exit(main(standalone=True))
