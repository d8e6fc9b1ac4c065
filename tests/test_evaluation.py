"""Caption quality (utils/evaluation): references in every format, captions files in every format, and the
metrics, which must equal pycocoevalcap's own COCOEvalCap (through pycocotools' COCO and loadRes) on the
same captions to 1e-6."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycocoevalcap.eval
import pytest
from pycocoevalcap.eval import COCOEvalCap
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocotools.coco import COCO

from tests.conftest import ROOT, RunCli, cli_env
from utils.evaluation.captions_files import Candidate, candidates_from_records, read_captions
from utils.evaluation.evaluate import Evaluation, evaluate
from utils.evaluation.files import MAX_CAPTION_CHARS, MAX_FILE_BYTES, READ_BUFFER_BYTES
from utils.evaluation.matching import Matching, check_distinct_names, match, unmatched_warnings
from utils.evaluation.pycoco import tokenize
from utils.evaluation.references import References, read_references
from utils.evaluation.scoring import METRICS, Scores, score
from utils.evaluation.summary import metrics_json, summary_text, write_metrics
from utils.support.errors import CaptionError

# (COCO id, file name, references, candidate): case, punctuation, quotes, brackets, non-ASCII, a line
# break inside a reference, an empty candidate and one of punctuation only, as COCO's captions have them.
IMAGES: list[tuple[int, str, list[str], str]] = [
    (42, "COCO_val2014_000000000042.jpg",
     ["A black cat sleeping on a red couch.", "a cat curled up asleep on a sofa", "A Cat lies on the couch, sleeping.",
      "black cat napping on red cushions", "The cat is sleeping on a couch. "],
     "A black cat sleeping on a couch."),
    (73, "COCO_val2014_000000000073.jpg",
     ["Two dogs run across a grassy field.", "two brown dogs running in the grass",
      "Dogs playing in a park on a sunny day.", "A pair of dogs racing over green grass!"],
     "two Dogs running in a field"),
    (74, "COCO_val2014_000000000074.jpg",
     ["A café with tables outside on the street.", "People sit at a sidewalk café.",
      "An outdoor café — chairs and umbrellas."],
     "A CAFÉ with people sitting outside"),
    (133, "COCO_val2014_000000000133.jpg", ["a train at the station", "A red train pulls into a station."], "..."),
    (136, "COCO_val2014_000000000136.jpg",
     ["A man holding an umbrella in the rain.", "Person with umbrella walking\nin the rain"], ""),
    (139, "COCO_val2014_000000000139.jpg",
     ["A small kitchen with white cabinets.", "a kitchen that has white cupboards and a stove",
      "White cabinets in a tiny kitchen."],
     'a (small) kitchen with "white" cabinets, isn\'t it?'),
    (143, "COCO_val2014_000000000143.jpg", ["A bus parked on the side of a road.", "a blue bus stopped by the curb"],
     "A bus parked on the side of a road."),
]
# Karpathy's file also has images of other splits, which --split test leaves out.
TRAIN_IMAGES = [(9, "COCO_train2014_000000000009.jpg", ["A plate of food on a table."], "")]
NAMES = {image_id: name for image_id, name, _, _ in IMAGES}


def write_coco(path: Path, images: list[tuple[int, str, list[str], str]] = IMAGES) -> Path:
    annotations = [{"image_id": image_id, "id": 1000 * image_id + k, "caption": caption}
                   for image_id, _, refs, _ in images for k, caption in enumerate(refs)]
    path.write_text(json.dumps({
        "info": {"description": "test"}, "licenses": [],
        "images": [{"id": image_id, "file_name": name, "height": 480, "width": 640} for image_id, name, _, _ in images],
        "annotations": annotations,
    }), encoding="utf-8")
    return path


def karpathy_document(images: list[tuple[int, str, list[str], str]] = IMAGES) -> dict[str, Any]:
    def entry(image_id: int, name: str, refs: list[str], split: str) -> dict[str, Any]:
        sentences = [{"raw": r, "tokens": r.lower().split(), "imgid": image_id, "sentid": k}
                     for k, r in enumerate(refs)]
        return {"filepath": name.split("_")[1], "filename": name, "imgid": image_id, "split": split,
                "sentences": sentences, "cocoid": image_id, "sentids": list(range(len(refs)))}

    entries = [entry(i, n, r, "train") for i, n, r, _ in TRAIN_IMAGES]
    entries += [entry(i, n, r, "test") for i, n, r, _ in images]
    return {"images": entries, "dataset": "coco"}


def write_karpathy(path: Path) -> Path:
    path.write_text(json.dumps(karpathy_document()), encoding="utf-8")
    return path


def write_table(path: Path, dialect: type[csv.Dialect], folder: str = "val2014/") -> Path:
    out = io.StringIO(newline="")
    writer = csv.writer(out, dialect=dialect)
    writer.writerow(["image", "caption"])
    for _, name, refs, _ in IMAGES:
        writer.writerows([folder + name, ref] for ref in refs)
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return path


def write_references(folder: Path, kind: str) -> Path:
    if kind == "coco":
        return write_coco(folder / "captions_val2014.json")
    if kind == "karpathy":
        return write_karpathy(folder / "dataset_coco.json")
    return write_table(folder / f"refs.{kind}", csv.excel_tab if kind == "tsv" else csv.excel)


def candidates() -> list[Candidate]:
    return candidates_from_records((f"photos/{name}", caption) for _, name, _, caption in IMAGES)


class _NoSpice:
    """COCOEvalCap's SPICE downloads Stanford CoreNLP at run time: left out of the reference run, as here."""

    def compute_score(self, gts: dict[Any, Any], res: dict[Any, Any]) -> tuple[float, list[float]]:
        return 0.0, [0.0] * len(gts)

    def method(self) -> str:
        return "SPICE"


