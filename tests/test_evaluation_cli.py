"""--references, --metrics-file and --score-captions through the real CLI (docs/evaluation.md): the figures are
pycocoevalcap's own, on the captions this run made; bad references are usage errors before any model loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import RunCli
from tests.test_evaluation import cocoevalcap
from utils.evaluation.scoring import METRICS

RUN = ("--offline", "--onnx", "--beam-size", "1")
REFERENCES = {
    "cat.png": ["A cat sitting on a table.", "a cat lying on a table"],
    "crop.jpg": ["Close-up of a cat's face.", "a cat looking at the camera"],
    "wide.png": ["a cat sitting on a wooden table", "A tabby cat, sitting."],
    "noise.bmp": ["static noise on a screen"],
    "grey.png": ["a black and white photo of a cat"],
}


def write_references(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows((name, ref) for name, refs in REFERENCES.items() for ref in refs)
    return path


def test_a_run_scored_against_references_equals_pycocoevalcap(run_cli: RunCli, models: Path, photos: list[Path],
                                                               tmp_path: Path) -> None:
    refs, metrics = write_references(tmp_path / "refs.csv"), tmp_path / "metrics.json"
    proc = run_cli("-i", *photos, "--json", "--references", refs, "--metrics-file", metrics, "--model-dir", models,
                   *RUN, timeout=300)
    assert proc.returncode == 0, proc.stderr
    captions = {Path(r["input"]).name: r["caption"] for r in map(json.loads, proc.stdout.splitlines())}
    assert set(captions) == set(REFERENCES)
    assert proc.stderr.startswith("caption quality: 5 images scored against ")  # stdout holds the records
    got = json.loads(metrics.read_text())
    assert list(got)[:7] == list(METRICS) and got["images"]["scored"] == 5
    images = [(k, name, refs_, captions[name]) for k, (name, refs_) in enumerate(REFERENCES.items(), start=1)]
    corpus, _ = cocoevalcap(tmp_path, images)
    assert {m: got[m] for m in METRICS} == pytest.approx(corpus, abs=1e-6, rel=0)

    # The same captions scored later, with no model at all: the same figures.
    (tmp_path / "empty").mkdir()
    captions_file = tmp_path / "captions.jsonl"
    captions_file.write_text(proc.stdout, encoding="utf-8")
    again = run_cli("--score-captions", captions_file, "--references", refs, "--json", "--model-dir",
                    tmp_path / "empty", "--offline", timeout=300)
    assert again.returncode == 0, again.stderr
    assert {m: json.loads(again.stdout)[m] for m in METRICS} == pytest.approx(corpus, abs=1e-6, rel=0)
    assert list((tmp_path / "empty").iterdir()) == []


def test_text_output_ends_with_the_table_and_unmatched_inputs_are_named(run_cli: RunCli, models: Path,
                                                                         photos: list[Path], tmp_path: Path) -> None:
    refs = tmp_path / "refs.tsv"
    refs.write_text("image\tcaption\ncat.png\ta cat on a table\nmissing.jpg\ta dog\n", encoding="utf-8")
    proc = run_cli("-i", photos[0], photos[1], "--references", refs, "--model-dir", models, *RUN, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].startswith("caption quality: 1 image scored against ") and len(lines) == 2 + 1 + 7 + 1
    assert [line.split()[0] for line in lines[3:10]] == list(METRICS)
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 2 and "crop.jpg" in warnings[0] and "missing.jpg" in warnings[1]


def test_a_malformed_references_file_is_a_usage_error_before_any_model_loads(run_cli: RunCli, photos: list[Path],
                                                                              tmp_path: Path) -> None:
    refs = tmp_path / "refs.json"
    refs.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}')
    empty = tmp_path / "no-models"
    empty.mkdir()
    metrics = tmp_path / "m.json"
    proc = run_cli("-i", photos[0], "--references", refs, "--metrics-file", metrics, "--model-dir", empty,
                   "--offline", "--onnx")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "has no caption" in proc.stderr
    assert proc.stdout == "" and not metrics.exists() and list(empty.iterdir()) == []


def test_a_references_csv_with_a_quote_never_closed_is_a_usage_error(run_cli: RunCli, models: Path,
                                                                    photos: list[Path], tmp_path: Path) -> None:
    # csv's reader closes such a field at the end of the file: the rows after it would be one caption of
    # cat.png, and the run would score against it with exit status 0.
    refs = tmp_path / "refs.csv"
    refs.write_text('image,caption\ncrop.jpg,a cat\ncat.png,"a cat on a table\ncrop.jpg,a close-up\n'
                    'wide.png,a wide cat\n', encoding="utf-8")
    metrics = tmp_path / "m.json"
    proc = run_cli("-i", photos[0], "--references", refs, "--metrics-file", metrics, "--model-dir", models, *RUN)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"ERROR: {refs}: line 3: the quote that opens a field there is never closed\n"
    assert proc.stdout == "" and not metrics.exists()


def test_without_java_references_are_refused_before_any_model_loads(run_cli: RunCli, photos: list[Path],
                                                                    tmp_path: Path) -> None:
    refs = write_references(tmp_path / "refs.csv")
    proc = run_cli("-i", photos[0], "--references", refs, "--model-dir", tmp_path, "--offline", "--onnx",
                   env={"PATH": str(tmp_path / "bin")})
    assert proc.returncode == 1 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert "default-jre-headless" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "test"], "--split needs --references FILE"),
    (["--metrics-file", "m.json"], "--metrics-file needs --references FILE"),
    (["--score-captions", "c.jsonl"], "--score-captions needs --references FILE"),
    (["-v", "clip.avi", "--references", "r.csv"], "--references scores images (-i), not video"),
    (["-i", "a.jpg", "--score-captions", "c.jsonl", "--references", "r.csv"], "cannot be used with -i/--input"),
])
def test_usage_errors(run_cli: RunCli, args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and message in proc.stderr.splitlines()[-1]
