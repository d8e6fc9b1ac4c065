"""The decoding flags through the real CLI (subprocess), on test model sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from image_captioning_pytorch import main
from tests import reference_search as ref
from tests.conftest import RunCli
from tests.reference import demo_read_rgb, image_features, reference_caption, words_of
from tests.stand_in_models import NewFCParams, make_model_set

FLAGS = ("--offline", "--onnx")


def test_beam_search_nbest_json(run_cli: RunCli, models: Path, weights: dict[str, NewFCParams],
                                photos: list[Path]) -> None:
    proc = run_cli("-i", *photos, "--model-dir", models, *FLAGS, "--json", "--beam-size", "3", "--nbest", "3")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    vocab = json.loads((models / "vocab.json").read_text())
    options = ref.Options(beam_size=3, suppress_unk=True, unk_index=len(vocab))
    for line, photo in zip(proc.stdout.splitlines(), photos, strict=True):
        record = json.loads(line)
        fc = image_features(models, demo_read_rgb(photo))
        want: list[tuple[list[int], float]] = []
        for tokens, score in ref.beam_search(ref.Net(weights["fc_nsc"]), fc, options):
            if all(ref.words_before_end(tokens) != w for w, _ in want):
                want.append((ref.words_before_end(tokens), score))
        assert [n["indices"] for n in record["nbest"]] == [w for w, _ in want]
        assert [n["score"] for n in record["nbest"]] == pytest.approx([s for _, s in want], abs=2e-4)
        assert [n["caption"] for n in record["nbest"]] == [words_of(models, np.array([*w, 0])) for w, _ in want]
        assert record["caption"] == record["nbest"][0]["caption"]
        assert record["indices"] == record["nbest"][0]["indices"]


def test_beam_size_1_is_the_graph_and_nbest_text(run_cli: RunCli, models: Path, weights: dict[str, NewFCParams],
                                                  photos: list[Path]) -> None:
    proc = run_cli("-i", photos[0], "--model-dir", models, *FLAGS, "--beam-size", "1", "--nbest", "1")
    assert proc.returncode == 0, proc.stderr
    caption, line = proc.stdout.splitlines()
    assert caption == reference_caption(models, weights["fc_nsc"], photos[0], beam_size=1)[0]
    rank, score, text = line.split(maxsplit=2)
    assert rank == "1." and float(score) < 0 and text == caption


def test_sampling_seed(run_cli: RunCli, models: Path, photos: list[Path]) -> None:
    def captions(*extra: str) -> list[str]:
        proc = run_cli("-i", *photos, "--model-dir", models, *FLAGS, "--json", "--sample-method", "sample",
                       "--temperature", "3", *extra)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line)["caption"] for line in proc.stdout.splitlines()]

    first = captions("--seed", "7")
    assert captions("--seed", "7") == first
    assert captions("--seed", "8") != first


def test_unrecoverable_decoder_falls_back_with_one_warning(run_cli: RunCli, tmp_path: Path,
                                                           photos: list[Path]) -> None:
    folder = tmp_path / "models"
    weights = make_model_set(folder, eos_bias=3.0)
    path = folder / "model_fc_nsc.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    # logit.weight computed in the graph: recovery cannot find it, by name or by structure.
    graph.initializer.extend([numpy_helper.from_array(weights["fc_nsc"].logit_w, "factor_a"),
                              numpy_helper.from_array(np.eye(16, dtype=np.float32), "factor_b")])
    graph.node.insert(0, helper.make_node("MatMul", ["factor_a", "factor_b"], ["logit.weight"]))
    kept = [t for t in graph.initializer if t.name != "logit.weight"]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    proc = run_cli("-i", *photos, "--model-dir", folder, *FLAGS, "--beam-size", "3")
    assert proc.returncode == 0
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: beam search with beam size 3 is not available")
    for line, photo in zip(proc.stdout.splitlines(), photos, strict=True):
        assert line == f"{photo}: {reference_caption(folder, weights['fc_nsc'], photo, beam_size=1)[0]}"


def test_usage_errors_subprocess(run_cli: RunCli) -> None:
    proc = run_cli("--nbest", "6")
    assert proc.returncode == 2
    assert "6 best captions asked for, but beam search with beam size 5 gives 5" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--beam-size", "0"], "must be at least 1"),
    (["--length-penalty", "wu"], "is not wu_A or avg_A"),
    (["--length-penalty", "max_1"], "is not wu_A or avg_A"),
    (["--sample-method", "top0"], "is not greedy, sample, topK"),
    (["--sample-method", "top2.5"], "is not greedy, sample, topK"),
    (["--temperature", "0"], "must be greater than 0"),
    (["--beam-size", "2", "--group-size", "3"], "group size 3 needs a beam size of at least 3"),
    (["--beam-size", "1", "--nbest", "2"], "gives 1"),
    (["--beam-size", "1", "--group-size", "2", "--nbest", "3"], "diverse greedy decoding in 2 groups gives 2"),
])
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
