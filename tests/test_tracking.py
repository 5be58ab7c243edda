"""The MLflow adapter: URI choice, run end states, and one full run read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_in_process

from backprop_bench.tracking import MlflowRun, NullRun, flatten, open_run, resolve_uri
from backprop_bench.train import Diverged

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def test_resolve_uri_config_then_env_then_project_sqlite(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert resolve_uri(None, tmp_path) == "http://server:5000"
    assert resolve_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"


def test_flatten_makes_dotted_string_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None"}


def test_tracking_off_is_a_null_run(tmp_path):
    run = open_run(False, None, "x", tmp_path, "name", {})
    assert isinstance(run, NullRun) and not isinstance(run, MlflowRun) and run.run_id == ""


def _only_run(uri: str, experiment: str = "backprop-bench"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_normal_exit_finishes_and_metrics_keep_their_steps(tracking_uri, tmp_path):
    with MlflowRun(tracking_uri, "backprop-bench", "r", {"framework": "numpy"}) as run:
        for epoch in (1, 2, 3):
            run.log_epoch(epoch, {"train_loss": 1.0 / epoch, "val_loss": float("nan")})
    client, r = _only_run(tracking_uri)
    assert r.info.status == "FINISHED" and r.info.run_name == "r" and r.data.tags["framework"] == "numpy"
    history = client.get_metric_history(r.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert "val_loss" not in r.data.metrics  # NaN (no val split) is not logged


def test_an_exception_fails_the_run_with_its_error_and_traceback(tracking_uri, tmp_path):
    with pytest.raises(ZeroDivisionError):
        with MlflowRun(tracking_uri, "backprop-bench", "r") as run:
            run.log_epoch(1, {"train_loss": 2.0})
            _ = 1 / 0
    client, r = _only_run(tracking_uri)
    assert r.info.status == "FAILED"
    assert r.data.tags["outcome"] == "failed" and "ZeroDivisionError" in r.data.tags["error"]
    assert r.data.metrics["train_loss"] == 2.0  # what was logged before the crash is kept
    text = Path(client.download_artifacts(r.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "1 / 0" in text


def test_ctrl_c_kills_the_run(tracking_uri):
    with pytest.raises(KeyboardInterrupt):
        with MlflowRun(tracking_uri, "backprop-bench", "r"):
            raise KeyboardInterrupt
    _, r = _only_run(tracking_uri)
    assert r.info.status == "KILLED" and r.data.tags["outcome"] == "killed"


def test_no_global_active_run_is_left_behind(tracking_uri):
    with MlflowRun(tracking_uri, "backprop-bench", "r"):
        assert mlflow.active_run() is None
    assert mlflow.active_run() is None


def test_a_whole_run_is_logged_completely(small_cfg, tracking_uri, tmp_path):
    metrics = run_in_process(small_cfg("train.epochs=3", "strategy=sequential", uri=tracking_uri), tmp_path)
    client, r = _only_run(tracking_uri)
    assert r.info.run_id == metrics["mlflow_run_id"]
    assert r.info.status == "FINISHED" and r.info.run_name == "numpy-sequential-cpu-controlled-s0"
    params = r.data.params
    assert params["train.epochs"] == "3" and params["strategy.name"] == "sequential"
    assert params["model.sizes"] == "[784, 128, 64, 10]" and params["optimizer.lr"] == "0.01"
    tags = r.data.tags
    for key in ("framework_version", "device_name", "blas", "data_sha256"):
        assert tags[key], key
    assert (tags["framework"], tags["strategy"], tags["device"], tags["outcome"]) == (
        "numpy",
        "sequential",
        "cpu",
        "finished",
    )
    assert len(tags["data_sha256"]) == 64 and "git_commit" in tags and tags["sweep_id"] == ""
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        assert [m.step for m in client.get_metric_history(r.info.run_id, name)] == [1, 2, 3], name
    for name in (
        "test_accuracy",
        "test_loss",
        "train_seconds",
        "first_epoch_seconds",
        "steady_epoch_seconds",
        "peak_memory_mb",
    ):
        assert r.data.metrics[name] == pytest.approx(metrics[name]), name
    assert r.data.metrics["steady_samples_per_second"] == pytest.approx(metrics["samples_per_second"])
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert artifacts == {
        "config.yaml",
        "curves.png",
        "confusion_matrix.png",
        "history.csv",
        "metrics.json",
        "predictions.npy",
        "weights.npz",
    }
    config = Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "epochs: 3" in config and "${" not in config  # resolved


def test_a_skipped_run_is_finished_and_tagged_skipped(small_cfg, tracking_uri, tmp_path):
    pytest.importorskip("backprop_bench.backends.numpy_backend")
    from backprop_bench.backends.numpy_backend import find_cupy

    if find_cupy()[0] is not None:
        pytest.skip("a GPU is usable here")
    metrics = run_in_process(small_cfg("device=cuda", uri=tracking_uri), tmp_path)
    _, r = _only_run(tracking_uri)
    assert metrics["status"] == "skipped" and r.info.status == "FINISHED"
    assert r.data.tags["outcome"] == "skipped" and "CuPy" in r.data.tags["skip_reason"]


def test_a_diverging_run_is_failed_in_mlflow(small_cfg, tracking_uri, tmp_path):
    cfg = small_cfg(
        "model.output_activation=identity", "model.loss=mse", "optimizer=sgd", "optimizer.lr=1e12", uri=tracking_uri
    )
    with pytest.raises(Diverged):
        run_in_process(cfg, tmp_path)
    _, r = _only_run(tracking_uri)
    assert r.info.status == "FAILED" and "diverged at epoch" in r.data.tags["error"]
