"""tracking/bench.py: a tiny NumPy bench recorded as MLflow runs, read back with MlflowClient.

.venv/bin/python -m pytest tests/test_tracking_bench.py -x -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backprop_bench.bench import __main__ as bench
from backprop_bench.tracking import bench as tb
from backprop_bench.tracking.run import MlflowRun

REPO = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic", "--samples", "256", "--rounds", "1", "--no-stock", "--frameworks", "numpy"]
TINY += ["--batches", "64", "--devices", "cpu", "--peak-size", "64", "--peak-repeats", "1", "--peak-seconds", "0.001"]
TINY += ["--keep-blas-env"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI on a fresh sqlite file; the bench runs in tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(tb.EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parents, [r for r in runs if r not in parents]


def test_a_bench_is_one_parent_run_with_a_child_run_per_cell(store, tmp_path):
    assert bench.main(TINY + ["--out-dir", str(tmp_path / "reports")]) == 0
    result = json.loads((tmp_path / "reports" / "bench.json").read_text())
    client, parents, children = _runs(store)

    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert tags["machine.cpu"] == result["machine"]["cpu"] and tags["version.numpy"] == np.__version__
    assert tags["blas.kernel"] and tags["command"] == result["command"] and "--no-stock" in tags["command"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == head and len(head) == 40  # the code's checkout, though the bench ran in tmp_path
    assert "version.torch" not in tags or tags["version.torch"]  # only versions present
    assert sorted(a.path for a in client.list_artifacts(parents[0].info.run_id)) == [
        "bench.json",
        "bench.md",
        "bench_phases.png",
    ]

    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_name for c in children} == {r["cell"] for r in result["cells"]}
    assert all(c.info.status == "FINISHED" for c in children)
    rows = {r["cell"]: r for r in result["cells"]}
    for child in children:
        row = rows[child.info.run_name]
        assert child.data.params == {
            "framework": "numpy",
            "mode": row["mode"],
            "strategy": row["strategy"],
            "batch": "64",
            "device": "cpu",
            "group": "main",
            "compile": str(row["compile"]),
            "steps_per_execution": "1",
        }
        assert child.data.metrics["median_epoch_seconds"] == pytest.approx(row["median_epoch_seconds"])
        assert child.data.metrics["samples_per_second"] == pytest.approx(row["samples_per_second"])
        series = client.get_metric_history(child.info.run_id, "epoch_seconds")
        assert [(m.step, m.value) for m in series] == [(1, pytest.approx(row["epoch_seconds"][0]))]


def test_the_rounds_are_a_metric_series_and_a_baseline_verdict_is_tagged(store, tmp_path):
    row = {"cell": "numpy-plain-parallel-b64-cpu", "framework": "numpy", "mode": "plain", "strategy": "parallel"}
    row |= {"batch": 64, "device": "cpu", "group": "main", "compile": False, "steps_per_execution": 1}
    row |= {"status": "ok", "epoch_seconds": [0.3, 0.2, 0.25], "median_epoch_seconds": 0.25}
    failed = row | {"cell": "numpy-fast-parallel-b64-cpu", "mode": "fast", "status": "failed", "reason": "boom"}
    failed |= {"epoch_seconds": [], "median_epoch_seconds": None}
    result = _result([row, failed])
    result["baseline"] = {"cells": [{"cell": row["cell"], "group": "main", "ratio": 1.5, "verdict": "slower"}]}
    tb.record_bench(result, [], tmp_path)
    client, _, children = _runs(store)
    by_name = {c.info.run_name: c for c in children}
    ok = by_name[row["cell"]]
    series = client.get_metric_history(ok.info.run_id, "epoch_seconds")
    assert sorted((m.step, m.value) for m in series) == [(1, 0.3), (2, 0.2), (3, 0.25)]
    assert ok.data.metrics["baseline_ratio"] == 1.5 and ok.data.tags["baseline_verdict"] == "slower"
    bad = by_name[failed["cell"]]
    assert bad.data.tags["status"] == "failed" and bad.data.tags["reason"] == "boom"
    assert "median_epoch_seconds" not in bad.data.metrics


@pytest.mark.parametrize(("error", "status"), [(OSError("disk full"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_no_run_is_left_running_when_recording_stops(store, tmp_path, monkeypatch, error, status):
    def fail(self, path):
        raise error

    monkeypatch.setattr(MlflowRun, "log_artifact", fail)
    (tmp_path / "bench.md").write_text("# report\n")
    with pytest.raises(type(error)):
        tb.record_bench(_result([]), [tmp_path / "bench.md"], tmp_path)
    _, parents, _ = _runs(store)
    assert [p.info.status for p in parents] == [status]


def test_a_bench_without_tracking_never_imports_mlflow(tmp_path):
    argv = TINY + ["--no-tracking", "--out-dir", str(tmp_path)]
    code = (
        f"import sys; from backprop_bench.bench.__main__ import main; rc = main({argv!r}); "
        "print('MLFLOW', 'mlflow' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "MLFLOW False" in done.stdout and not (tmp_path / "mlflow.db").exists()


def test_a_bad_tracking_uri_stops_the_bench_before_it_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///nowhere")
    with pytest.raises(SystemExit):
        bench.parse_args(TINY)
    assert "--tracking" in capsys.readouterr().err
    assert bench.parse_args(TINY + ["--no-tracking"]).tracking is False


def test_outside_a_checkout_the_commit_is_unknown(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tb, "SOURCE", tmp_path)  # no git checkout
    tb.record_bench(_result([]), [], tmp_path)
    _, parents, _ = _runs(store)
    assert parents[0].data.tags["git.commit"] == "unknown" and "mlflow.source.git.commit" not in parents[0].data.tags


def _result(rows: list[dict]) -> dict:
    """The part of a bench.json that record_bench reads."""
    return {
        "machine": {"cpu": "Test CPU", "cores_usable": 2},
        "blas": [{"internal_api": "openblas", "architecture": "Haswell"}],
        "versions": {"python": "3.11", "numpy": np.__version__, "torch": None},
        "command": "python -m backprop_bench.bench",
        "cell_set": "default",
        "data": {"source": "synthetic", "n": 256},
        "rounds": 3,
        "batches": [64],
        "cells": rows,
    }
