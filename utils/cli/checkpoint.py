"""The ``--import-checkpoint`` option of the command line (docs/import.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from models import default_model_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("importing your own checkpoint")
    g.add_argument("--import-checkpoint", nargs=2, type=Path, metavar=("MODEL.pth", "INFOS.pkl"), default=None,
                   help="convert an ImageCaptioning.pytorch newfc checkpoint (torch not needed) into a decoder in "
                        "the model folder, then exit; caption with it using --model NAME")
    g.add_argument("--name", metavar="NAME", default=None,
                   help="with --import-checkpoint: the name to give the imported model (lower-case letters, "
                        "digits, '_' and '-')")


def usage_error(args: argparse.Namespace) -> str | None:
    """The import's own rule; which flags go with it is utils/cli/modes.py's."""
    if args.import_checkpoint is not None and args.name is None:
        return "--import-checkpoint needs --name NAME"
    return None


def run_import(args: argparse.Namespace) -> int:
    # Imported here: the checkpoint machinery is loaded only when a checkpoint is imported.
    from utils.checkpoint.importer import describe, import_checkpoint

    model_pth, infos_pkl = args.import_checkpoint
    # A first Ctrl-C or SIGTERM stops the import (the importer removes its temporary folder on the way
    # out); later ones are only noted, so the clean-up is never cut short (utils/support/stopping.py).
    imported = import_checkpoint(model_pth, infos_pkl, args.name, args.model_dir or default_model_dir())
    print(describe(imported))
    return 0
