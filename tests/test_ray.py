"""--ray and BatchCaptioner: Ray Data batch captioning (docs/large-runs.md#ray-data).

The command line is run for real, in a subprocess, each run with a local Ray runtime of its own; the
Python tests share one local runtime of 2 CPUs per module, since each start costs seconds."""

from __future__ import annotations

import csv
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, SAMPLE, SCRIPT, RunCli, cli_env
from tests.reference import imread
from tests.stand_in_models import NewFCParams
from utils.engine.captioner import CaptionerOptions
from utils.engine.runtime import RuntimeOptions
from utils.images.inputs import InputItem
from utils.ray_data.batch import BatchCaptioner
from utils.ray_data.job import RayJob
from utils.ray_data.run import INSTALL, local_runtime, run_ray

PHOTOS = 40
Captions = dict[str, tuple[str, float]]


def _photos(folder: Path, count: int, size: tuple[int, int] | None = None, noise: int = 0) -> list[Path]:
    """``count`` distinct PNG photos (decoded alike by OpenCV and PIL, so read_images agrees too)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = imread(SAMPLE)
    if size is not None:
        base = cv2.resize(base, size)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        image = np.roll(np.roll(base, i * 11, axis=1), i * 7, axis=0)
        image = cv2.convertScaleAbs(image, alpha=0.6 + 0.02 * i, beta=(i * 13) % 60)
        if noise:
            image = np.clip(image.astype(np.int16) + rng.integers(0, noise, image.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo{i:02d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _plain(models: Path, folder: Path, out: Path) -> Captions:
    """The plain command line's captions, two workers, for the same options."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "-i", str(folder), "--workers", "2", "--captions-file",
                           str(out), "--model-dir", str(models), "--offline", "--onnx"],
                          capture_output=True, text=True, env=cli_env(), timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return {r["input"]: (r["caption"], r["confidence"]) for r in map(json.loads, out.read_text().splitlines())}


@pytest.fixture(scope="module")
def shared_models(model_set_dir: tuple[Path, dict[str, NewFCParams]]) -> Path:
    return model_set_dir[0]


