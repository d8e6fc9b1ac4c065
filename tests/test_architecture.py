"""The architecture's promises: one writer layer for both modes, each model file read once, a repository
that stands on its own (docs it points to exist, no path outside it), and the --format choice."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SAMPLE, RunCli, cli_env
from tests.stand_in_models import NewFCParams
from tests.video_helpers import make_video
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.engine.preprocess import read_image
from utils.engine.runtime import RuntimeOptions
from utils.images.job import ImageJob
from utils.images.run import run_images
from utils.images.steps import CaptionedImage, Step, registry
from utils.output.formats import FORMATS, ResultWriter
from utils.output.records import CaptionRecord, RunSummary, Section
from utils.video.job import VideoJob
from utils.video.loops import process_video
from utils.video.source import open_source


class ShoutWriter(ResultWriter):
    """A format made up for the test: what a new format has to provide, and nothing more."""

    name = "shout"

    def begin(self, inputs: int | None = None) -> None:
        self._emit(f"BEGIN {inputs}")

    def write(self, record: CaptionRecord) -> None:
        where = record.input if record.video is None else f"{record.video.frame}"
        self._emit(f"{where} {(record.caption or record.error or '').upper()}")

    def end(self, summary: RunSummary) -> None:
        self._emit(f"END {summary.model}")


@pytest.fixture(scope="module")
def captioner(model_set_dir: tuple[Path, dict[str, NewFCParams]]) -> Captioner:
    return Captioner(CaptionerOptions(model_dir=model_set_dir[0], offline=True, progress=False,
                                      runtime=RuntimeOptions(backend="onnxruntime")))


def test_a_new_format_is_one_class_and_one_entry(captioner: Captioner, photos: list[Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FORMATS, "shout", ShoutWriter)
    images = io.StringIO()
    missing = str(tmp_path / "missing.jpg")
    status = run_images(ImageJob(inputs=[str(photos[0]), missing], format="shout"), captioner.options,
                        out=images, load=lambda _: captioner)
    lines = images.getvalue().splitlines()
    want = captioner.caption(read_image(photos[0])).caption.upper()
    assert status == 1
    assert lines == ["BEGIN 2", f"{photos[0]} {want}", f"{missing} {missing.upper()} DOES NOT EXIST",
                     f"END {captioner.model}"]

    clip = make_video(tmp_path / "clip.avi", 12, fps=10.0)
    video = io.StringIO()
    source = open_source(str(clip))
    process_video(VideoJob(source=str(clip), format="shout", display=False), captioner, source, out=video)
    source.release()
    lines = video.getvalue().splitlines()
    assert lines[0] == "BEGIN None" and lines[-1] == f"END {captioner.model}"
    assert [line.split()[0] for line in lines[1:-1]] == ["0", "10"]  # one caption a second at 10 fps


def test_format_json_is_json_and_its_alias(run_cli: RunCli, models: Path) -> None:
    flags = ["-i", SAMPLE, "--model-dir", models, "--offline", "--onnx", "--beam-size", "1"]
    by_alias = run_cli(*flags, "--json")
    by_name = run_cli(*flags, "--format", "json")
    text = run_cli(*flags, "--format", "text")
    assert by_alias.returncode == by_name.returncode == text.returncode == 0
    record = json.loads(by_name.stdout)
    drop_timings = {k: v for k, v in record.items() if k != "timings"}
    assert drop_timings == {k: v for k, v in json.loads(by_alias.stdout).items() if k != "timings"}
    assert text.stdout == record["caption"] + "\n"


def test_video_json_has_the_image_shape(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 10, fps=10.0)
    video = run_cli("-v", clip, "--json", "--no-display", "--model-dir", models, "--offline", "--onnx")
    image = run_cli("-i", SAMPLE, "--json", "--model-dir", models, "--offline", "--onnx")
    assert video.returncode == image.returncode == 0, video.stderr
    (caption,) = [json.loads(line) for line in video.stdout.splitlines()]
    shared = set(json.loads(image.stdout)) - {"input", "output"}
    assert shared <= set(caption) and {"time", "frame"} <= set(caption)


def test_unknown_format_is_a_usage_error(run_cli: RunCli) -> None:
    proc = run_cli("-i", SAMPLE, "--format", "xml")
    assert proc.returncode == 2 and "invalid choice: 'xml'" in proc.stderr


OPEN_COUNTER = """
import collections, sys
from pathlib import Path
folder = Path(sys.argv[1]).resolve()
opened = collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, Path)):
        path = Path(args[0] if not isinstance(args[0], bytes) else args[0].decode()).resolve()
        if path.parent == folder and not path.name.startswith(".") and path.suffix in (".onnx", ".json"):
            opened[path.name] += 1
