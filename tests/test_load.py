"""A team's load on the team server: scripts/mlflow_load.py drives the stack's authenticated,
PostgreSQL-backed `mlflow server` (scripts/services.sh, 127.0.0.1 only) with 64 runs open at
once (4 processes x 16 threads), each logging 50 epochs of metrics and then an artifact; every
run must end FINISHED with every metric of every epoch there. The measured throughput and log
call latency are printed (pytest -s) and written to the test's folder. docs/cluster.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
pytest.importorskip("psycopg2", reason="the cluster extra: pip install -e '.[cluster]'")
from mlflow.tracking import MlflowClient  # noqa: E402

PROCESSES, THREADS, EPOCHS = 4, 16, 50
METRICS = ["train_accuracy", "train_loss", "val_accuracy", "val_loss"]


@pytest.mark.timeout(900)
def test_sixty_four_concurrent_runs_on_the_team_server_all_finish_with_every_metric(services, tmp_path, monkeypatch):
    out = tmp_path / "load.json"
    args = ["--processes", str(PROCESSES), "--threads", str(THREADS), "--epochs", str(EPOCHS), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mlflow_load.py"), *args, "--experiment", "load-test"],
        env=services.env,  # the URI and the project user's credentials, as after `source <state>/env`
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    print(json.dumps(report, indent=2))
    assert report["errors"] == [] and report["runs"] == PROCESSES * THREADS == 64
    assert report["log_calls"] == 64 * EPOCHS and report["log_calls_per_s"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]

    for name, value in services.credentials.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(services.uri)
    experiment = client.get_experiment_by_name("load-test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == 64 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs) == sorted(f"load-p{p}-t{t}" for p in range(4) for t in range(16))
    for run in runs:
        assert sorted(run.data.metrics) == METRICS, run.info.run_name
        for key in METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(EPOCHS)), (run.info.run_name, key)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["summary.txt"]
    # Without the credentials the server lets none of it out.
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(Exception, match="401|Unauthorized|credentials"):
        MlflowClient(services.uri).get_experiment_by_name("load-test")