@pytest.fixture(scope="module")
def photos40(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _photos(tmp_path_factory.mktemp("ray") / "photos", PHOTOS)


@pytest.fixture(scope="module")
def plain40(shared_models: Path, photos40: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Captions:
    captions = _plain(shared_models, photos40[0].parent, tmp_path_factory.mktemp("plain") / "plain.jsonl")
    assert len({caption for caption, _ in captions.values()}) > 5  # the photos give different captions
    return captions


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[object]:
    """One local Ray runtime of 2 CPUs for this module's in-process tests, with this project's code: the
    one --ray starts (on 127.0.0.1 only, in a temporary folder of its own)."""
    import ray

    with local_runtime(ray, num_cpus=2, logging_level=logging.ERROR,
                       job_config=ray.job_config.JobConfig(code_search_path=[str(ROOT)])):
        yield ray


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR for a run, short enough for Ray's sockets below it (tmp_path is not: Ray would refuse it)."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _left_in(folder: Path) -> list[str]:
    """What a run left in its TMPDIR, less ONNX Runtime's own .ses file (written by its import)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".ses")


def _options(models: Path) -> CaptionerOptions:
    return CaptionerOptions(model_dir=models, offline=True, runtime=RuntimeOptions(backend="onnxruntime"))


def _assert_same(rows: list[tuple[str, str | None, float | None]], expected: Captions) -> None:
    """Every input exactly once, each with the plain command line's caption."""
    names = [name for name, _, _ in rows]
    assert sorted(names) == sorted(expected) and len(set(names)) == len(names)
    for name, caption, confidence in rows:
        assert caption == expected[name][0], name
        assert confidence == pytest.approx(expected[name][1], abs=1e-5)


# --- the command line ---------------------------------------------------------------------------

def test_ray_cli_captions_equal_the_plain_cli(run_cli: RunCli, shared_models: Path, photos40: list[Path],
                                              plain40: Captions, tmp_path: Path) -> None:
    out = tmp_path / "ray.jsonl"
    proc = run_cli("-i", photos40[0].parent, "--ray", "--workers", "2", "--captions-file", out,
                   "--model-dir", shared_models, "--offline", "--onnx", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""  # Ray's own chatter stays off; no bars off a terminal
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in photos40]  # input order
    _assert_same([(r["input"], r["caption"], r["confidence"]) for r in records], plain40)
    # Image mode's record shape (docs/output.md#json-output); the actors send back no timings.
    assert all(list(r) == ["input", "caption", "model", "backend", "confidence", "indices", "timings"]
               and r["model"] == "fc_nsc" and r["backend"] == "onnxruntime" and r["indices"] and r["timings"] == {}
               for r in records)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_ray_writes_the_tables_image_mode_writes(shared_models: Path, photos40: list[Path], tmp_path: Path) -> None:
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/\xff.png"))  # a name that is not valid UTF-8
    shutil.copy(photos40[2], odd)
    inputs = [photos40[0], tmp_path / "gone.png", photos40[1], odd]
    flags = ("--model-dir", shared_models, "--offline", "--onnx")

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:  # the odd name reaches stdout as its bytes
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                              errors="surrogateescape", env=cli_env(), timeout=300, stdin=subprocess.DEVNULL,
                              cwd=tmp_path)

    for ext in ("csv", "parquet"):
        proc = run("-i", *inputs, "--captions-file", tmp_path / f"plain.{ext}", *flags)
        assert proc.returncode == 1, proc.stderr
        proc = run("-i", *inputs, "--ray", "--captions-file", tmp_path / f"ray.{ext}", *flags)
        assert proc.returncode == 1 and f"{tmp_path / 'gone.png'} does not exist" in proc.stderr, proc.stderr
    plain, ray = ((tmp_path / f"{kind}.csv").read_bytes().split(b"\n") for kind in ("plain", "ray"))
    assert plain[0] == ray[0] == b"input,caption,confidence,output,metadata,error"
    assert sorted(plain[1:]) == sorted(ray[1:])  # --ray writes the inputs it cannot list first
    assert pq.read_schema(tmp_path / "plain.parquet") == pq.read_schema(tmp_path / "ray.parquet")
    by_input = [sorted(pq.read_table(tmp_path / f"{kind}.parquet").to_pylist(), key=lambda r: r["input"])
                for kind in ("plain", "ray")]
    assert by_input[0] == by_input[1] and len(by_input[0]) == 4
    assert os.fsencode(odd) in plain[4] and by_input[0][3]["input"] == f"{tmp_path}/\ufffd.png"


def test_ray_resume_retries_failures_repairs_a_cut_line_and_refuses_a_foreign_file(
        run_cli: RunCli, shared_models: Path, photos40: list[Path], plain40: Captions, tmp_path: Path) -> None:
    later = tmp_path / "later.png"  # missing in the first run
    out = tmp_path / "out.csv"
    flags = ("--ray", "--captions-file", out, "--resume", "--model-dir", shared_models, "--offline", "--onnx")
    proc = run_cli("-i", photos40[0], later, *flags, timeout=300)
    assert proc.returncode == 1 and f"{later} does not exist" in proc.stderr, proc.stderr
    shutil.copy(photos40[1], later)
    with out.open("a", encoding="utf-8") as f:
        f.write(f"{photos40[2]},a caption cut")  # the last line of a run killed while writing it
    proc = run_cli("-i", photos40[0], later, photos40[2], *flags, timeout=300)
    assert proc.returncode == 0 and "ended in a cut-off line" in proc.stderr, proc.stderr
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == [str(photos40[0]), str(later), str(photos40[2])]  # each once
    assert all(r["error"] == "" for r in rows)
    _assert_same([(r["input"], r["caption"], float(r["confidence"])) for r in rows],
                 {str(photos40[0]): plain40[str(photos40[0])], str(later): plain40[str(photos40[1])],
                  str(photos40[2]): plain40[str(photos40[2])]})
    done = out.read_bytes()
    proc = run_cli("-i", photos40[0], later, photos40[2], *flags)  # nothing left: no Ray runtime started
    assert proc.returncode == 0 and proc.stderr == "" and out.read_bytes() == done
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("name,text\nx,y\n")
    proc = run_cli("-i", photos40[0], "--ray", "--captions-file", foreign, "--resume", "--model-dir",
                   shared_models, "--offline", "--onnx")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert foreign.read_text() == "name,text\nx,y\n"


def _descendants_named(root: int, prefix: str) -> list[int]:
    """The processes under ``root`` whose command line starts with ``prefix`` (Ray names its actors'
    processes ray::CLASS), found through /proc: other Ray runtimes on this machine are not ours."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def under(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    return [pid for pid, title in titles.items() if title.startswith(prefix) and under(pid)]


def test_a_killed_actor_loses_and_duplicates_no_caption(shared_models: Path, tmp_path: Path) -> None:
    # Photos large enough that the actors work for seconds: the kill falls in the middle of the run.
    photos = _photos(tmp_path / "big", PHOTOS, size=(1800, 1200), noise=24)
    expected = _plain(shared_models, photos[0].parent, tmp_path / "plain.jsonl")
    out = tmp_path / "ray.parquet"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "-i", str(photos[0].parent), "--ray", "--workers", "2",
                             "--captions-file", str(out), "--model-dir", str(shared_models), "--offline", "--onnx",
                             "--debug"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            stdin=subprocess.DEVNULL)
    killed: list[tuple[int, int]] = []  # (pid, rows the driver had when it was killed)
    lines: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not killed and " rows captioned" in line:
                actors = _descendants_named(proc.pid, "ray::MapWorker")
                if actors:
                    os.kill(actors[0], signal.SIGKILL)
                    killed.append((actors[0], int(line.split(" rows captioned")[0].split()[-1])))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert proc.wait(timeout=400) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.join()
    assert killed, "no actor was found to kill"
    assert killed[0][1] < PHOTOS, "the run was over before the kill"
    table = pq.read_table(out).to_pylist()
    assert [r["input"] for r in table] == [str(p) for p in photos]
    assert all(r["error"] is None for r in table)
    _assert_same([(r["input"], r["caption"], r["confidence"]) for r in table], expected)


def _usage_error(stderr: str) -> bool:
    """argparse's usage, then one line that names the problem."""
    lines = stderr.strip().splitlines()
    return lines[0].startswith("usage:") and sum("error:" in line for line in lines) == 1 and "error:" in lines[-1]


@pytest.mark.parametrize(("extra", "expected"), [
    (["-s", "out.png"], "-s/--savepath"),
    (["-b"], "-b/--benchmark"),
    (["--format", "json"], "--format json"),
    (["--write-metadata"], "--write-metadata"),
    (["--references", "refs.json", "--resume"], "--references"),
    (["--references", "refs.json"], "--references"),
    (["-v", "clip.mp4"], "video"),
])
def test_ray_conflicts_are_one_line_usage_errors(run_cli: RunCli, tmp_path: Path, extra: list[str],
                                                 expected: str) -> None:
    proc = run_cli("-i", SAMPLE, "--ray", "--captions-file", tmp_path / "out.jsonl", *extra)
    assert proc.returncode == 2 and _usage_error(proc.stderr) and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["-i", str(SAMPLE), "--ray"], "--ray writes its captions to --captions-file"),
    (["-i", str(SAMPLE), "--ray", "--captions-file", "out.txt"], ".parquet"),
    (["--ray", "--captions-file", "out.csv"], "--ray needs -i"),
])
def test_ray_needs_inputs_and_a_captions_file_it_writes(run_cli: RunCli, args: list[str], expected: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and _usage_error(proc.stderr) and expected in proc.stderr, proc.stderr


def test_without_ray_one_line_names_the_install_command(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    shim = tmp_path / "no_ray" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("No module named \'ray\'")\n')
    out = tmp_path / "out.jsonl"
    proc = run_cli("-i", SAMPLE, "--ray", "--captions-file", out, "--model-dir", models, "--offline", "--onnx",
                   env={"PYTHONPATH": f"{shim.parent}{os.pathsep}{ROOT}"})
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and INSTALL in proc.stderr, proc.stderr
    assert "python3 -m pip install -r requirements-ray.txt" in proc.stderr
    assert not out.exists()


def test_an_address_nothing_answers_at_is_one_line(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = run_cli("-i", SAMPLE, "--ray", "127.0.0.1:1", "--captions-file", out, "--model-dir", models,
                   "--offline", "--onnx", timeout=60)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in proc.stderr
    assert not out.exists()


def test_inputs_that_cannot_be_listed_are_row_errors(run_cli: RunCli, shared_models: Path, photos40: list[Path],
                                                     plain40: Captions, tmp_path: Path) -> None:
    # Each URI is listed on its own: one Ray listing of them all failed the whole run ("internal error").
    spaced = tmp_path / "in" / "a photo.png"
    spaced.parent.mkdir()
    shutil.copy(photos40[1], spaced)
    (tmp_path / "empty").mkdir()
    missing = f"file://{tmp_path}/missing.jpg"
    inputs = [missing, "foo://bucket/x.jpg", str(photos40[0]), f"file://{spaced}", f"file://{tmp_path}/empty/"]
    out = tmp_path / "out.jsonl"
    proc = run_cli("-i", *inputs, "--ray", "--workers", "2", "--captions-file", out, "--model-dir", shared_models,
                   "--offline", "--onnx", timeout=300)
    errors = [f"{missing} does not exist",
              "foo://bucket/x.jpg: unknown URI scheme foo:// (pyarrow reads file://, s3://, gs://, abfs:// and hdfs://)",
              f"folder file://{tmp_path}/empty/ has no images (jpg, jpeg, png, bmp, webp, tif, tiff)"]
    assert proc.returncode == 1, proc.stderr  # as for a missing file without --ray: the others are written
    assert proc.stderr.splitlines() == [f"ERROR: {e}" for e in errors]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[:3] == [{"input": name, "caption": None, "error": error}  # what names no file comes first
                           for name, error in zip([inputs[0], inputs[1], inputs[4]], errors, strict=True)]
    assert [r["input"] for r in records[3:]] == [str(photos40[0]), f"file://{spaced}"]
    _assert_same([(str(p), r["caption"], r["confidence"]) for p, r in zip(photos40[:2], records[3:], strict=True)],
                 {str(p): plain40[str(p)] for p in photos40[:2]})


def test_ray_warnings_stay_off_stderr(run_cli: RunCli, shared_models: Path, photos40: list[Path],
                                      tmp_path: Path) -> None:
    # One photo for two actors made Ray Data warn about its concurrency (a UserWarning, on stderr).
    out = tmp_path / "out.csv"
    proc = run_cli("-i", photos40[0], "--ray", "--workers", "2", "--captions-file", out, "--model-dir",
                   shared_models, "--offline", "--onnx", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if "Warning" in line], proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    assert len(out.read_text().splitlines()) == 2


def test_a_local_runtime_leaves_no_temporary_folder(shared_models: Path, photos40: list[Path], tmp_path: Path,
                                                    short_tmpdir: Path) -> None:
    out = tmp_path / "out.jsonl"
    command = [sys.executable, str(SCRIPT), "-i", str(photos40[0]), "--ray", "--captions-file", str(out),
               "--model-dir", str(shared_models), "--offline", "--onnx"]
    env = cli_env({"TMPDIR": str(short_tmpdir)})
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert _left_in(short_tmpdir) == [] and out.exists()  # Ray's session_* logs were left in TMPDIR/ray


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_no_temporary_folder(shared_models: Path, photos40: list[Path], tmp_path: Path,
                                                       short_tmpdir: Path, signum: int) -> None:
    out = tmp_path / "out.parquet"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "-i", str(photos40[0].parent), "--ray", "--captions-file",
                             str(out), "--model-dir", str(shared_models), "--offline", "--onnx", "--debug"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cli_env({"TMPDIR": str(short_tmpdir)}), stdin=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the runtime is up once the actors are planned
            lines.append(line)
            if " actors with " in line:
                break
        assert _left_in(short_tmpdir), "the runtime keeps nothing in TMPDIR"  # its logs and sockets are there
        proc.send_signal(signum)
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=120) == 128 + signum, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "ERROR: interrupted" in lines[-1]
    assert _left_in(short_tmpdir) == [] and not out.exists()


# What a probe prints: the addresses the local runtime of --ray reports, and those its processes listen on.
LOOPBACK_PROBE = r"""
import json, os, re, ray
from utils.ray_data.run import _ray_runtime

def listening(pids):
    inodes = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                found = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{name}"))
            except OSError:
                continue
            if found:
                inodes.add(found.group(1))
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                addresses.append(fields[1].split(":")[0])
    return addresses

def descendants(root):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found

with _ray_runtime(ray, None):
    print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                      "gcs": ray.get_runtime_context().gcs_address,
                      "listening": listening(descendants(os.getpid()))}))
"""


def _hex_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp or tcp6: hexadecimal, in 32-bit words of the host's byte order."""
    raw = bytes.fromhex(text)
    data = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    address = ipaddress.ip_address(data)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _loopback(host_port: str) -> bool:
    return ipaddress.ip_address(host_port.rsplit(":", 1)[0].strip("[]")).is_loopback


def test_the_local_runtime_of_ray_is_on_loopback_only(tmp_path: Path) -> None:
    # Ray 2.60 made 127.0.0.1 this machine's network address, and its servers listened on every interface.
    proc = subprocess.run([sys.executable, "-c", LOOPBACK_PROBE], capture_output=True, text=True, cwd=tmp_path,
                          env=cli_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["nodes"] and all(ipaddress.ip_address(a).is_loopback for a in found["nodes"]), found
    assert _loopback(found["gcs"]), found
    if Path("/proc/net/tcp").exists():  # Linux: what the raylet, GCS and object manager really listen on
        assert found["listening"], found
        assert all(_hex_address(a).is_loopback for a in found["listening"]), found


def test_the_tests_runtime_is_on_loopback_only(ray_runtime: object) -> None:
    import ray

    addresses = [node["NodeManagerAddress"] for node in ray.nodes()]
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses
    assert _loopback(ray.get_runtime_context().gcs_address)


# --- BatchCaptioner, without Ray ------------------------------------------------------------------

def test_batch_captioner_on_dict_and_pandas_batches(models: Path, photos40: list[Path], plain40: Captions) -> None:
    captioner = BatchCaptioner(_options(models))
    good = [photos40[0], photos40[1]]
    data = [p.read_bytes() for p in good]
    batch = {"path": np.array([str(good[0]), "bad.jpg", "empty.png", str(good[1]), "none.png"], dtype=object),
             "bytes": np.array([data[0], b"not an image at all", b"", data[1], None], dtype=object)}
    out = captioner(batch)
    assert set(out) == {"path", "bytes", "caption", "confidence", "error"} and out["bytes"] is batch["bytes"]
    assert list(out["caption"]) == [plain40[str(good[0])][0], None, None, plain40[str(good[1])][0], None]
    assert out["confidence"][0] == pytest.approx(plain40[str(good[0])][1], abs=1e-5)
    assert np.isnan(out["confidence"][1])
    errors = list(out["error"])
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith("bad.jpg ") and "not an image" in errors[1]
    assert errors[2] == "empty.png is an empty file (0 bytes)"
    assert errors[4] == "none.png: no bytes"

    rgb = cv2.cvtColor(imread(good[0]), cv2.COLOR_BGR2RGB)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    frame = pd.DataFrame({"path": ["rgb", "rgba", "nothing", "empty"],
                          "image": [rgb, rgba, None, np.zeros((0, 0, 3), np.uint8)]})
    result = BatchCaptioner(_options(models), drop=("image",))(frame)
    assert list(result.columns) == ["path", "caption", "confidence", "error"]
    assert list(result["caption"][:2]) == [plain40[str(good[0])][0]] * 2
    assert result["error"][:2].isna().all()
    assert result["caption"][2:].isna().all()
    assert result["error"][2].startswith("nothing: ") and result["error"][3] == "empty: image has no pixels"


def test_batch_captioner_keeps_the_errors_a_batch_brings(models: Path, photos40: list[Path],
                                                         plain40: Captions) -> None:
    # --ray's read step hands on a file it could not read as its row's error, with no bytes.
    batch = {"path": np.array([str(photos40[0]), "gone.png", str(photos40[1])], dtype=object),
             "bytes": np.array([photos40[0].read_bytes(), None, photos40[1].read_bytes()], dtype=object),
             "error": np.array([None, "cannot read gone.png: No such file or directory", None], dtype=object)}
    out = BatchCaptioner(_options(models), drop=("bytes",))(batch)
    assert set(out) == {"path", "caption", "confidence", "error"}
    assert list(out["error"]) == [None, "cannot read gone.png: No such file or directory", None]
    assert list(out["caption"]) == [plain40[str(photos40[0])][0], None, plain40[str(photos40[1])][0]]
    assert np.isnan(out["confidence"][1])


def test_batch_captioner_names_a_batch_without_its_columns(models: Path) -> None:
    from utils.support.errors import CaptionError

    captioner = BatchCaptioner(_options(models))
    with pytest.raises(CaptionError, match="no 'path' column"):
        captioner({"bytes": np.array([b""], dtype=object)})
    with pytest.raises(CaptionError, match="neither a 'bytes' nor an 'image' column"):
        captioner({"path": np.array(["a"], dtype=object)})


# --- Ray Data from Python, one local runtime ------------------------------------------------------

def test_the_documented_map_batches_example(ray_runtime: object, shared_models: Path, photos40: list[Path],
                                            plain40: Captions, tmp_path: Path) -> None:
    import ray

    # The two actors hold both CPUs: reading takes none, or its tasks would wait for ever.
    ds = ray.data.read_binary_files([str(p) for p in photos40], include_paths=True, num_cpus=0)
    ds = ds.map_batches(BatchCaptioner, fn_constructor_kwargs={"options": _options(shared_models), "drop": ["bytes"]},
                        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=8)
    ds.write_parquet(str(tmp_path / "captions"))
    rows = pq.read_table(tmp_path / "captions").to_pylist()
    assert all(set(r) == {"path", "caption", "confidence", "error"} and r["error"] is None for r in rows)
    _assert_same([(r["path"], r["caption"], r["confidence"]) for r in rows], plain40)

    images = ray.data.read_images([str(p) for p in photos40[:8]], include_paths=True, mode="RGB", num_cpus=0)
    done = images.map_batches(BatchCaptioner, fn_constructor_kwargs={"options": _options(shared_models),
                                                                     "drop": ["image"]},
                              compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=4).take_all()
    # read_images names a file without its leading slash (pyarrow's path), the same file all the same
    _assert_same([("/" + r["path"].lstrip("/"), r["caption"], r["confidence"]) for r in done],
                 {str(p): plain40[str(p)] for p in photos40[:8]})


def test_run_ray_writes_every_input_once_with_its_error(ray_runtime: object, shared_models: Path,
                                                        photos40: list[Path], plain40: Captions,
                                                        tmp_path: Path) -> None:
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    missing = tmp_path / "in" / "missing.jpg"
    out = tmp_path / "out" / "captions.tsv"
    out.parent.mkdir()
    inputs = [str(p) for p in photos40[:6]] + [str(broken), str(missing)]
    status = run_ray(RayJob(inputs=inputs, address=None, captions_file=out, actors=2), _options(shared_models))
    assert status == 1  # an input failed; the others are written
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f, dialect=csv.excel_tab))
    assert [r["input"] for r in rows] == [str(missing)] + inputs[:-1]  # what could not be listed comes first
    assert rows[0]["error"] == f"{missing} does not exist" and rows[0]["caption"] == ""
    assert "broken.png" in rows[-1]["error"] and rows[-1]["caption"] == rows[-1]["confidence"] == ""
    _assert_same([(r["input"], r["caption"], float(r["confidence"])) for r in rows[1:-1]],
                 {name: plain40[name] for name in inputs[:6]})
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert ray_runtime.is_initialized()  # type: ignore[attr-defined]  # the caller's runtime stays up


def test_windows_of_rows_list_and_caption_every_input_once(ray_runtime: object, shared_models: Path,
                                                           photos40: list[Path], plain40: Captions,
                                                           tmp_path: Path) -> None:
    """Three rows a window: the inputs are listed again a window at a time, each window captioned by
    actors of its own; every input is written once, a window's unlisted inputs before its files."""
    missing = tmp_path / "missing.png"
    inputs = [str(p) for p in photos40[:4]] + [str(missing)] + [str(p) for p in photos40[4:8]]
    out = tmp_path / "captions.csv"
    status = run_ray(RayJob(inputs=inputs, address=None, captions_file=out, actors=2, window_rows=3),
                     _options(shared_models))
    assert status == 1
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == inputs[:3] + [str(missing), inputs[3]] + inputs[5:]
    assert rows[3]["error"] == f"{missing} does not exist"
    _assert_same([(r["input"], r["caption"], float(r["confidence"])) for r in rows if r["input"] != str(missing)],
                 {name: plain40[name] for name in inputs if name != str(missing)})


def test_a_file_that_cannot_be_read_is_its_rows_error(ray_runtime: object, shared_models: Path,
                                                      photos40: list[Path], plain40: Captions, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Listed, then gone before Ray reads it: Ray's read task failed the whole run ("the Ray run failed").
    import utils.ray_data.run

    gone = tmp_path / "gone.png"
    shutil.copy(photos40[2], gone)
    listed = utils.ray_data.run.iter_inputs
    listings = []

    def listed_then_removed(specs: list[str]) -> Iterator[InputItem]:
        # The second listing is the one whose rows go to the cluster (the first counts them).
        listings.append(specs)
        yield from listed(specs)
        if specs == [str(gone)] and listings.count(specs) == 2:
            gone.unlink()

    monkeypatch.setattr(utils.ray_data.run, "iter_inputs", listed_then_removed)
    out = tmp_path / "captions.jsonl"
    inputs = [str(photos40[0]), str(gone), str(photos40[1])]
    status = run_ray(RayJob(inputs=inputs, address=None, captions_file=out, actors=2), _options(shared_models))
    assert status == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == inputs
    assert records[1] == {"input": str(gone), "caption": None,
                          "error": f"cannot read {gone}: No such file or directory"}
    _assert_same([(r["input"], r["caption"], r["confidence"]) for r in (records[0], records[2])],
                 {str(p): plain40[str(p)] for p in photos40[:2]})