def cocoevalcap(folder: Path, images: list[tuple[int, str, list[str], str]]) -> tuple[dict[str, float],
                                                                                       dict[str, dict[str, float]]]:
    """pycocoevalcap's own evaluation, as its example runs it: corpus and per-image scores by file name."""
    annotations = write_coco(folder / "annotations.json", images)
    results = folder / "results.json"
    results.write_text(json.dumps([{"image_id": i, "caption": c} for i, _, _, c in images]), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pycocoevalcap.eval, "Spice", _NoSpice)
        coco = COCO(str(annotations))
        coco_results = coco.loadRes(str(results))
        evaluation = COCOEvalCap(coco, coco_results)
        evaluation.params["image_id"] = coco_results.getImgIds()
        evaluation.evaluate()
    names = {image_id: name for image_id, name, _, _ in images}
    corpus = {k: v for k, v in evaluation.eval.items() if k != "SPICE"}
    per_image = {names[i]: {k: v for k, v in e.items() if k not in ("image_id", "SPICE")}
                 for i, e in evaluation.imgToEval.items()}
    return corpus, per_image


@pytest.fixture(scope="module")
def reference_scores(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    return cocoevalcap(tmp_path_factory.mktemp("cocoevalcap"), IMAGES)


def assert_same_scores(ours: Scores, theirs: tuple[dict[str, float], dict[str, dict[str, float]]]) -> None:
    corpus, per_image = theirs
    assert list(ours.corpus) == list(METRICS) and set(corpus) == set(METRICS)
    assert ours.corpus == pytest.approx(corpus, abs=1e-6, rel=0)
    assert set(ours.per_image) == set(per_image)
    for image, values in per_image.items():
        assert ours.per_image[image] == pytest.approx(values, abs=1e-6, rel=0), image


# --- the numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["coco", "karpathy", "csv", "tsv"])
def test_scores_equal_cocoevalcap_for_every_references_format(
        kind: str, tmp_path: Path, reference_scores: tuple[dict[str, float], dict[str, dict[str, float]]]) -> None:
    references = read_references(write_references(tmp_path, kind), "test" if kind == "karpathy" else None)
    assert references.format == kind
    evaluation = evaluate(candidates(), references)
    assert_same_scores(evaluation.scores, reference_scores)
    assert not evaluation.matching.without_references and not evaluation.matching.without_caption
    # The figures that COCOEvalCap's tokenization makes possible: the identical caption scores 1 (BLEU-1,
    # ROUGE-L), punctuation and case make no difference, the punctuation-only and empty captions score 0.
    assert evaluation.scores.per_image[NAMES[143]]["Bleu_1"] == pytest.approx(1.0)
    assert evaluation.scores.per_image[NAMES[143]]["ROUGE_L"] == pytest.approx(1.0)
    assert all(v == 0 for v in evaluation.scores.per_image[NAMES[133]].values())
    assert all(v == 0 for v in evaluation.scores.per_image[NAMES[136]].values())


def test_a_coco_results_file_scored_against_karpathy_ids_equals_cocoevalcap(
        tmp_path: Path, reference_scores: tuple[dict[str, float], dict[str, dict[str, float]]]) -> None:
    references = read_references(write_karpathy(tmp_path / "dataset_coco.json"), "test")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": i, "caption": c} for i, _, _, c in IMAGES]), encoding="utf-8")
    captions = read_captions(results, references)
    assert captions.format == "coco-results"
    assert_same_scores(evaluate(captions.candidates, references).scores, reference_scores)


def test_line_breaks_that_java_splits_on_are_spaces_and_shift_no_caption() -> None:
    # pycocoevalcap pairs the tokenizer's output lines with captions by position; a CR, VT, FF, U+2028 or
    # U+2029 inside a caption would split its line and move every later caption to the wrong image.
    captions = {"a": ["A dog\rruns.", "a dog\x0bruns", "a dog\x0cruns", "a dog\u2028runs", "a dog\u2029runs",
                      "a dog\r\nruns"], "b": ["A cat, sitting."]}
    assert tokenize(captions) == {"a": ["a dog runs"] * 6, "b": ["a cat sitting"]}


def test_the_tokenizer_runs_when_pycocoevalcap_s_folder_is_read_only(tmp_path: Path) -> None:
    """pycocoevalcap's PTBTokenizer writes its temporary file into its own package folder, which is
    read-only when another user installed it: simulated by refusing every write there."""
    package = Path(ptbtokenizer.__file__).resolve().parent.parent
    script = f"""
import os, sys
PACKAGE = {str(package)!r}
def refuse_writes(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.realpath(args[0]).startswith(PACKAGE + os.sep):
        if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied (read-only site-packages)", args[0])
sys.addaudithook(refuse_writes)
captions = {{"a": ["A cat, sitting."], "b": ["Two DOGS!"]}}
try:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    PTBTokenizer().tokenize({{k: [{{"caption": c}} for c in v] for k, v in captions.items()}})
    print("pycocoevalcap: wrote")
except PermissionError:
    print("pycocoevalcap: refused")
from utils.evaluation.pycoco import tokenize
print(tokenize(captions))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["pycocoevalcap: refused", "{'a': ['a cat sitting'], 'b': ['two dogs']}"]
    assert "PTBTokenizer tokenized" not in proc.stderr  # its Java's statistics line is kept off our stderr


def java_children() -> list[int]:
    """This process's child processes that run Java (Linux: /proc)."""
    children = []
    for task in Path("/proc/self/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children if "java" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]


def test_meteor_s_java_is_stopped_and_scores_are_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    before = java_children()
    scores = score({"a.jpg": ("a cat on a mat", ["A cat sits on the mat."]), "b.jpg": ("a dog", ["Dogs."])})
    assert java_children() == before == []
    out, err = capfd.readouterr()
    assert out == ""  # Bleu's verbose report, printed by default, would break --json on stdout
    assert "PTBTokenizer tokenized" not in err
    assert scores.images == 2 and list(scores.corpus) == list(METRICS)


def fake_java(folder: Path, meteor_exit: str = "", version_exit: str = "") -> Path:
    """A ``java`` that runs the real one, except where told to fail."""
    real = shutil.which("java")
    folder.mkdir()
    java = folder / "java"
    java.write_text(f"""#!/bin/sh
case "$*" in
  *meteor-1.5.jar*) {meteor_exit} ;;
  -version) {version_exit} ;;
esac
exec {real} "$@"
""")
    java.chmod(0o755)
    return folder


def test_a_meteor_that_dies_is_one_error_and_no_hang(tmp_path: Path) -> None:
    # When Meteor's compute_score fails midway it keeps its lock, and its __del__ would wait for it forever
    # (at the latest when the interpreter exits).
    bin_dir = fake_java(tmp_path / "bin", meteor_exit='echo "Error: no memory for METEOR" >&2; exit 3')
    script = """
from utils.support.errors import CaptionError
from utils.evaluation.scoring import score
try:
    score({"a.jpg": ("a cat", ["a cat on a mat"])})
except CaptionError as error:
    print(error)
"""
    env = cli_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "METEOR (Java) stopped before it finished: Error: no memory for METEOR\n"


def test_nothing_to_score_is_one_error() -> None:
    with pytest.raises(CaptionError, match="^no image has both a caption and references: nothing to score$"):
        score({})


def test_a_caption_too_long_to_score_is_refused_before_java_starts() -> None:
    with pytest.raises(CaptionError, match=f"a.jpg: its caption is {MAX_CAPTION_CHARS + 1} characters long"):
        score({"a.jpg": ("a" * (MAX_CAPTION_CHARS + 1), ["a cat"])})


# --- pycocoevalcap and Java missing --------------------------------------------------------------------


def require(env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    script = f"""{prelude}
from utils.support.errors import CaptionError
from utils.evaluation.pycoco import require_evaluation
try:
    require_evaluation("--references")
    print("ok")
except CaptionError as error:
    print(error)
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(env),
                          timeout=120, cwd=ROOT)


def test_require_evaluation_passes_here() -> None:
    assert require({}).stdout == "ok\n"


def test_require_evaluation_names_the_debian_package_when_java_is_missing(tmp_path: Path) -> None:
    proc = require({"PATH": str(tmp_path)})  # python itself is run by its full path
    assert proc.stdout == ("--references needs Java for pycocoevalcap's tokenizer and METEOR, and no java is on "
                           "PATH: install Java (Debian package default-jre-headless: apt-get install "
                           "default-jre-headless)\n")


def test_require_evaluation_when_java_does_not_run(tmp_path: Path) -> None:
    bin_dir = fake_java(tmp_path / "bin", version_exit='echo "Error: could not create the Java VM." >&2; exit 1')
    proc = require({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert proc.stdout == ("--references needs Java, and `java -version` failed (Error: could not create the Java "
                           "VM.): install Java (Debian package default-jre-headless: apt-get install "
                           "default-jre-headless)\n")


def test_require_evaluation_names_the_requirements_file_when_pycocoevalcap_is_missing() -> None:
    proc = require({}, prelude="import sys; sys.modules['pycocoevalcap'] = None")
    assert proc.stdout == ("--references needs pycocoevalcap, which is not installed: "
                           "python3 -m pip install -r requirements-eval.txt\n")


# --- references: formats -------------------------------------------------------------------------------


def expected_images() -> dict[str, tuple[str, ...]]:
    return {name: tuple(refs) for _, name, refs, _ in IMAGES}


@pytest.mark.parametrize("kind", ["coco", "karpathy", "csv", "tsv"])
def test_each_references_format_is_told_by_its_content(kind: str, tmp_path: Path) -> None:
    path = write_references(tmp_path, kind)
    hidden = path.rename(tmp_path / "references.dat")  # the extension says nothing
    references = read_references(hidden, "test" if kind == "karpathy" else None)
    assert references.format == kind
    assert {name: image.captions for name, image in references.images.items()} == expected_images()
    ids = {name: image.image_id for name, image in references.images.items()}
    assert ids == ({name: None for name in NAMES.values()} if kind in ("csv", "tsv")
                   else {name: i for i, name in NAMES.items()})


def test_karpathy_without_split_keeps_every_split(tmp_path: Path) -> None:
    references = read_references(write_karpathy(tmp_path / "dataset_coco.json"))
    assert list(references.images) == [TRAIN_IMAGES[0][1], *NAMES.values()] and references.split is None
    train = read_references(tmp_path / "dataset_coco.json", "train")
    assert list(train.images) == [TRAIN_IMAGES[0][1]] and train.split == "train"


def test_an_unknown_split_lists_the_splits_present(tmp_path: Path) -> None:
    path = write_karpathy(tmp_path / "dataset_coco.json")
    with pytest.raises(CaptionError, match=r"dataset_coco.json has no split 'val'; its splits are: test, train$"):
        read_references(path, "val")


@pytest.mark.parametrize("kind", ["coco", "csv", "tsv"])
def test_split_is_refused_for_other_formats(kind: str, tmp_path: Path) -> None:
    refused = "^--split is for Karpathy's dataset JSON; .* is (COCO captions JSON|CSV|TSV)$"
    with pytest.raises(CaptionError, match=refused):
        read_references(write_references(tmp_path, kind), "test")


def test_a_spreadsheet_s_csv_with_a_byte_order_mark_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "refs.csv"
    path.write_bytes("\ufeffid,Image , Caption\r\n1,a.jpg,A cat.\r\n2,a.jpg,\"A cat, asleep\"\r\n\r\n3,b.png,dog\r\n"
                     .encode())
    references = read_references(path)
    assert {n: i.captions for n, i in references.images.items()} == {"a.jpg": ("A cat.", "A cat, asleep"),
                                                                     "b.png": ("dog",)}


def test_a_table_read_a_block_at_a_time_is_what_csv_reads_in_one(tmp_path: Path) -> None:
    # Far more than one block (READ_BUFFER_BYTES), with every kind of line break, quoted breaks and
    # characters of 2 to 4 bytes: blocks must end neither inside a character nor inside a line break.
    rows = [("image", "caption")] + [(f"{i % 700}.jpg", f"café {i} 猫\r\nline two 😺" if i % 3 else f"dog {i}")
                                     for i in range(12_000)]
    breaks = ["\r\n", "\n", "\r"]
    text = "".join(",".join(f'"{field}"' if "\n" in field else field for field in row) + breaks[i % 3]
                   for i, row in enumerate(rows))
    path = tmp_path / "refs.csv"
    path.write_bytes(text.encode())
    assert path.stat().st_size > 3 * READ_BUFFER_BYTES
    expected: dict[str, list[str]] = {}
    for name, caption in list(csv.reader(io.StringIO(text, newline="")))[1:]:
        expected.setdefault(name, []).append(caption)
    assert {n: list(i.captions) for n, i in read_references(path).images.items()} == expected


def test_one_word_captions_are_held_once(tmp_path: Path) -> None:
    path = tmp_path / "refs.csv"
    path.write_text("image,caption\na.jpg,cat\nb.jpg,cat\na.jpg,cat\nc.jpg,cat\n")
    images = read_references(path).images
    assert images["a.jpg"].captions == ("cat", "cat") and images["b.jpg"].captions == ("cat",)
    assert images["b.jpg"] is images["c.jpg"] and images["a.jpg"].captions[0] is images["a.jpg"].captions[1]


def test_coco_images_without_annotations_are_not_references(tmp_path: Path) -> None:
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                                "annotations": [{"image_id": 2, "caption": "x"}]}))
    assert list(read_references(path).images) == ["b.jpg"]


# --- references: malformed -----------------------------------------------------------------------------


def coco_with(images: list[Any], annotations: Any) -> str:
    return json.dumps({"images": images, "annotations": annotations})


NEVER_CLOSED = "the quote that opens a field there is never closed"
GOOD_IMAGE = {"id": 1, "file_name": "val2014/a.jpg"}
GOOD_ANNOTATION = {"image_id": 1, "caption": "a cat"}
MALFORMED_REFERENCES = [
    ("{not json", "refs.dat is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("not json {", "refs.dat is not a references file: expected COCO captions JSON"),
    ("{\"images\": [", "refs.dat is not valid JSON: Expecting value at line 1 column 13"),
    ("[{\"image_id\": 1, \"caption\": \"x\"}]",
     "refs.dat is not a references file: it is a list (a COCO results file?)"),
    ("{\"type\": \"captions\"}", "refs.dat is not a references file: it is JSON without an images list"),
    (coco_with([GOOD_IMAGE], {}), "refs.dat: annotations is not a list"),
    (coco_with([GOOD_IMAGE, 7], [GOOD_ANNOTATION]), "refs.dat: images[1] is not an object"),
    (coco_with([{"id": "1", "file_name": "a.jpg"}], []), "refs.dat: images[0] has no integer id"),
    (coco_with([{"id": True, "file_name": "a.jpg"}], []), "refs.dat: images[0] has no integer id"),
    (coco_with([{"id": 1}], []), "refs.dat: images[0] has no file_name"),
    (coco_with([{"id": 1, "file_name": "val2014/"}], []), "refs.dat: images[0] has no file_name"),
    (coco_with([GOOD_IMAGE, {"id": 2, "file_name": "train2014/a.jpg"}], []),
     "refs.dat: images[1]: two images are named a.jpg, with ids 1 and 2; references are matched by file name"),
    (coco_with([GOOD_IMAGE, {"id": 1, "file_name": "b.jpg"}], []), "refs.dat: images[1]: id 1 is both a.jpg and b.jpg"),
    (coco_with([GOOD_IMAGE], [GOOD_ANNOTATION] * 12 + [{"image_id": 1}]), "refs.dat: annotations[12] has no caption"),
    (coco_with([GOOD_IMAGE], [GOOD_ANNOTATION, {"image_id": 1, "caption": ["a", "cat"]}]),
     "refs.dat: annotations[1] has no caption"),
    (coco_with([GOOD_IMAGE], ["a cat"]), "refs.dat: annotations[0] is not an object"),
    (coco_with([GOOD_IMAGE], [{"caption": "a cat"}]), "refs.dat: annotations[0] has no integer image_id"),
    (coco_with([GOOD_IMAGE], [{"image_id": 5, "caption": "a cat"}]),
     "refs.dat: annotations[0]: image_id 5 is not among the images"),
    (coco_with([GOOD_IMAGE], [{"image_id": 1, "caption": "x" * (MAX_CAPTION_CHARS + 1)}]),
     f"refs.dat: annotations[0]: its caption is {MAX_CAPTION_CHARS + 1} characters long, more than the "
     f"{MAX_CAPTION_CHARS} scored"),
    (coco_with([GOOD_IMAGE], [{"image_id": 1, "caption": "a \ud800 cat"}]),
     "refs.dat: annotations[0]: its caption is not valid UTF-8 text"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "test"}]}),
     "refs.dat: images[0] has no sentences; expected COCO captions JSON"),
    (json.dumps({"images": [{"filename": "a.jpg", "sentences": [{"tokens": ["a"]}]}]}),
     "refs.dat: images[0].sentences[0] has no caption"),
    (json.dumps({"images": [{"sentences": [{"raw": "a"}]}]}), "refs.dat: images[0] has no filename"),
    (json.dumps({"images": [{"filename": "a.jpg", "sentences": []}, {"filename": "x/a.jpg", "sentences": []}]}),
     "refs.dat: images[1] has the file name a.jpg of images[0]; references are matched by file name"),
    ("file,text\na.jpg,a cat\n", "refs.dat is not a references file: expected COCO captions JSON"),
    ("", "refs.dat is not a references file: expected COCO captions JSON"),
    ("image,caption\na.jpg,a cat\nb.jpg\n", "refs.dat: line 3 has 1 fields, not the image and its caption"),
    ("image,caption\n,a cat\n", "refs.dat: line 2 has no image"),
    ("image,caption\na.jpg," + "x" * 140_000 + "\n", "refs.dat: line 2: field larger than field limit"),
    # A quote never closed: csv's reader would close it at the end of the file (the rest one caption).
    ('image,caption\na.jpg,"a cat\nb.jpg,a dog\n', f"refs.dat: line 2: {NEVER_CLOSED}"),
    ('image,caption\na.jpg,"a cat', f"refs.dat: line 2: {NEVER_CLOSED}"),
    ('image,caption\na.jpg,"two\nlines"\n\nb.jpg,"x ""y""\nc.jpg,z',
     f"refs.dat: line 5: {NEVER_CLOSED}"),
    ('image,caption\r\na.jpg,"a\rb"\rb.jpg,"c\r\nd\r\n', f"refs.dat: line 4: {NEVER_CLOSED}"),
    ('image,"caption\na.jpg,a cat\n', f"refs.dat: line 1: {NEVER_CLOSED}"),
    ('image\tcaption\na.jpg\t"a cat\nb.jpg\ta dog\n', f"refs.dat: line 2: {NEVER_CLOSED}"),
    ('image,caption\na.jpg,"a cat\n' + "b.jpg,a dog\n" * 200, f"refs.dat: line 2: {NEVER_CLOSED}"),
    ('image,caption\na.jpg,"a cat\n' + "b.jpg,a dog\n" * 12_000,
     "refs.dat: line 2: field larger than field limit (131072), in a quoted field that runs on to line 10925; "
     "is its closing quote missing?"),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED_REFERENCES)
def test_malformed_references_are_one_line_errors(content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "refs.dat"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CaptionError) as caught:
        read_references(path)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path}/{message}"), str(caught.value)


def test_karpathy_split_missing_on_an_image(tmp_path: Path) -> None:
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "sentences": [{"raw": "a"}], "split": "test"},
                                           {"filename": "b.jpg", "sentences": [{"raw": "b"}]}]}))
    with pytest.raises(CaptionError, match=r"refs.json: images\[1\] has no split$"):
        read_references(path, "test")


def test_a_references_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "refs.csv"
    path.write_bytes(b"image,caption\na.jpg,caf\xe9\n")
    with pytest.raises(CaptionError, match=r"refs.csv is not UTF-8 text \(byte 23\); expected"):
        read_references(path)
    path.write_bytes(b"\xef\xbb\xbfimage,caption\n" + b"a.jpg,a cat\n" * 20_000 + b"b.jpg,caf\xe9\n")
    with pytest.raises(CaptionError, match=r"refs.csv is not UTF-8 text \(byte 240026\); expected"):
        read_references(path)  # the offset in the file, beyond the first block, byte order mark included
    path.write_bytes(b'\xef\xbb\xbf{"images": "caf\xe9"}')
    with pytest.raises(CaptionError, match=r"refs.csv is not UTF-8 text \(byte 18\); expected"):
        read_references(path)


def test_a_references_file_too_large_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written, nothing must be read
    with pytest.raises(CaptionError, match="huge.json is larger than 256 MB, more than any references file"):
        read_references(path)


def test_a_references_fifo_is_refused_not_waited_for(tmp_path: Path) -> None:
    fifo = tmp_path / "refs.json"
    os.mkfifo(fifo)
    with pytest.raises(CaptionError, match="refs.json is not a regular file"):
        read_references(fifo)


def test_a_references_folder_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptionError, match="is a folder, not a file$"):
        read_references(tmp_path)
    with pytest.raises(CaptionError, match="cannot read the references file .*nothing.json: No such file"):
        read_references(tmp_path / "nothing.json")


# --- references: memory (docs/limits.md) -----------------------------------------------------------------

ONE_WORD = ("cat", "dog", "bird", "car", "tree")


def one_word_table(rows: int) -> str:
    return "image,caption\n" + "".join(f"COCO_val2014_{i:012d}.jpg,{ONE_WORD[i % 5]}\n" for i in range(rows))


def one_word_coco(images: int) -> str:
    return json.dumps({"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(images)],
                       "annotations": [{"image_id": i // 5, "id": i, "caption": ONE_WORD[i % 5]}
                                       for i in range(5 * images)]})


def karpathy_like(images: int) -> str:
    entries = []
    for i in range(images):
        raws = [f"A {ONE_WORD[(i + k) % 5]} sitting on a table next to a {ONE_WORD[k]} number {i}." for k in range(5)]
        entries.append({"filepath": "val2014", "sentids": list(range(5 * i, 5 * i + 5)), "imgid": i, "cocoid": i,
                        "filename": f"COCO_val2014_{i:012d}.jpg", "split": "test",
                        "sentences": [{"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": i,
                                       "sentid": 5 * i + k} for k, raw in enumerate(raws)]})
    return json.dumps({"images": entries, "dataset": "coco"})


def peak_growth(path: Path) -> int:
    """How far a fresh process's peak resident memory grows while it reads ``path``, in bytes. VmHWM, not
    ru_maxrss: a child inherits its parent's ru_maxrss (pytest's, here)."""
    child = ("import re, sys; from pathlib import Path; from utils.evaluation.references import read_references; "
             "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]) * 1024; "
             "base = hwm(); read_references(Path(sys.argv[1])); print(hwm() - base)")
    proc = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


# Measured: 3.7, 6.1 and 2.7 times (20.5, 9.4 and 8.3 before the references were held compactly). A few
# megabytes each, so a second or two; docs/limits.md has the figures for 255 MB files.
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
@pytest.mark.parametrize(("make", "size", "at_most"), [(one_word_table, 100_000, 5.0), (one_word_coco, 20_000, 7.5),
                                                       (karpathy_like, 4_000, 4.0)])
def test_reading_references_takes_a_few_times_the_file_in_memory(make: Any, size: int, at_most: float,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "refs"
    path.write_text(make(size), encoding="utf-8")
    assert peak_growth(path) < at_most * path.stat().st_size


# --- captions files ------------------------------------------------------------------------------------


@pytest.fixture
def table_references(tmp_path: Path) -> References:
    return read_references(write_table(tmp_path / "refs.csv", csv.excel))


def test_json_lines_with_a_failed_record_and_a_name_that_is_not_utf8(tmp_path: Path,
                                                                      table_references: References) -> None:
    odd = b"photos/caf\xe9.jpg"
    lines = [json.dumps({"input": f"photos/{name}", "caption": caption, "model": "fc_nsc"}).encode()
             for _, name, _, caption in IMAGES[:3]]
    lines.insert(1, b'{"input": "photos/broken.jpg", "caption": null, "error": "not an image"}')
    lines.append(b'{"input": "' + odd + b'", "caption": "a cup"}')
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    captions = read_captions(path, table_references)
    assert captions.format == "jsonl"
    assert [(c.name, c.caption) for c in captions.candidates] == [
        (f"photos/{IMAGES[0][1]}", IMAGES[0][3]), ("photos/broken.jpg", None),
        (f"photos/{IMAGES[1][1]}", IMAGES[1][3]), (f"photos/{IMAGES[2][1]}", IMAGES[2][3]),
        (os.fsdecode(odd), "a cup")]
    matching = match(captions.candidates, table_references)
    assert list(matching.pairs) == [name for _, name, _, _ in IMAGES[:3]]
    assert matching.failed == ["photos/broken.jpg"] and matching.without_references == [os.fsdecode(odd)]
    assert matching.without_caption == [name for _, name, _, _ in IMAGES[3:]]


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_this_program_s_tables(kind: str, tmp_path: Path, table_references: References) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, dialect=csv.excel_tab if kind == "tsv" else csv.excel)
    writer.writerow(["input", "caption", "confidence", "output", "metadata", "error"])
    writer.writerow([f"photos/{IMAGES[0][1]}", IMAGES[0][3], -0.5, "", "", ""])
    writer.writerow(["photos/bad.png", "", "", "", "", "photos/bad.png is not an image"])
    writer.writerow([f"photos/{IMAGES[4][1]}", "", "", "", "", ""])  # an empty caption is a caption
    writer.writerow([f"photos/{IMAGES[5][1]}", IMAGES[5][3], -0.1, "", "failed", "exiftool: cannot write"])
    path = tmp_path / f"captions.{kind}"
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    captions = read_captions(path, table_references)
    assert captions.format == kind
    assert [(c.key, c.caption) for c in captions.candidates] == [
        (IMAGES[0][1], IMAGES[0][3]), ("bad.png", None), (IMAGES[4][1], ""), (IMAGES[5][1], IMAGES[5][3])]


def test_coco_results_are_matched_through_the_references_ids(tmp_path: Path) -> None:
    references = read_references(write_coco(tmp_path / "captions_val2014.json"))
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": 73, "caption": "dogs", "id": 5}, {"image_id": 999, "caption": "x"}]))
    captions = read_captions(path, references)
    assert captions.candidates == [Candidate(NAMES[73], NAMES[73], "dogs"), Candidate("image_id 999", None, "x")]
    matching = match(captions.candidates, references)
    assert list(matching.pairs) == [NAMES[73]] and matching.without_references == ["image_id 999"]


MALFORMED_CAPTIONS = [
    ('{"input": "a.jpg", "caption": "x"}\nnot json\n', "captions.dat: line 2 is not a JSON object"),
    ('{"input": "a.jpg", "caption": "x"}\n[1]\n', "captions.dat: line 2 is not a JSON object"),
    ('{"time": 1.0, "frame": 10, "caption": "x"}\n', "captions.dat holds a video's captions (time, frame)"),
    ('{"caption": "x"}\n', "captions.dat: line 1 has no input"),
    ('{"input": "a.jpg"}\n', "captions.dat: line 1 has no caption"),
    ('{"input": "a.jpg", "caption": 3}\n', "captions.dat: line 1 has no caption"),
    ('{"input": "a.jpg", "caption": "\\udcff"}\n', "captions.dat: line 1: its caption is not valid UTF-8 text"),
    ("time,frame,caption,confidence\n0.0,0,x,\n", "captions.dat holds a video's captions (time, frame)"),
    ("a.jpg: a cat\n", "captions.dat: expected this program's --json output"),
    ("input,caption\n\"\",x\n", "captions.dat: line 2 has no input and caption"),
    ("input,caption\na.jpg\n", "captions.dat: line 2 has no input and caption"),
    ("input\tcaption\na.jpg\t" + "x" * 140_000 + "\n", "captions.dat: line 2: field larger than field limit"),
    ("input,caption\na.jpg," + "x" * 2001 + "\n", "captions.dat: line 2: its caption is 2001 characters long"),
    ('[{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}]',
     "captions.dat: [0] and [1] are both captions of image_id 1; keep one caption per image"),
    ('[{"image_id": "1", "caption": "x"}]', "captions.dat: [0] has no integer image_id"),
    ('[{"image_id": 1}]', "captions.dat: [0] has no caption"),
    ('[{"image_id": 1, "caption": "x"}', "captions.dat is not valid JSON"),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED_CAPTIONS)
def test_malformed_captions_files_are_one_line_errors(content: str, message: str, tmp_path: Path) -> None:
    references = read_references(write_coco(tmp_path / "refs.json"))
    path = tmp_path / "captions.dat"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(CaptionError) as caught:
        read_captions(path, references)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path}/{message}"), str(caught.value)


def test_coco_results_need_references_with_ids(tmp_path: Path, table_references: References) -> None:
    path = tmp_path / "results.json"
    path.write_text('[{"image_id": 42, "caption": "a cat"}]')
    with pytest.raises(CaptionError, match="is a COCO results file, which names images by COCO id, and the "
                                           "references .*refs.csv give no ids"):
        read_captions(path, table_references)


def test_this_program_s_real_output_in_each_format(run_cli: RunCli, models: Path, photos: list[Path],
                                                   tmp_path: Path) -> None:
    """The real CLI's --json and --format csv/tsv output, read back: the same captions, matched by name."""
    cat, crop, wide = photos[0], photos[1], photos[2]
    refs = tmp_path / "refs.csv"
    refs.write_text(f"image,caption\n{cat.name},a cat on a chair\n{cat.name},A cat.\n{crop.name},a close-up of a cat\n"
                    "other.jpg,a dog\n")
    references = read_references(refs)
    outputs = {}
    for fmt in ("json", "csv", "tsv"):
        proc = run_cli("-i", cat, crop, wide, tmp_path / "missing.png", "--format", fmt, "--model-dir", models,
                       "--offline", "--onnx", "--beam-size", "1")
        assert proc.returncode == 1  # missing.png fails
        outputs[fmt] = tmp_path / f"out.{fmt}"
        outputs[fmt].write_text(proc.stdout, encoding="utf-8")
    records = [json.loads(line) for line in outputs["json"].read_text().splitlines()]
    made = [(r["input"], r["caption"]) for r in records]
    assert made[3] == (str(tmp_path / "missing.png"), None)
    for fmt, path in outputs.items():
        captions = read_captions(path, references)
        assert captions.format == {"json": "jsonl"}.get(fmt, fmt)
        assert [(c.name, c.caption) for c in captions.candidates] == made
        matching = match(captions.candidates, references)
        assert {k: c for k, (c, _) in matching.pairs.items()} == {cat.name: made[0][1], crop.name: made[1][1]}
        assert matching.without_references == [str(wide)]
        assert matching.failed == [str(tmp_path / "missing.png")] and matching.without_caption == ["other.jpg"]


# --- matching, the summary and the metrics file --------------------------------------------------------


def test_inputs_that_share_a_file_name_are_refused() -> None:
    check_distinct_names(["a/x.jpg", "a/y.jpg"])
    with pytest.raises(CaptionError, match="^the inputs a/x.jpg and b/x.jpg are both named x.jpg; references are "
                                           "matched by file name, so each input needs a name of its own$"):
        check_distinct_names(["a/x.jpg", "b/x.jpg"])


def test_unmatched_warnings_name_the_first_five_then_count(table_references: References) -> None:
    extra = candidates_from_records([(f"more/extra{i}.jpg", "a cat") for i in range(7)])
    matching = match([*extra, *candidates()[:1], Candidate("broken.jpg", "broken.jpg", None)], table_references)
    assert unmatched_warnings(matching, table_references) == [
        f"7 captions have no references in {table_references.source}, not scored: more/extra0.jpg, more/extra1.jpg, "
        "more/extra2.jpg, more/extra3.jpg, more/extra4.jpg and 2 more",
        f"6 images of {table_references.source} got no caption, not scored: "
        + ", ".join(name for _, name, _, _ in IMAGES[1:6]) + " and 1 more",
        "1 input has no caption (failed), not scored: broken.jpg",
    ]


def test_names_in_warnings_are_escaped_and_shortened(table_references: References) -> None:
    name = "a\nb" + "x" * 200 + ".jpg"
    matching = match(candidates_from_records([(name, "a cat")]), table_references)
    line = unmatched_warnings(matching, table_references)[0]
    assert "\n" not in line and "a\\x0ab" in line and len(line) < 300


def fixed_evaluation(references: References) -> Evaluation:
    scores = Scores(dict(zip(METRICS, [0.71234, 0.5, 0.4, 0.3, 0.25, 0.5, 0.9536], strict=True)),
                    {"a.jpg": dict.fromkeys(METRICS, 0.5)})
    return Evaluation(references, Matching({}, {}, ["x.jpg"], ["b.jpg", "c.jpg"], []), scores)


def test_the_summary_for_people(table_references: References) -> None:
    text = summary_text(fixed_evaluation(table_references))
    assert text.splitlines() == [
        f"caption quality: 1 image scored against {table_references.source} (CSV)",
        "  Bleu_1   0.712", "  Bleu_2   0.500", "  Bleu_3   0.400", "  Bleu_4   0.300", "  METEOR   0.250",
        "  ROUGE_L  0.500", "  CIDEr    0.954",
        "not scored: 1 without references, 2 reference images without a caption",
    ]


def test_the_metrics_file_has_exactly_the_metrics_at_the_top(tmp_path: Path, table_references: References) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old")
    write_metrics(path, fixed_evaluation(table_references))
    data = json.loads(path.read_text())
    assert [k for k, v in data.items() if not isinstance(v, dict)] == list(METRICS)
    assert data == {**fixed_evaluation(table_references).scores.corpus,
                    "images": {"scored": 1, "without_references": 1, "without_caption": 2, "failed": 0},
                    "references": {"format": "csv", "split": None, "images": 7, "captions": 21}}
    assert metrics_json(fixed_evaluation(table_references)) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "refs.csv"]  # no temporary file left


def test_the_metrics_file_is_never_written_through_a_link(tmp_path: Path, table_references: References) -> None:
    target = tmp_path / "target.json"
    target.write_text("keep")
    (tmp_path / "metrics.json").symlink_to(target)
    with pytest.raises(CaptionError, match="it is a symbolic link"):
        write_metrics(tmp_path / "metrics.json", fixed_evaluation(table_references))
    assert target.read_text() == "keep"


def test_a_java_gone_after_the_check_is_one_error(tmp_path: Path) -> None:
    script = """
from utils.support.errors import CaptionError
from utils.evaluation.pycoco import tokenize
try:
    tokenize({"a": ["a cat"]})
except CaptionError as error:
    print(error)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=cli_env({"PATH": str(tmp_path)}), timeout=120)
    assert proc.stdout == ("cannot run pycocoevalcap's PTB tokenizer (Java): No such file or directory\n"), proc.stderr
