"""The architecture's promises: one writer layer for both modes, each model file read once, a repository
that stands on its own (docs it points to exist, no path outside it), and the --format choice."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.synthetic import NewFCParams
from tests.conftest import ROOT, SAMPLE, RunCli, cli_env
from tests.video_helpers import make_video
from utils.captioner import Captioner, CaptionerOptions
from utils.images import ImageJob, run_images
from utils.output.formats import FORMATS, ResultWriter
from utils.preprocess import read_image
from utils.records import CaptionRecord, RunSummary
from utils.runtime import RuntimeOptions
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
from utils.captioner import Captioner, CaptionerOptions
from utils.decoding.options import DecodingOptions
from utils.preprocess import read_image
from utils.runtime import RuntimeOptions
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
