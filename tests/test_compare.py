"""The compare stage on fake-but-valid study cells built in a temp dir (no training, no network)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from backprop_bench import compare

N_TEST = 12


def write_cell(
    runs: Path,
    framework: str,
    strategy: str,
    device: str = "cpu",
    status: str = "finished",
    samples_per_second: float = 1000.0,
    final_train_loss: float = 0.5,
    predictions: np.ndarray | None = None,
    reason: str = "",
) -> Path:
    """One cell directory as train.py writes it (docs/architecture.md "A study cell")."""
    name = f"{framework}-{strategy}-{device}"
    cell = runs / name
    cell.mkdir(parents=True)
    metrics = dict(cell=name, framework=framework, strategy=strategy, device=device, status=status, reason=reason)
    if status == "finished":
        metrics.update(
            test_accuracy=0.9,
            test_loss=0.3,
            train_seconds=3.0,
            first_epoch_seconds=1.5,
            steady_epoch_seconds=0.75,
            samples_per_second=samples_per_second,
            peak_memory_mb=100.0,
            final_train_loss=final_train_loss,
            epochs=3,
            batch_size=64,
            seed=0,
            dtype="float32",
        )
        with open(cell / "history.csv", "w") as f:
            f.write("epoch,train_loss,train_accuracy,val_loss,val_accuracy,epoch_seconds,samples_per_second\n")
            for epoch, loss in enumerate([1.0, 0.7, final_train_loss], start=1):
                f.write(f"{epoch},{loss},0.8,{loss + 0.1},0.8,0.75,{samples_per_second}\n")
        np.save(cell / "predictions.npy", predictions.astype(np.int64))
    (cell / "metrics.json").write_text(json.dumps(metrics))
    return cell


@pytest.fixture
def study(tmp_path):
    """Five cells: numpy and torch under both strategies, plus a skipped cuda cell.

    Test labels are 0..9,0,1. numpy is right everywhere; torch parallel gets test rows 3
    and 7 wrong, so the frameworks disagree on exactly those two.
    """
    runs = tmp_path / "runs"
    y_test = np.arange(N_TEST) % 10
    wrong = y_test.copy()
    wrong[[3, 7]] = (y_test[[3, 7]] + 1) % 10
    write_cell(runs, "numpy", "sequential", samples_per_second=2000.0, final_train_loss=0.40, predictions=y_test)
    write_cell(runs, "numpy", "parallel", samples_per_second=2500.0, final_train_loss=0.42, predictions=y_test)
    write_cell(runs, "torch", "sequential", samples_per_second=1000.0, final_train_loss=0.41, predictions=y_test)
    write_cell(runs, "torch", "parallel", samples_per_second=500.0, final_train_loss=0.45, predictions=wrong)
    write_cell(runs, "torch", "parallel", device="cuda", status="skipped", reason="no CUDA device here")
    data = tmp_path / "mnist.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_test=rng.random((N_TEST, 784), dtype=np.float32), y_test=y_test.astype(np.int64))
    return runs, data, tmp_path / "reports"


def read_csv_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["cell"]: row for row in csv.DictReader(f)}


def test_table_rows_and_values(study):
    runs, data, reports = study
    report = compare.compare(runs, reports, data)
    rows = read_csv_rows(reports / "comparison.csv")
    assert list(rows) == [  # framework order, then device, then sequential before parallel
        "numpy-sequential-cpu",
        "numpy-parallel-cpu",
        "torch-sequential-cpu",
        "torch-parallel-cpu",
        "torch-parallel-cuda",
    ]
    # Relative speed: samples/s over NumPy's at the same strategy and device.
    assert float(rows["numpy-parallel-cpu"]["speed_vs_numpy"]) == pytest.approx(1.0)
    assert float(rows["torch-sequential-cpu"]["speed_vs_numpy"]) == pytest.approx(1000.0 / 2000.0)
    assert float(rows["torch-parallel-cpu"]["speed_vs_numpy"]) == pytest.approx(500.0 / 2500.0)
    # Sequential minus parallel final loss, the same on both rows of a framework.
    for strategy in ("sequential", "parallel"):
        assert float(rows[f"numpy-{strategy}-cpu"]["seq_minus_par_final_loss"]) == pytest.approx(0.40 - 0.42)
        assert float(rows[f"torch-{strategy}-cpu"]["seq_minus_par_final_loss"]) == pytest.approx(0.41 - 0.45)
    # The skipped cell is a row with its status and reason, and no numbers.
    skipped = rows["torch-parallel-cuda"]
    assert skipped["status"] == "skipped" and skipped["reason"] == "no CUDA device here"
    assert skipped["test_accuracy"] == skipped["speed_vs_numpy"] == ""
    assert "| torch | parallel | cuda | skipped |" in report
    assert "| 0.20× |" in report and "| -4.00e-02 |" in report
    # Disagreements: rows 3 and 7, where numpy (right) and torch parallel (wrong) differ.
    assert "disagree on 2 of 12 test digits; right on those: numpy 2, torch 0" in report


def test_a_one_epoch_cell_has_no_steady_epoch_time(study):
    runs, data, reports = study
    path = runs / "numpy-sequential-cpu" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["steady_epoch_seconds"] = None  # what train.py writes after a single epoch
    path.write_text(json.dumps(metrics))
    compare.compare(runs, reports, data)
    row = read_csv_rows(reports / "comparison.csv")["numpy-sequential-cpu"]
    assert row["steady_epoch_seconds"] == "" and float(row["samples_per_second"]) == 2000.0
    metrics["train_seconds"] = None  # but only that one may be null
    path.write_text(json.dumps(metrics))
    with pytest.raises(compare.ReportError, match=r"metrics.json: key 'train_seconds' is None, expected a number"):
        compare.compare(runs, reports, data)


def test_loc_is_counted_from_the_real_backend_files(study):
    runs, data, reports = study
    compare.compare(runs, reports, data)
    rows = read_csv_rows(reports / "comparison.csv")
    for framework in ("numpy", "torch"):
        source = compare.BACKENDS_DIR / f"{framework}_backend.py"
        loc = int(rows[f"{framework}-parallel-cpu"]["backend_loc"])
        assert loc == compare.count_loc(source)
        raw_lines = len(source.read_text().splitlines())
        assert 0 < loc < raw_lines  # comments, docstrings and blank lines are left out
    report = (reports / "comparison.md").read_text()
    assert "non-blank lines" in report  # the report says how it counts


def test_tf_backends_count_their_shared_module(tmp_path):
    backends = tmp_path / "backends"
    backends.mkdir()
    (backends / "_tf_common.py").write_text("import os\nx = 1\n")
    (backends / "keras_backend.py").write_text("y = 2\n")
    (backends / "numpy_backend.py").write_text("z = 3\n")
    assert compare.backend_loc("keras", backends) == (3, "keras_backend.py 1 + _tf_common.py 2")
    assert compare.backend_loc("numpy", backends) == (1, "numpy_backend.py 1")
    assert compare.backend_loc("torch", backends) == (None, "no torch_backend.py")


def test_count_loc_leaves_out_comments_docstrings_and_blanks(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        '"""Module docstring,\n\nover three lines."""\n'
        "\n"
        "# a comment\n"
        "import os  # code with a comment counts\n"
        "\n"
        "def f(x):\n"
        "    '''One-line docstring.'''\n"
        "    s = '# not a comment'\n"
        "    return (x +\n"
        "            1)\n"
    )
    # import, def, s = ..., return (two lines)
    assert compare.count_loc(source) == 5


def test_plots_are_written(study):
    runs, data, reports = study
    compare.compare(runs, reports, data)
    for name in ("loss_curves.png", "time_bars.png", "accuracy_bars.png", "disagreements.png"):
        png = (reports / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    assert sorted(p.name for p in reports.iterdir()) == sorted(compare.REPORT_FILES)  # no temp files left


def test_cells_from_the_study_grid(study, tmp_path):
    runs, data, reports = study
    params = tmp_path / "params.yaml"
    params.write_text("study:\n  frameworks: [numpy, keras]\n  strategies: [parallel]\n  devices: [cpu]\n")
    cells = compare.study_cells(params)
    assert cells == ["numpy-parallel-cpu", "keras-parallel-cpu"]
    compare.compare(runs, reports, data, cells)
    rows = read_csv_rows(reports / "comparison.csv")
    assert list(rows) == cells  # torch cells left over in runs/ are not in this study
    assert rows["keras-parallel-cpu"]["status"] == "missing"


def test_main_prints_the_table_and_print_only_reprints_it(study, capsys):
    runs, data, reports = study
    args = ["--runs-dir", str(runs), "--reports-dir", str(reports), "--data", str(data), "--params", "none.yaml"]
    assert compare.main(args) == 0
    printed = capsys.readouterr().out
    assert "| numpy | parallel | cpu | finished | 90.00 |" in printed
    assert compare.main(["--reports-dir", str(reports), "--print-only"]) == 0
    assert capsys.readouterr().out == printed == (reports / "comparison.md").read_text()


def test_print_only_without_a_report_says_what_to_run(tmp_path, capsys):
    assert compare.main(["--reports-dir", str(tmp_path), "--print-only"]) == 1
    assert "comparison.md: not found: run `dvc repro`" in capsys.readouterr().err


def test_malformed_metrics_name_the_file_and_key(study):
    runs, data, reports = study
    path = runs / "torch-sequential-cpu" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["samples_per_second"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(
        compare.ReportError, match=r"torch-sequential-cpu/metrics.json: missing key 'samples_per_second'"
    ):
        compare.compare(runs, reports, data)
    del metrics["status"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(compare.ReportError, match=r"metrics.json: missing key 'status'"):
        compare.compare(runs, reports, data)
    path.write_text("{not json")
    with pytest.raises(compare.ReportError, match=r"metrics.json: line 1 column 2: not valid JSON"):
        compare.compare(runs, reports, data)
    assert not reports.exists()  # nothing half-written


def test_bad_history_and_predictions_name_the_file(study):
    runs, data, reports = study
    history = runs / "numpy-parallel-cpu" / "history.csv"
    history.write_text("epoch,train_loss\n1,0.5\n")
    with pytest.raises(compare.ReportError, match=r"numpy-parallel-cpu/history.csv: missing column 'val_loss'"):
        compare.compare(runs, reports, data)
    history.write_text("epoch,train_loss,val_loss\n1,nan,0.5\n2,oops,0.4\n")
    with pytest.raises(compare.ReportError, match=r"history.csv: row 3, column 'train_loss': 'oops' is not a number"):
        compare.compare(runs, reports, data)
    history.write_text("epoch,train_loss,val_loss\n1,0.5,0.5\n")
    np.save(runs / "numpy-parallel-cpu" / "predictions.npy", np.zeros(N_TEST + 1, dtype=np.int64))
    with pytest.raises(
        compare.ReportError, match=r"numpy-parallel-cpu/predictions.npy: shape \(13,\), expected \(12,\)"
    ):
        compare.compare(runs, reports, data)


def test_no_cells_is_an_error(tmp_path):
    with pytest.raises(compare.ReportError, match="no cells found"):
        compare.compare(tmp_path / "runs", tmp_path / "reports", tmp_path / "mnist.npz")
