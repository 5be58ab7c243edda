"""Hydra multirun sweeps end to end (subprocesses): skips, failures, parent runs, parallel writers."""

from __future__ import annotations

import functools
import json

import pytest
from conftest import ROOT, run_app

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def sweep(tmp_path, tiny_npz, uri, *overrides):
    args = [
        "-m",
        f"data.path={tiny_npz}",
        "train.epochs=2",
        "train.batch_size=16",
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *overrides,
    ]
    return run_app("backprop_bench.train", *args, cwd=ROOT)


def runs_of(uri):
    """(parent run, child runs) of the one sweep in the store."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id], max_results=1000)
    parents = [r for r in runs if r.info.run_name.startswith("sweep-")]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every cell's run links to the sweep's parent"
    assert all(r.data.tags["sweep_id"] == parents[0].data.tags["sweep_id"] for r in children)
    return parents[0], children


def cell_metrics(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "multirun").glob("*/metrics.json"))]


@functools.cache
def cuda_skip_reason(framework: str) -> str | None:
    """Ask the framework's backend for cuda here, the way a run does (its constructor
    resolves the device first): its DeviceUnavailable message, or None when it has a
    usable GPU, where a cuda cell must really run on it."""
    from backprop_bench.backends import DeviceUnavailable, backend_class
    from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

    spec = MLPSpec((2, 2, 2))
    try:
        backend_class(framework)(spec, init_params(spec, InitSpec()), OptimizerSpec("sgd", lr=0.1), device="cuda")
    except DeviceUnavailable as err:
        return str(err)
    return None


def assert_cuda_cell(metrics: dict, run) -> None:
    """A cuda cell is skipped with its backend's own reason where the backend has no GPU
    (never silently run on the CPU), and finished on the GPU where it has one."""
    reason = cuda_skip_reason(metrics["framework"])
    tags = run.data.tags
    if reason is None:
        assert metrics["status"] == "finished" and metrics["resolved_device"] == "cuda", metrics
        assert (run.info.status, tags["outcome"], tags["resolved_device"]) == ("FINISHED", "finished", "cuda")
    else:
        assert metrics["status"] == "skipped" and metrics["reason"] == reason, metrics
        assert "resolved_device" not in metrics, metrics
        assert (run.info.status, tags["outcome"], tags["skip_reason"]) == ("FINISHED", "skipped", reason)
        assert "resolved_device" not in tags, tags


def by_cell(children) -> dict:
    return {r.data.tags["cell"]: r for r in children}


def test_a_grid_with_impossible_cells_skips_them_and_finishes_the_rest(tmp_path, tiny_npz, tracking_uri):
    if cuda_skip_reason("numpy") is None:
        pytest.skip("CuPy sees a GPU here: numpy on cuda is possible (the full grid test covers that case)")
    proc = sweep(tmp_path, tiny_npz, tracking_uri, "framework=numpy", "strategy=sequential,parallel", "device=cpu,cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("SKIPPED numpy-") == 2
    status = {m["cell"]: m["status"] for m in cell_metrics(tmp_path)}
    assert status == {
        "numpy-sequential-cpu": "finished",
        "numpy-parallel-cpu": "finished",
        "numpy-sequential-cuda": "skipped",
        "numpy-parallel-cuda": "skipped",
    }
    parent, children = runs_of(tracking_uri)
    assert parent.info.status == "FINISHED"
    outcome = {r.info.run_name: (r.info.status, r.data.tags["outcome"]) for r in children}
    assert outcome == {
        "numpy-sequential-cpu-controlled-s0": ("FINISHED", "finished"),
        "numpy-parallel-cpu-controlled-s0": ("FINISHED", "finished"),
        "numpy-sequential-cuda-controlled-s0": ("FINISHED", "skipped"),
        "numpy-parallel-cuda-controlled-s0": ("FINISHED", "skipped"),
    }
    runs = by_cell(children)
    for m in cell_metrics(tmp_path):
        if m["device"] == "cuda":
            assert_cuda_cell(m, runs[m["cell"]])


def test_a_crashing_cell_fails_the_others_run_and_the_exit_code_says_so(tmp_path, tiny_npz, tracking_uri):
    # The second lr makes identity + MSE overflow: that cell diverges; the others must still run.
    proc = sweep(
        tmp_path,
        tiny_npz,
        tracking_uri,
        "model.output_activation=identity",
        "model.loss=mse",
        "optimizer=sgd",
        "optimizer.lr=1e12,0.01",
        "train.seed=1,2",
    )
    assert proc.returncode != 0
    assert "FAILED numpy-parallel-cpu-controlled-s1: Diverged: diverged at epoch" in proc.stdout + proc.stderr
    parent, children = runs_of(tracking_uri)
    statuses = sorted((r.data.params["optimizer.lr"], r.info.status) for r in children)
    assert statuses == [
        ("0.01", "FINISHED"),
        ("0.01", "FINISHED"),
        ("1000000000000.0", "FAILED"),
        ("1000000000000.0", "FAILED"),
    ]
    assert parent.info.status == "FAILED"
    assert not any(r.info.status == "RUNNING" for r in children + [parent])


def test_two_joblib_workers_write_eight_runs_to_one_sqlite_file(tmp_path, tiny_npz, tracking_uri):
    proc = sweep(
        tmp_path,
        tiny_npz,
        tracking_uri,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "train.seed=1,2,3,4,5,6,7,8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = runs_of(tracking_uri)
    assert len(children) == 8
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.params["train.seed"] for r in children) == [str(s) for s in range(1, 9)]
    client = MlflowClient(tracking_uri)
    for r in children:  # nothing lost: every epoch of every run, and its files
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
        assert "weights.npz" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert parent.info.status == "FINISHED"
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1


def test_the_full_framework_grid_runs_cpu_cells_and_cuda_cells_only_on_a_gpu(tmp_path, tiny_npz, tracking_uri):
    proc = sweep(
        tmp_path,
        tiny_npz,
        tracking_uri,
        "framework=numpy,torch,tensorflow,keras",
        "strategy=sequential,parallel",
        "device=cpu,cuda",
        "train.epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = cell_metrics(tmp_path)
    assert len(metrics) == 16
    _, children = runs_of(tracking_uri)
    runs = by_cell(children)
    assert sorted(runs) == sorted(m["cell"] for m in metrics)
    for m in metrics:
        if m["device"] == "cpu":
            assert m["status"] == "finished" and m["resolved_device"] == "cpu", m
            assert runs[m["cell"]].data.tags["resolved_device"] == "cpu"
        else:
            assert_cuda_cell(m, runs[m["cell"]])