sys.addaudithook(hook)
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.decoding.options import DecodingOptions
from utils.engine.preprocess import read_image
from utils.engine.runtime import RuntimeOptions
captioner = Captioner(CaptionerOptions(model_dir=folder, offline=True, progress=False,
                                       runtime=RuntimeOptions(backend="onnxruntime")))
image = read_image(Path(sys.argv[2]))
for beam in (1, 5, 3):  # greedy, then beam search (which recovers the decoder's weights)
    captioner.caption(image, DecodingOptions(beam_size=beam))
print(dict(opened))
"""


def test_each_model_file_is_read_once(models: Path) -> None:
    """Python's audit hook sees every file Python opens, ONNX Runtime's loads included (they get bytes)."""
    proc = subprocess.run([sys.executable, "-c", OPEN_COUNTER, str(models), str(SAMPLE)], capture_output=True,
                          text=True, env=cli_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str({"model_feat.onnx": 1, "model_fc_nsc.onnx": 1, "vocab.json": 1})


def test_every_docs_reference_names_a_section_that_exists() -> None:
    doc = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", doc, flags=re.M)}
    cited: set[int] = set()
    for path in tracked_files():
        if path.suffix in (".py", ".md"):
            text = path.read_text(encoding="utf-8")
            for ref in re.findall(r"docs/models\.md((?:,? ?§\d+(?:-§\d+)?)+)", text):
                for first, last in re.findall(r"§(\d+)(?:-§(\d+))?", ref):
                    cited.update(range(int(first), int(last or first) + 1))
    assert cited and cited <= sections, f"cited sections missing from docs/models.md: {sorted(cited - sections)}"


def test_nothing_points_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|FACTS(\.md)? ?§|/work/shar[e]d")
    offenders = [str(p.relative_to(ROOT)) for p in tracked_files()
                 if p.suffix in (".py", ".md", ".toml", ".txt", "") and p.is_file()
                 and outside.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []


def tracked_files() -> list[Path]:
    """The repository's files (a clone's view), without git: everything but caches and built models."""
    skip = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "models", "out"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts[:-1])]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces as '-';
    a repeated heading gets -1, -2, ...)."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not (match := re.match(r"^#{1,6} (.*)$", line)):
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def unresolved(target: Path, anchor: str | None) -> str | None:
    if not target.is_file():
        return "no such file"
    if anchor and anchor not in heading_anchors(target.read_text(encoding="utf-8")):
        return f"no heading #{anchor}"
    return None


def test_every_link_between_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            if (why := unresolved((page.parent / path).resolve() if path else page, anchor or None)) is not None:
                broken.append(f"{page.relative_to(ROOT)} -> {target}: {why}")
    assert pages[1:] and broken == []


def test_every_code_reference_to_the_docs_resolves() -> None:
    """Code cites documentation by path (docs/limits.md, docs/performance.md#folders-several-workers),
    never by a section title that a later edit could rename unnoticed."""
    broken, by_title, cited = [], [], 0
    for path in tracked_files():
        if path.suffix != ".py":
            continue
        text = path.read_text(encoding="utf-8")
        for page, anchor in re.findall(r"\b((?:docs/[\w\-]+|README)\.md)(?:#([\w\-]+))?", text):
            cited += 1
            if (why := unresolved(ROOT / page, anchor or None)) is not None:
                broken.append(f"{path.relative_to(ROOT)}: {page}#{anchor}: {why}")
        by_title += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"README, [\"A-Z][^)\n]*", text)]
    assert cited > 10 and broken == [] and by_title == []


LOOSE_MODULE_HOMES = ("engine", "support")


def import_graph() -> dict[str, set[str]]:
    """Which parts of the program import which: a part is a package of utils/ (utils.images), a module of
    utils/ (utils.engine.captioner), models or vocab. Imports made only for type checking count too: they tie
    the parts together just the same."""
    def part(module: str) -> str:
        names = module.split(".")
        if names[0] != "utils" or len(names) == 1:
            return names[0]
        # The engine's and the support modules' packages are homes of loose modules, each a part of its own.
        return ".".join(names[:3] if names[1] in LOOSE_MODULE_HOMES and len(names) > 2 else names[:2])

    graph: dict[str, set[str]] = {}
    for path in [p for top in ("utils", "models", "vocab") for p in (ROOT / top).rglob("*.py")]:
        here = part(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                there = part(module)
                if module.split(".")[0] in ("utils", "models", "vocab") and there not in (here, "utils"):
                    graph.setdefault(here, set()).add(there)
    return graph


def test_no_cycle_between_the_parts_of_the_program() -> None:
    graph = import_graph()
    assert {"utils.cli", "utils.output", "utils.images", "utils.engine.captioner"} <= set(graph)  # the walk saw them

    def cycle_from(start: str, node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path and (found := cycle_from(start, nxt, [*path, nxt])) is not None:
                return found
        return None

    cycles = [c for start in sorted(graph) if (c := cycle_from(start, start, [start])) is not None]
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


MAX_FUNCTION_LINES = 60


def test_no_function_of_the_program_is_over_60_lines() -> None:
    """A function that needs more has more than one job (docs/architecture.md)."""
    long = []
    for path in [ROOT / "image_captioning_pytorch.py", *(p for top in ("utils", "models", "vocab")
                                                          for p in sorted((ROOT / top).rglob("*.py")))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None \
                    and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


@dataclass(frozen=True)
class WordCount(Section):
    """A made-up step's section: what a new per-image feature has to provide, and nothing more."""

    key = "words"
    columns = ("words",)

    count: int

    def json(self) -> Any:
        return self.count

    def note(self) -> str | None:
        return f"{self.count} words"

    def cells(self) -> tuple[Any, ...]:
        return (self.count,)


class CountWords(Step):
    section = WordCount

    @classmethod
    def from_job(cls, job: ImageJob) -> Step | None:
        return cls()

    def run(self, image: CaptionedImage, earlier: list[Section]) -> Section | None:
        return WordCount(len(image.result.caption.split()))


def test_a_new_per_image_step_is_one_class_and_one_registration(captioner: Captioner, photos: list[Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "STEPS", [*registry.STEPS, CountWords])
    job = ImageJob(inputs=[str(p) for p in photos[:2]])
    words = [len(captioner.caption(read_image(p)).caption.split()) for p in photos[:2]]
    out: dict[str, str] = {}
    for fmt in ("json", "text", "csv"):
        stream = io.StringIO()
        assert run_images(replace(job, format=fmt), captioner.options, out=stream, load=lambda _: captioner) == 0
        out[fmt] = stream.getvalue()
    assert [json.loads(line)["words"] for line in out["json"].splitlines()] == words
    assert [line.strip() for line in out["text"].splitlines() if line.startswith("  ")] == [f"{n} words" for n in words]
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert list(rows[0])[-2:] == ["words", "error"] and [int(r["words"]) for r in rows] == words


def test_the_public_api_is_what_utils_exports_and_importing_it_loads_no_runtime() -> None:
    import importlib

    import utils

    public = set(utils._PUBLIC)
    assert set(utils.__all__) == public | {"__version__"} and sorted(dir(utils)) == sorted(utils.__all__)
    for name, module in utils._PUBLIC.items():
        assert getattr(utils, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'internal'"):
        utils.internal  # noqa: B018
    # The docs' examples import from the package, never from the modules under it.
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    imported = re.findall(r"^from (utils[\w.]*) import (.+)$", api, re.MULTILINE)
    assert imported and all(module == "utils" for module, _ in imported), imported
    assert {n.strip() for _, names in imported for n in names.split(",")} <= public
    heavy = ("onnx", "onnxruntime", "cv2", "numpy", "ailia", "fastapi", "ray")
    child = f"import sys, utils; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, env=cli_env(),
                          timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
