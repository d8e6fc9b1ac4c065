"""--precision int8 through the real CLI in subprocesses: end to end offline, the cache across runs,
concurrent runs, interrupted and killed builds, errors and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ROOT, SAMPLE, SCRIPT, RunCli, cli_env
from tests.test_int8_cache import cached_paths, leftovers
from tests.video_helpers import make_video
from utils.engine.model_files import sha256_bytes
from utils.quantization.decoder import int8_decoder_path, int8_decoder_pays
from utils.quantization.methods import cpu_flags

OFFLINE = ("--offline", "--precision", "int8")


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING:")]


def test_int8_captions_end_to_end_offline(run_cli: RunCli, models: Path, photos: list[Path]) -> None:
    proc = run_cli("-i", *photos, "--model-dir", models, *OFFLINE, "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in photos]
    assert all(r["caption"] and r["backend"] == "onnxruntime" for r in records)
    # auto backend: exactly one warning, saying int8 runs on ONNX Runtime (the ailia SDK is not tried).
    assert warnings_in(proc.stderr) == ["WARNING: int8 precision runs on ONNX Runtime; the ailia SDK is not tried"]
    progress = [line for line in proc.stderr.splitlines() if line.startswith("making the int8 feature model")]
    assert len(progress) == 1 and progress[0].endswith(" s)")  # "... done (0.3 s)"
    assert all(p.exists() for p in cached_paths(models))
    # Where it pays (VNNI), the decoder is int8 too, cached beside its source; beam search ran on it with the
    # int8 step model (a failed replay check would have added a warning above). Captions may then differ
    # from fp32 (docs/int8.md): the random test decoders change theirs on the smallest difference.
    assert int8_decoder_path(models / "model_fc_nsc.onnx").exists() == int8_decoder_pays(cpu_flags())


def test_second_run_reuses_the_cache(run_cli: RunCli, models: Path) -> None:
    first = run_cli("--model-dir", models, *OFFLINE, "--onnx", "--debug")
    assert first.returncode == 0, first.stderr
    path, record = cached_paths(models)
    stamps = (path.stat().st_mtime_ns, record.stat().st_mtime_ns)
    second = run_cli("--model-dir", models, *OFFLINE, "--onnx", "--debug")
    assert second.returncode == 0, second.stderr
    assert "INFO: made " in first.stderr and "INFO: made " not in second.stderr
    assert f"DEBUG: using {path} (checked against {record.name})" in second.stderr
    assert "making the int8" not in second.stderr
    assert (path.stat().st_mtime_ns, record.stat().st_mtime_ns) == stamps
    assert first.stdout == second.stdout
    # --onnx asked for ONNX Runtime: nothing to warn about.
    quiet = run_cli("--model-dir", models, *OFFLINE, "--onnx")
    assert quiet.stderr == "" and quiet.stdout == first.stdout


def test_int8_video(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", 10, fps=10.0)
    proc = run_cli("-v", clip, "--json", "--no-display", "--model-dir", models, *OFFLINE, "--onnx")
    assert proc.returncode == 0, proc.stderr
    (caption,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert caption["caption"] and caption["backend"] == "onnxruntime"


def test_ailia_with_int8_is_a_usage_error(run_cli: RunCli, models: Path) -> None:
    proc = run_cli("--model-dir", models, "--backend", "ailia", "--precision", "int8")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["image_captioning_pytorch.py: error: --precision int8 runs on ONNX Runtime only: "
                      "use --backend onnxruntime or auto, or --precision fp32"]
    assert not cached_paths(models)[0].exists()


def test_unknown_precision_is_a_usage_error(run_cli: RunCli) -> None:
    proc = run_cli("--precision", "int4")
    assert proc.returncode == 2 and "invalid choice: 'int4'" in proc.stderr


def write_unquantizable_feature_model(path: Path) -> None:
    """Parses, has outputs (so it passes the file checks), but no tool can load it: a node reads a
    tensor nothing makes."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Unsqueeze", ["img"], ["x"], axes=[0]),
             helper.make_node("Conv", ["x", "w", "nowhere"], ["y"]),
             helper.make_node("ReduceMean", ["y"], ["fc"], axes=[0, 2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "broken", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [3, "H", "W"])],
                              [helper.make_tensor_value_info("fc", TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    path.write_bytes(model.SerializeToString())


def test_unquantizable_model_is_one_error_line(run_cli: RunCli, models: Path) -> None:
    feat = models / "model_feat.onnx"
    write_unquantizable_feature_model(feat)
    proc = run_cli("--model-dir", models, *OFFLINE, "--onnx")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, proc.stderr
    assert f"cannot make the int8 feature model from {feat}" in errors[0]
    assert "nowhere" in errors[0] and "--precision fp32" in errors[0]
    assert ".derived-build" not in errors[0] and "ort.quant" not in errors[0]  # no internal paths
    assert leftovers(models) == [] and not any(p.exists() for p in cached_paths(models))


# A child that runs the CLI with onnxruntime's quantize_static wrapped: the real one runs (the tool's
# files exist), then the wrapper does what argv[1] says. argv[2:] is the command line.
WRAPPED_CLI = """
import os, signal, sys, time
import onnxruntime.quantization as ortq
real = ortq.quantize_static
action = sys.argv[1]
def wrapped(*args, **kwargs):
    if action == "slow":
        time.sleep(1.5)
    real(*args, **kwargs)
    if action == "sigint":
        signal.raise_signal(signal.SIGINT)
    elif action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
ortq.quantize_static = wrapped
sys.argv = [os.environ["SCRIPT"], *sys.argv[2:]]
import runpy
runpy.run_path(os.environ["SCRIPT"], run_name="__main__")
"""


def wrapped_cli(action: str, *args: str | Path, tmpdir: Path) -> subprocess.Popen[str]:
    """``tmpdir`` is the child's TMPDIR: it must stay empty, the tool's temporaries going to the model folder."""
    env = cli_env({"SCRIPT": str(SCRIPT), "TMPDIR": str(tmpdir)})
    return subprocess.Popen([sys.executable, "-c", WRAPPED_CLI, action, *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def temporaries(tmpdir: Path) -> list[str]:
    # Importing onnxruntime writes a session id file, .ses, into TMPDIR whatever the program does.
    return [p.name for p in tmpdir.iterdir() if p.name != ".ses"]


@pytest.fixture
def child_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "child_tmp"
    folder.mkdir()
    return folder


def test_ctrl_c_mid_quantization_leaves_nothing(models: Path, child_tmp: Path) -> None:
    child = wrapped_cli("sigint", "--model-dir", models, *OFFLINE, "--onnx", tmpdir=child_tmp)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "ERROR: interrupted" in err
    assert leftovers(models) == [] and not any(p.exists() for p in cached_paths(models))
    assert temporaries(child_tmp) == []


def test_a_killed_quantization_is_cleaned_by_the_next_run(run_cli: RunCli, models: Path, child_tmp: Path) -> None:
    child = wrapped_cli("sigkill", "--model-dir", models, *OFFLINE, "--onnx", tmpdir=child_tmp)
    child.communicate(timeout=120)
    assert child.returncode == -9
    assert any(name.startswith(".derived-build-") for name in leftovers(models))  # killed mid-build
    assert not any(p.exists() for p in cached_paths(models))  # but nothing that looks finished
    assert temporaries(child_tmp) == []
    proc = run_cli("--model-dir", models, *OFFLINE, "--onnx")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(models) == [] and all(p.exists() for p in cached_paths(models))


def test_two_runs_at_once_make_one_file(models: Path, child_tmp: Path) -> None:
    """Both start before either has made the file; the one that gets the model folder's lock makes it
    (slowly), the other waits, then checks and uses it."""
    args = ("--model-dir", models, *OFFLINE, "--onnx", "--debug")
    children = [wrapped_cli("slow", *args, tmpdir=child_tmp) for _ in range(2)]
    results = [child.communicate(timeout=180) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _, err in results]
    errs = [err for _, err in results]
    assert sum("INFO: made " in err for err in errs) == 1
    assert any("waiting for another process" in err for err in errs)  # they did overlap
    assert results[0][0] == results[1][0]  # the same caption
    path, record = cached_paths(models)
    assert json.loads(record.read_text(encoding="utf-8"))["sha256"] == sha256_bytes(path.read_bytes())
    assert leftovers(models) == [] and temporaries(child_tmp) == []
    assert sorted(p.name for p in models.glob("model_feat.int8*")) == sorted([path.name, record.name])


OPEN_COUNTER = """
import collections, sys
from pathlib import Path
folder = Path(sys.argv[1]).resolve()
opened = collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, Path)):
        path = Path(args[0]).resolve()
        if path.parent == folder and not path.name.startswith(".") and path.suffix in (".onnx", ".json"):
            opened[path.name] += 1
from utils.engine.captioner import Captioner, CaptionerOptions
from utils.engine.runtime import RuntimeOptions
options = CaptionerOptions(model_dir=folder, offline=True, progress=False, precision="int8",
                           runtime=RuntimeOptions(backend="onnxruntime"))
Captioner(options)  # makes the int8 file
sys.addaudithook(hook)
Captioner(options)  # reuses it
print(dict(sorted(opened.items())))
"""


def test_each_file_is_read_once_with_int8(models: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", OPEN_COUNTER, str(models)], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path, record = cached_paths(models)
    expected = {record.name: 1, path.name: 1, "model_fc_nsc.onnx": 1, "model_feat.onnx": 1, "vocab.json": 1}
    if int8_decoder_pays(cpu_flags()):
        decoder = int8_decoder_path(models / "model_fc_nsc.onnx")
        expected.update({decoder.name: 1, decoder.with_suffix(".json").name: 1})
    assert proc.stdout.strip() == str(dict(sorted(expected.items())))


def test_sample_photos_are_the_calibration_photos_and_distinct() -> None:
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    digests = {sha256_bytes((SAMPLE.parent / n).read_bytes()) for n in names}
    assert len(digests) == len(names)
