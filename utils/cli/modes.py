"""Which flags go with which mode: the one table every "X cannot go with Y" usage error comes from.

A command runs in one mode, chosen by the first of ``MODES`` whose flag is given (images when none is).
Every flag given that the mode does not take is refused: by the mode's own sentence where it has one
(``--serve cannot be used with ...``), otherwise by where the flag belongs (``--sync only applies to
video (-v)``). The rules inside one concern (``--sync`` with ``--interval``, ``--resume`` needing
``--captions-file``) stay beside their flags in the other modules of utils/cli/.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields

from utils.decoding.options import DecodingOptions


@dataclass(frozen=True)
class Mode:
    name: str
    flag: str | None  # the dest of the flag that chooses it; None: the mode without one (images)
    shown: str  # how messages name it: where a flag that only it takes belongs
    refuse: Callable[[list[str]], str] | None = None  # its sentence for the flags it does not take


def _listed(names: list[str]) -> str:
    return ", ".join(names)


def _apply(names: list[str], where: str) -> str:
    return f"{_listed(names)} only appl{'ies' if len(names) == 1 else 'y'} to {where}"


# In the order they are chosen: a flag that makes the program do something else entirely comes first.
MODES = (
    Mode("serve", "serve", "--serve",
         lambda used: f"--serve cannot be used with {_listed(used)}: the service takes photos over HTTP and "
                      "answers JSON"),
    Mode("import", "import_checkpoint", "--import-checkpoint",
         lambda used: f"--import-checkpoint cannot be used with {_listed(used)}: it converts a checkpoint and "
                      "exits"),
    Mode("score", "score_captions", "--score-captions",
         lambda used: f"--score-captions scores captions made earlier; it cannot be used with {_listed(used)}"),
    Mode("video", "video", "video (-v)"),
    Mode("ray", "ray", "--ray",
         lambda used: f"--ray writes captions to --captions-file only; it does not go with {_listed(used)}"),
    Mode("images", None, "images (-i)"),
)
ALL = frozenset(mode.name for mode in MODES)
CAPTIONING = frozenset({"images", "video", "serve", "ray"})
IMAGES = frozenset({"images"})

# Every flag of the parser, by dest, and the modes that take it (tests/test_cli_modes.py checks that
# none is missing). The runtime's flags go everywhere: a mode that loads no model ignores them.
FLAG_MODES: dict[str, frozenset[str]] = {
    # what to caption, and where to write it
    "input": frozenset({"images", "ray"}),
    "video": frozenset({"video"}),
    "savepath": frozenset({"images", "video"}),
    "format": frozenset({"images", "video", "score"}),
    "captions_file": frozenset({"images", "video", "ray"}),
    "benchmark": IMAGES,
    "benchmark_count": IMAGES,
    # the model and the runtime
    **dict.fromkeys(("model", "backend", "precision", "workers", "env_id", "env_list", "memory_mode", "model_dir",
                     "offline", "debug"), ALL),
    # video
    **dict.fromkeys(("interval", "sync", "live", "hud", "display"), frozenset({"video"})),
    # alt text in photo metadata
    **dict.fromkeys(("write_metadata", "metadata_sidecar", "overwrite_metadata", "dry_run"), IMAGES),
    # decoding: every field of DecodingOptions is a flag of its own (utils/cli/decoding.py)
    **dict.fromkeys((f.name for f in fields(DecodingOptions)), CAPTIONING),
    # importing a checkpoint
    "import_checkpoint": frozenset({"import"}),
    "name": frozenset({"import"}),
    # caption quality
    **dict.fromkeys(("references", "split", "metrics_file"), frozenset({"images", "score"})),
    "score_captions": frozenset({"score"}),
    # the service
    **dict.fromkeys(("serve", "token", "allow_anonymous", "cors_origin", "max_upload_mb", "queue_size",
                     "request_timeout", "client_timeout"), frozenset({"serve"})),
    # large runs
    "resume": frozenset({"images", "ray"}),
    "ray": frozenset({"ray"}),
}

# The sentence for a flag refused on its own by a mode without a sentence of its own (video), where the
# flag's place alone would not say what to do instead.
REFUSALS = {
    "input": "-i/--input and -v/--video cannot be used together",
    "benchmark": "-b/--benchmark is for images; with -v use --hud or --json timings",
    "references": "--references scores images (-i), not video",
    "resume": "--resume is for images (-i), not video",
    "ray": "--ray is for images (-i), not video",
}


def mode_of(args: argparse.Namespace) -> Mode:
    return next(mode for mode in MODES if mode.flag is None or getattr(args, mode.flag) not in (None, False))


def usage_error(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The first flag given that the chosen mode does not take, as one sentence; or None."""
    mode = mode_of(args)
    refused = [dest for dest in flag_dests(parser)
               if mode.name not in FLAG_MODES[dest] and getattr(args, dest) != parser.get_default(dest)]
    if not refused:
        return None
    if mode.refuse is not None:
        return mode.refuse([_shown(parser, dest, args, mode) for dest in refused])
    if refused[0] in REFUSALS:
        return REFUSALS[refused[0]]
    home = _home(refused[0])
    return _apply([_shown(parser, dest, args, mode) for dest in refused if _home(dest) == home and
                   dest not in REFUSALS], home.shown)


def _home(dest: str) -> Mode:
    """Where a flag belongs: the first mode, in MODES' order, that takes it."""
    return next(mode for mode in MODES if mode.name in FLAG_MODES[dest])


def flag_dests(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's flags by dest, in the order they were added; --help and --version, which store
    nothing, aside."""
    return list(dict.fromkeys(action.dest for action in parser._actions
                              if action.option_strings and action.default != argparse.SUPPRESS))


def _shown(parser: argparse.ArgumentParser, dest: str, args: argparse.Namespace, mode: Mode) -> str:
    """A flag as messages name it: its option strings (-i/--input, --format/--json); --ray names the
    format it was asked for."""
    if dest == "format" and mode.name == "ray":
        return f"--format {args.format}"
    options = [option for action in parser._actions if action.dest == dest for option in action.option_strings]
    return "/".join(options)
