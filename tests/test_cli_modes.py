"""The one table of which flags go with which mode (utils/cli/modes.py): every flag of the parser is in it,
and every flag a mode does not take is refused in that mode, by name, while every flag it takes is not."""

from __future__ import annotations

import argparse

import pytest

from utils.cli import modes
from utils.cli.parser import build_parser

# The argv that chooses each mode (and what that mode needs to be asked at all).
CHOSEN_BY = {
    "serve": ["--serve", "8000"],
    "import": ["--import-checkpoint", "a.pth", "b.pkl", "--name", "x"],
    "score": ["--score-captions", "c.jsonl", "--references", "r.csv"],
    "video": ["-v", "0"],
    "ray": ["-i", "x.jpg", "--ray", "--captions-file", "o.csv"],
    "images": [],
}
# A value for the flags whose type a plain "2" does not fit, or whose default "2" would equal.
VALUES = {"serve": ["8000"], "import_checkpoint": ["a.pth", "b.pkl"], "length_penalty": ["wu_1"],
          "sample_method": ["sample"], "cors_origin": ["https://a.test"], "format": ["json"],
          "backend": ["onnxruntime"], "precision": ["int8"], "model": ["fc"]}


def flag_argv(parser: argparse.ArgumentParser, dest: str) -> list[str]:
    """Arguments that give ``dest`` a value other than its default."""
    for action in parser._actions:
        if action.dest != dest or not action.option_strings:
            continue
        if action.nargs == 0:
            if action.const != parser.get_default(dest):
                return [action.option_strings[0]]
            continue
        return [action.option_strings[0], *VALUES.get(dest, ["2"])]
    raise AssertionError(f"no way to set {dest}")


def test_every_flag_of_the_parser_is_in_the_table_and_nothing_else() -> None:
    parser = build_parser()
    assert set(modes.flag_dests(parser)) == set(modes.FLAG_MODES)
    assert {mode.name for mode in modes.MODES} == set(CHOSEN_BY)
    assert all(modes.FLAG_MODES[dest] <= modes.ALL and modes.FLAG_MODES[dest] for dest in modes.FLAG_MODES)


@pytest.mark.parametrize("mode", list(CHOSEN_BY))
def test_each_mode_refuses_by_name_every_flag_it_does_not_take(mode: str) -> None:
    parser = build_parser()
    assert modes.mode_of(parser.parse_args(CHOSEN_BY[mode])).name == mode
    assert modes.usage_error(parser.parse_args(CHOSEN_BY[mode]), parser) is None
    refused = taken = 0
    for dest in modes.flag_dests(parser):
        argv = flag_argv(parser, dest)
        args = parser.parse_args(CHOSEN_BY[mode] + argv)
        chosen = modes.mode_of(args).name
        problem = modes.usage_error(args, parser)
        if dest in {m.flag for m in modes.MODES} and chosen != mode:
            # A mode's own flag chooses that mode where it comes first (--serve over -v), and the flags
            # that chose the one asked for are refused there (images is chosen by none).
            assert chosen == next(m.name for m in modes.MODES if m.flag == dest)
            assert (problem is None) == (mode == "images"), (mode, dest, problem)
            continue
        if mode in modes.FLAG_MODES[dest]:
            assert problem is None, (mode, dest, problem)
            taken += 1
        else:
            assert problem is not None and (argv[0] in problem or problem == modes.REFUSALS.get(dest)), \
                (mode, dest, problem)
            refused += 1
    assert taken > 5 and (refused > 5 or mode == "images")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--serve", "8000", "-v", "0", "--sync"],
     "--serve cannot be used with -v/--video, --sync: the service takes photos over HTTP and answers JSON"),
    (["-v", "0", "-i", "x.jpg", "--write-metadata"], "-i/--input and -v/--video cannot be used together"),
    (["-v", "0", "--write-metadata", "--dry-run"], "--write-metadata, --dry-run only apply to images (-i)"),
    (["--hud", "--token", "t"], "--hud only applies to video (-v)"),
    (["--token", "t", "--hud"], "--hud only applies to video (-v)"),
    (["-i", "x", "--ray", "--captions-file", "o.csv", "--json", "-s", "a"],
     "--ray writes captions to --captions-file only; it does not go with -s/--savepath, --format json"),
    (["--ray", "-v", "0"], "--ray is for images (-i), not video"),
    (["--name", "x"], "--name only applies to --import-checkpoint"),
    (["--score-captions", "c", "--references", "r", "-i", "a", "--captions-file", "b.csv"],
     "--score-captions scores captions made earlier; it cannot be used with -i/--input, --captions-file"),
])
def test_the_first_refused_flag_decides_the_sentence(argv: list[str], expected: str) -> None:
    parser = build_parser()
    assert modes.usage_error(parser.parse_args(argv), parser) == expected
