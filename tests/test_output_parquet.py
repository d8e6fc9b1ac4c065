"""--captions-file FILE.parquet in image mode: the CSV table's columns, typed, read back by pyarrow; and
what is refused (stdout, video, --resume, no pyarrow) in one line, with nothing written."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import ROOT, RunCli

SCHEMA = pa.schema([("input", pa.string()), ("caption", pa.string()), ("confidence", pa.float64()),
                    ("output", pa.string()), ("metadata", pa.string()), ("error", pa.string())])


def test_parquet_holds_the_csv_rows_typed(run_cli: RunCli, models: Path, photos: list[Path], tmp_path: Path) -> None:
    gone = tmp_path / "gone.png"
    inputs = [*photos[:2], gone]
    flags = ("--model-dir", models, "--offline", "--onnx", "-s", tmp_path / "drawn")
    table_file, csv_file = tmp_path / "c.parquet", tmp_path / "c.csv"
    proc = run_cli("-i", *inputs, "--captions-file", table_file, *flags)
    assert proc.returncode == 1 and f"{gone} does not exist" in proc.stderr, proc.stderr
    assert run_cli("-i", *inputs, "--captions-file", csv_file, *flags).returncode == 1
    table = pq.read_table(table_file)
    assert table.schema.remove_metadata() == SCHEMA
    rows = table.to_pylist()
    with csv_file.open(newline="", encoding="utf-8") as f:
        expected = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == [str(p) for p in inputs] == [r["input"] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        assert {k: "" if v is None else v for k, v in row.items() if k != "confidence"} == \
            {k: v for k, v in want.items() if k != "confidence"}
        assert (row["confidence"] is None) == (want["confidence"] == "")
        if row["confidence"] is not None:
            assert row["confidence"] == float(want["confidence"])
    assert rows[0]["output"] == str(tmp_path / "drawn" / photos[0].name) and rows[2]["output"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.parquet", "drawn", "models"]  # no temporary file


def test_a_run_whose_inputs_all_fail_writes_their_rows(run_cli: RunCli, models: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    proc = run_cli("-i", tmp_path / "gone.png", "--captions-file", out, "--model-dir", models, "--offline", "--onnx")
    assert proc.returncode == 1
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == SCHEMA
    assert table.to_pylist() == [{"input": str(tmp_path / "gone.png"), "caption": None, "confidence": None,
                                  "output": None, "metadata": None, "error": f"{tmp_path / 'gone.png'} does not exist"}]


def test_parquet_is_refused_where_it_cannot_be_written(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    for flags, message in (
            (["--format", "parquet"], "invalid choice: 'parquet'"),
            (["-v", "clip.mp4", "--captions-file", out], ".parquet (parquet) is for images, not video"),
            (["--resume", "--captions-file", out], "--resume cannot go on with"),
    ):
        proc = run_cli(*flags)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert sum("error:" in line for line in proc.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_without_pyarrow_one_line_names_the_install_command(run_cli: RunCli, models: Path, photos: list[Path],
                                                             tmp_path: Path) -> None:
    shim = tmp_path / "no_pyarrow" / "pyarrow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("No module named \'pyarrow\'")\n')
    out = tmp_path / "c.parquet"
    proc = run_cli("-i", photos[0], "--captions-file", out, "--model-dir", models, "--offline", "--onnx",
                   env={"PYTHONPATH": f"{shim.parent}{os.pathsep}{ROOT}"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "ERROR: --captions-file .parquet needs pyarrow, which is not installed (No module named 'pyarrow'): "
        "python3 -m pip install -r requirements-parquet.txt"]
    assert not out.exists()
