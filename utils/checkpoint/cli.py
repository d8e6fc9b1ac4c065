"""The ``--import-checkpoint`` option of the command line (README, "Importing your own checkpoint")."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models import default_model_dir


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("importing your own checkpoint")
    g.add_argument("--import-checkpoint", nargs=2, type=Path, metavar=("MODEL.pth", "INFOS.pkl"), default=None,
                   help="convert an ImageCaptioning.pytorch newfc checkpoint (torch not needed) into a decoder in "
                        "the model folder, then exit; caption with it using --model NAME")
    g.add_argument("--name", metavar="NAME", default=None,
                   help="with --import-checkpoint: the name to give the imported model (lower-case letters, "
                        "digits, '_' and '-')")


def import_usage_error(args: argparse.Namespace) -> str | None:
    if args.import_checkpoint is None:
        return "--name only applies to --import-checkpoint" if args.name is not None else None
    if args.name is None:
        return "--import-checkpoint needs --name NAME"
    used = [flag for flag, on in (("-i/--input", args.input is not None), ("-v/--video", args.video is not None))
            if on]
    return f"--import-checkpoint cannot be used with {' or '.join(used)}" if used else None


def run_import(args: argparse.Namespace) -> int:
    # Imported here: the checkpoint machinery is loaded only when a checkpoint is imported.
    from utils.checkpoint.importer import describe, import_checkpoint

    model_pth, infos_pkl = args.import_checkpoint
    with _one_interrupt():
        imported = import_checkpoint(model_pth, infos_pkl, args.name, args.model_dir or default_model_dir())
    print(describe(imported))
    return 0


@contextmanager
def _one_interrupt() -> Iterator[None]:
    """The first Ctrl-C stops the import (KeyboardInterrupt: the importer removes its temporary folder on
    the way out, and the program exits 130); any later one is ignored, so that a second press cannot cut
    that clean-up short and leave a partial folder or a traceback. The program is ending by then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is first:  # not interrupted: Ctrl-C as before
            signal.signal(signal.SIGINT, previous)
