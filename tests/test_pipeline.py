"""The ordered, bounded pipeline (utils/engine/pipeline.py), Captioner.caption_many, and image mode's --workers."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, RunCli, cli_env
from tests.reference import imread
from utils.decoding.options import DecodingOptions
from utils.engine.captioner import Captioner, CaptionerOptions, CaptionItem, default_workers
from utils.engine.pipeline import ordered_map
from utils.engine.preprocess import read_image
from utils.engine.runtime import RuntimeOptions
from utils.support.errors import CaptionError
from utils.support.stopping import StopRequest


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("reader-", "worker-"))]


def test_results_come_back_in_input_order_whatever_finishes_first() -> None:
    rng = random.Random(3)
    delays = [rng.uniform(0, 0.01) for _ in range(60)]

    def slow(x: int) -> int:
        time.sleep(delays[x])
        return x * x

    got = [(d.index, d.item, d.value) for d in ordered_map(range(60), lambda x: x, [slow] * 4, readers=3)]
    assert got == [(i, i, i * i) for i in range(60)]
    assert _pipeline_threads() == []


def test_a_caption_error_is_that_items_result_and_the_rest_go_on() -> None:
    def prepare(x: int) -> int:
        if x == 2:
            raise CaptionError("cannot read two")
        return x

    def work(x: int) -> int:
        if x == 5:
            raise CaptionError("cannot caption five")
        return -x

    done = list(ordered_map(range(8), prepare, [work, work]))
    assert [d.index for d in done] == list(range(8))
    assert [str(d.error) if d.error else d.value for d in done] == [
        0, -1, "cannot read two", -3, -4, "cannot caption five", -6, -7]


@pytest.mark.parametrize("where", ["prepare", "work", "source"])
def test_an_unexpected_exception_is_raised_at_its_turn_and_every_thread_ends(where: str) -> None:
    def source() -> Iterator[int]:
        for x in range(10):
            if where == "source" and x == 4:
                raise ZeroDivisionError("source")
            yield x

    def prepare(x: int) -> int:
        if where == "prepare" and x == 4:
            raise ZeroDivisionError("prepare")
        return x

    def work(x: int) -> int:
        if where == "work" and x == 4:
            raise ZeroDivisionError("work")
        return x

    seen = []
    with pytest.raises(ZeroDivisionError, match=where):
        for d in ordered_map(source(), prepare, [work, work], readers=2):
            seen.append(d.value)
    assert seen == [0, 1, 2, 3]
    assert _pipeline_threads() == []


@pytest.mark.parametrize(("workers", "readers", "ahead"), [(1, 1, 3), (3, 2, 5), (4, 4, 4)])
def test_no_more_than_ahead_items_exist_at_once_however_slow_the_caller(workers: int, readers: int,
                                                                        ahead: int) -> None:
    alive = 0
    most = 0
    lock = threading.Lock()

    def prepare(x: int) -> int:
        nonlocal alive, most
        with lock:
            alive += 1
            most = max(most, alive)
        return x

    for d in ordered_map(range(200), prepare, [lambda x: x] * workers, readers=readers, ahead=ahead):
        time.sleep(0.0005 if d.index % 7 else 0.005)  # a caller slower than the workers now and then
        with lock:
            alive -= 1  # the caller is through with this item
    assert 1 < most <= ahead


def test_a_lazy_endless_source_is_read_only_as_far_as_needed() -> None:
    taken = []

    def endless() -> Iterator[int]:
        for x in itertools.count():
            taken.append(x)
            yield x

    results = ordered_map(endless(), lambda x: x, [lambda x: x, lambda x: x], ahead=6)
    first = [d.value for d in itertools.islice(results, 10)]
    results.close()  # type: ignore[attr-defined]  # a generator
    assert first == list(range(10))
    assert len(taken) <= 10 + 6 + 1
    assert _pipeline_threads() == []


def test_closing_early_waits_for_the_item_a_worker_holds() -> None:
    finished: list[int] = []
    started = threading.Event()

    def work(x: int) -> int:
        started.set()
        time.sleep(0.2)
        finished.append(x)
        return x

    results = ordered_map(range(100), lambda x: x, [work, work])
    next(results)
    started.wait()
    results.close()  # type: ignore[attr-defined]
    assert _pipeline_threads() == []  # nothing is left running inside a model when close returns
    assert len(finished) < 10


@pytest.mark.parametrize("insist", [False, True])
def test_a_stop_request_ends_the_results_and_insisting_stops_waiting(insist: bool) -> None:
    """A Ctrl-C (the stop request set) ends the results before the next one; the item a worker holds
    is still waited for, unless a second Ctrl-C insists."""

    def work(x: int) -> int:
        time.sleep(1.0)
        return x

    stop = StopRequest()
    results = ordered_map(range(100), lambda x: x, [work], stop=stop)
    assert next(results).value == 0  # the worker is on item 1 now
    stop.request(signal.SIGINT)
    if insist:
        stop.request(signal.SIGINT)
    assert list(results) == []
    try:
        assert ("worker-0" in _pipeline_threads()) is insist
    finally:
        for thread in threading.enumerate():
            if thread.name.startswith(("reader-", "worker-")):
                thread.join()


def test_unordered_results_come_as_they_finish_with_no_more_runs_than_workers() -> None:
    """Item 0 is held until every other item has been handed back: in order that could never happen
    (the wait gives up, and the test fails); unordered, the others come first."""
    others_done = threading.Event()
    running, most = 0, 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        if x == 0:
            others_done.wait(30)
        with lock:
            running -= 1
        return x

    seen = []
    for done in ordered_map(range(20), lambda x: x, [work, work, work], ordered=False):
        assert done.value == done.index == done.item
        seen.append(done.index)
        if len(seen) == 19:
            others_done.set()
    assert sorted(seen) == list(range(20)) and seen[-1] == 0 and others_done.is_set()
    assert most <= 3
    assert _pipeline_threads() == []


@pytest.fixture(scope="module")
def two_workers(model_set_dir: tuple[Path, object]) -> Captioner:
    return Captioner(CaptionerOptions(model_dir=model_set_dir[0], offline=True, progress=False, workers=2,
                                      runtime=RuntimeOptions(backend="onnxruntime")))


def test_caption_many_gives_what_caption_gives_in_order(two_workers: Captioner, photos: list[Path]) -> None:
    assert two_workers.workers == 2
    images = [read_image(p) for p in photos] * 3
    for options in (DecodingOptions(beam_size=1), DecodingOptions(beam_size=3, nbest=2)):
        one_by_one = [two_workers.caption(image, options) for image in images]
        many = list(two_workers.caption_many(iter(images), options))
        assert [m.source is image for m, image in zip(many, images, strict=True)] == [True] * len(images)
        assert [m.result.caption if m.result else None for m in many] == [r.caption for r in one_by_one]
        assert [m.result.nbest if m.result else None for m in many] == [r.nbest for r in one_by_one]
        assert all(m.error is None and m.image is None for m in many)


def test_caption_many_takes_each_items_own_options(two_workers: Captioner, photos: list[Path]) -> None:
    """A service's requests: each with its decoding options, results handed back as they finish."""
    asked = [(path, DecodingOptions(beam_size=1 + i % 3, max_length=2 + i)) for i, path in enumerate(photos * 2)]
    items = [CaptionItem((path, options), lambda item: read_image(item[0]), options) for path, options in asked]
    results = {(str(d.source[0]), d.source[1]): d.result for d in two_workers.caption_many(items, ordered=False)}
    assert len(results) == len(asked)
    for path, options in asked:
        result = results[(str(path), options)]
        assert result is not None
        assert result.caption == two_workers.caption(read_image(path), options).caption
        assert options.max_length is not None and len(result.indices) <= options.max_length
    with pytest.raises(ValueError, match="repeats"):
        next(two_workers.caption_many(photos, ordered=False, repeats=2))


