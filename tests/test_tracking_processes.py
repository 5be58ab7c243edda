"""MLflow tracking across processes: a real mlflow server, a joblib sweep into a relative
sqlite file, bad URIs at the command line, a SIGKILLed run reaped (SIGINT and SIGTERM: test_train.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_app, run_in_process, shrunk, stop_session

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

EXPERIMENT = "backprop-bench"


def runs_in(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, empty_mlflow_db):
    """`mlflow server` on 127.0.0.1 and a free port, on a sqlite store in tmp; stopped after."""
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(empty_mlflow_db, db)
    port = free_port()
    args = ["server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--artifacts-destination", str(tmp_path / "server" / "art")]
    args += ["--workers", "1"]  # MLflow's default 4 each import MLflow: ~15 s of CPU more to start
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = open(tmp_path / "server" / "log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health:\n" + (tmp_path / "server" / "log").read_text())
            time.sleep(0.3)
        yield url, tmp_path / "server" / "art"
    finally:
        stop_session(proc)
        log.close()


@pytest.mark.slow
def test_a_run_logs_to_a_real_mlflow_server(mlflow_server, small_cfg, tmp_path, monkeypatch):
    url, artifacts = mlflow_server
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = run_in_process(small_cfg("tracking.plots=false", uri=url), tmp_path)
    client, (r,) = runs_in(url)
    assert r.info.run_id == metrics["mlflow_run_id"] and r.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
    assert "weights.npz" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert list(artifacts.rglob("weights.npz")), "artifacts go through the server to its destination"
    assert r.data.tags["host"] == socket.gethostname() and r.data.tags["pid"] == str(os.getpid())


@pytest.mark.slow
def test_a_two_worker_joblib_sweep_into_a_relative_sqlite_file(tmp_path, tiny_npz, empty_mlflow_db):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(empty_mlflow_db, project / "sweep.db")  # the schema only: creating it takes seconds
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"data.path={tiny_npz}",
        "train.epochs=2",
        "train.batch_size=16",
        "train.seed=1,2,3,4",
        "tracking.uri=sqlite:///sweep.db",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    proc = run_app("backprop_bench.train", *args, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = runs_in(f"sqlite:///{project}/sweep.db")
    (parent,) = [r for r in runs if r.info.run_name.startswith("sweep-")]
    children = [r for r in runs if r is not parent]
    assert sorted(r.data.params["train.seed"] for r in children) == ["1", "2", "3", "4"]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
        assert "weights.npz" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert parent.info.status == "FINISHED"
    assert len({r.data.tags["pid"] for r in children}) == 2, "two workers, each its own pid"
    assert (project / "mlartifacts").is_dir() and not list(ROOT.glob("sweep.db"))


def test_a_bad_uri_stops_a_run_and_a_sweep_before_any_training(tmp_path, tiny_npz):
    args = shrunk(tiny_npz, tmp_path / "out", None, f"hydra.run.dir={tmp_path / 'h'}")
    args = [a for a in args if a != "tracking=off"]
    one = run_app("backprop_bench.train", *args, "tracking.uri=file:./mlruns", cwd=tmp_path)
    log = one.stdout + one.stderr
    assert one.returncode == 1
    assert "tracking.uri='file:./mlruns': the file store (a path or file:) is not supported" in log
    assert "epoch 1:" not in log and not (tmp_path / "out").exists()
    env = {"MLFLOW_TRACKING_URI": "sqlite:///no/such/dir/x.db"}
    sweep = run_app(
        "backprop_bench.train",
        "-m",
        *args,
        "train.seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        cwd=tmp_path,
        env_extra=env,
    )
    assert sweep.returncode == 1
    line = f"Error: MLFLOW_TRACKING_URI='sqlite:///no/such/dir/x.db': the directory {tmp_path.resolve()}/no/such/dir"
    assert line in sweep.stderr
    assert "Launching" not in sweep.stdout + sweep.stderr and not (tmp_path / "multirun").exists()


LONG_RUN = textwrap.dedent(
    """
    import sys, time
    from backprop_bench.tracking.run import MlflowRun
    with MlflowRun(sys.argv[1], "backprop-bench", "doomed") as run:
        run.log_metrics({"train_loss": 1.0}, step=1)
        print(run.run_id, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_a_sigkilled_run_is_reaped_as_lost(tmp_path, tracking_uri):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-c", LONG_RUN, tracking_uri], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, "the run did not start"
        client = MlflowClient(tracking_uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert run_app("backprop_bench.tracking", "reap", "--tracking-uri", tracking_uri, cwd=tmp_path).returncode == 0
        assert client.get_run(run_id).info.status == "RUNNING", "a live process's run is left alone"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    reaped = run_app("backprop_bench.tracking", "reap", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert reaped.returncode == 0, reaped.stderr
    assert "reap: 1 lost run(s)" in reaped.stdout
    r = client.get_run(run_id)
    assert r.info.status == "FAILED" and r.data.tags["outcome"] == "lost"
    assert f"process {proc.pid} no longer exists" in r.data.tags["lost_reason"] and r.data.tags["lost_noticed_at"]
    assert r.data.metrics["train_loss"] == 1.0  # what it logged is kept