def test_caption_many_reads_paths_and_reports_each_failure_in_place(two_workers: Captioner, photos: list[Path],
                                                                    tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths = [photos[0], broken, photos[1], tmp_path / "missing.png", photos[2]]
    many = list(two_workers.caption_many(CaptionItem(path, read_image, keep_image=True) for path in paths))
    assert [m.source for m in many] == paths
    assert [m.error is not None for m in many] == [False, True, False, True, False]
    assert "broken.jpg is not an image" in str(many[1].error) and "missing.png" in str(many[3].error)
    for m in (many[0], many[2], many[4]):
        assert m.result is not None and m.image is not None
        assert np.array_equal(m.image, imread(m.source))
        assert m.result.caption == two_workers.caption(m.image).caption
        assert set(m.result.timings) == {"read", "preprocess", "features", "decode"}


def test_caption_many_takes_bare_items_and_caption_items_together(two_workers: Captioner,
                                                                  photos: list[Path]) -> None:
    """A bare item is CaptionItem(item): the call's options, read as a path or an array, no image back."""
    short, beam = DecodingOptions(max_length=2), DecodingOptions(beam_size=3)
    array = read_image(photos[1])
    items: list[Path | np.ndarray | CaptionItem[Path | np.ndarray]] = [
        photos[0], CaptionItem(photos[0], keep_image=True), CaptionItem(array, options=beam), array]
    many = list(two_workers.caption_many(iter(items), short))
    assert [m.source for m in many[:2]] == [photos[0]] * 2 and many[2].source is array and many[3].source is array
    assert [m.image is not None for m in many] == [False, True, False, False]
    expected = [two_workers.caption(read_image(photos[0]), short), two_workers.caption(read_image(photos[0]), short),
                two_workers.caption(array, beam), two_workers.caption(array, short)]
    assert [m.result.caption if m.result else None for m in many] == [r.caption for r in expected]
    assert many[0].result is not None and "read" in many[0].result.timings
    assert many[2].result is not None and "read" not in many[2].result.timings


def test_caption_many_refuses_what_is_not_an_image(two_workers: Captioner) -> None:
    many = list(two_workers.caption_many(["not an image"]))
    assert "not an image array: str" in str(many[0].error)


def test_worker_counts_follow_the_cores() -> None:
    assert [default_workers(c) for c in (1, 2, 3, 4, 8, 16, 64)] == [1, 2, 3, 2, 4, 8, 32]
    with pytest.raises(ValueError, match="workers must be from 1 to 64"):
        CaptionerOptions(workers=0)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_cli_workers_give_the_same_output_in_the_same_order(run_cli: RunCli, models: Path, photos: list[Path],
                                                            tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    again = [tmp_path / f"again_{p.name}" for p in reversed(photos)]
    for copy in again:
        copy.write_bytes(next(p for p in photos if p.name == copy.name.removeprefix("again_")).read_bytes())
    inputs = [*photos, tmp_path / "empty.png", tmp_path / "missing.jpg", *again]
    runs = {}
    for workers in ("1", "3"):
        out = tmp_path / f"out{workers}"
        proc = run_cli("-i", *inputs, "-s", out, "--json", "--workers", workers, "--beam-size", "2",
                       "--model-dir", models, "--offline", "--onnx")
        assert proc.returncode == 1  # two inputs fail; the rest are captioned
        records = _json_lines(proc.stdout)
        runs[workers] = [(r["input"], r.get("caption"), r.get("error")) for r in records]
        saved = sorted(p.name for p in out.iterdir())
        assert saved == sorted(p.name for p in [*photos, *again])
        for path in out.iterdir():
            assert cv2.imread(str(path)) is not None
    assert runs["1"] == runs["3"]
    assert [name for name, _, _ in runs["1"]] == [str(p) for p in inputs]
    assert [error is not None for _, _, error in runs["1"]] == [False] * len(photos) + [True, True] + [False] * len(
        again)


def test_cli_benchmark_with_workers_times_every_run(run_cli: RunCli, models: Path, photos: list[Path]) -> None:
    proc = run_cli("-i", *photos[:3], "-b", "-bc", "3", "--workers", "2", "--json", "--model-dir", models,
                   "--offline", "--onnx")
    assert proc.returncode == 0, proc.stderr
    records = _json_lines(proc.stdout)
    assert len(records) == 3
    for record in records:
        bench = record["benchmark"]
        assert isinstance(bench, dict)
        assert set(bench) == {"read", "preprocess", "features", "decode", "save"}


@pytest.mark.parametrize(("flags", "message"), [
    (["--workers", "0"], "--workers: must be at least 1"),
    (["--workers", "65"], "--workers: must be at most 64"),
    (["--workers", "2", "--backend", "ailia"], "the ailia SDK runs one"),
    (["-v", "clip.avi", "--workers", "2"], "--workers is for images"),
])
def test_cli_refuses_impossible_worker_counts(flags: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    """In this process: argparse and the usage checks refuse before anything is loaded."""
    from utils.cli.main import main

    status: int | str | None
    try:
        status = main(flags)
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    said = capsys.readouterr().err + caplog.text
    assert status == 2 and message in said and "Traceback" not in said


LAZY_FOLDER = """
import io, sys
from pathlib import Path
folder = Path(sys.argv[2])
opened = set()
def hook(event, args):
    if event == "open" and str(args[0]).startswith(str(folder)):
        opened.add(str(args[0]))
sys.addaudithook(hook)
from utils.engine.captioner import CaptionerOptions
from utils.images.job import ImageJob
from utils.images.run import run_images
from utils.engine.runtime import RuntimeOptions
from utils.support.stopping import StopRequest

class Head(io.StringIO):
    # A reader that leaves after five lines, as `| head -5` does: image mode then stops.
    def write(self, text):
        if self.getvalue().count("\\n") >= 5:
            raise BrokenPipeError
        return super().write(text)

options = CaptionerOptions(model_dir=Path(sys.argv[1]), offline=True, progress=False, workers=2,
                           runtime=RuntimeOptions(backend="onnxruntime"))
status = run_images(ImageJob([str(folder)], format="json"), options, out=Head())
print(status, len(opened))
"""


def test_a_folder_of_100000_photos_is_listed_by_name_and_read_only_as_far_as_captioned(
        models: Path, photos: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "library"
    folder.mkdir()
    for i in range(100_000):  # one photo under 100,000 names: a folder of that size, in seconds
        os.symlink(photos[0], folder / f"{i:06d}.png")
    proc = subprocess.run([sys.executable, "-c", LAZY_FOLDER, str(models), str(folder)], capture_output=True,
                          text=True, env=cli_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    status, opened = map(int, proc.stdout.split())
    assert status == 0
    assert 5 <= opened <= 5 + 2 * 2 + 1 + 1, opened  # what was printed, and what the pipeline had read ahead


def test_one_photo_gets_one_worker_with_every_core(run_cli: RunCli, models: Path, photos: list[Path]) -> None:
    flags = ["--workers", "3", "--model-dir", models, "--offline", "--onnx", "--debug"]
    one = run_cli("-i", photos[0], *flags)
    assert one.returncode == 0 and "DEBUG: 1 worker on onnxruntime" in one.stderr
    two = run_cli("-i", *photos[:2], *flags)
    assert two.returncode == 0 and "DEBUG: 2 workers on onnxruntime" in two.stderr
    benchmark = run_cli("-i", photos[0], "-b", "-bc", "5", *flags)  # times one photo run after run
    assert benchmark.returncode == 0 and "DEBUG: 1 worker on onnxruntime" in benchmark.stderr
    many = run_cli("-i", *photos, *flags)
    assert many.returncode == 0 and "DEBUG: 3 workers on onnxruntime" in many.stderr
