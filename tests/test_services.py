"""scripts/services.sh and scripts/mlflow_server.sh where no stack is needed: usage, status and
down with nothing running, refusals that name what is wrong, and `make mlflow-server`'s
default (a sqlite store, artifacts served over HTTP). The stack itself: tests/test_cluster.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_in_process

SERVICES_SH = ROOT / "scripts" / "services.sh"
MLFLOW_SH = ROOT / "scripts" / "mlflow_server.sh"


def script(path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env
    return subprocess.run([str(path), *args], env=full, capture_output=True, text=True, timeout=60, check=False)


def test_an_unknown_command_prints_the_usage():
    done = script(SERVICES_SH, "start")
    assert done.returncode == 1
    assert done.stderr == "services.sh: usage: scripts/services.sh up|down|status (got 'start')\n"


def test_status_and_down_with_nothing_running(tmp_path):
    status = script(SERVICES_SH, "status", BB_SERVICES_DIR=str(tmp_path))
    assert status.returncode == 3  # LSB: not running
    names = ["munge", "mariadb", "slurmdbd", "slurmctld", "slurmd", "postgres", "mlflow"]
    assert status.stdout.splitlines() == [f"{name}: stopped" for name in names]
    gone = tmp_path / "none"
    down = script(SERVICES_SH, "down", BB_SERVICES_DIR=str(gone))
    assert down.returncode == 0 and down.stdout == f"nothing to stop: no {gone}\n"


def test_a_stale_pid_file_naming_another_process_is_neither_ours_nor_stopped(tmp_path):
    """A pid file left by a crash may name a pid the system has since given to something else."""
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "pid").mkdir()
        (tmp_path / "pid" / "slurmd.pid").write_text(f"{stranger.pid}\n")
        status = script(SERVICES_SH, "status", BB_SERVICES_DIR=str(tmp_path))
        assert "slurmd: stopped" in status.stdout.splitlines()
        down = script(SERVICES_SH, "down", BB_SERVICES_DIR=str(tmp_path))
        assert down.returncode == 0 and down.stdout == "", down.stdout + down.stderr
        assert stranger.poll() is None, "down stopped a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()


def test_up_refuses_without_root_or_without_the_python(tmp_path):
    done = script(SERVICES_SH, "up", BB_SERVICES_DIR=str(tmp_path / "run"), BB_PYTHON=str(tmp_path / "no-python"))
    assert done.returncode == 1
    if os.geteuid() == 0:
        expected = f"services.sh: no python at {tmp_path / 'no-python'} (run make setup, or set BB_PYTHON)\n"
    else:
        expected = "services.sh: up needs root: slurmd starts jobs as their users and PostgreSQL runs as postgres\n"
    assert done.stderr == expected
    assert not (tmp_path / "run").exists(), "nothing is created before the checks pass"


def test_the_mlflow_server_refuses_a_store_it_cannot_use(tmp_path):
    done = script(MLFLOW_SH, BB_MLFLOW_BACKEND_STORE_URI="file:./mlruns", BB_MLFLOW_STATE_DIR=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("mlflow_server.sh: BB_MLFLOW_BACKEND_STORE_URI=file:./mlruns: expected sqlite:///")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_mlflow_server_defaults_to_sqlite_and_serves_artifacts(tmp_path, small_cfg, monkeypatch):
    """What `make mlflow-server` runs: a run logged over HTTP lands in the sqlite store, and
    its artifacts in the server's folder (the client never writes there itself)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"BB_MLFLOW_STATE_DIR": str(tmp_path / "state"), "BB_MLFLOW_PORT": str(port), "BB_PYTHON": sys.executable}
    env |= {"BB_MLFLOW_WORKERS": "1"}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen([MLFLOW_SH], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "no answer on /health:\n" + (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        metrics = run_in_process(small_cfg("tracking.plots=false", uri=url), tmp_path)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: a session of their own
        server.wait(timeout=60)
    first_line = (tmp_path / "server.log").read_text().splitlines()[0]
    assert first_line == f"mlflow server: store sqlite:///{tmp_path}/state/mlflow.db, " + (
        f"artifacts {tmp_path}/state/artifacts, {url}"
    )
    assert (tmp_path / "state" / "mlflow.db").is_file()
    stored = (tmp_path / "state" / "artifacts").glob(f"*/{metrics['mlflow_run_id']}/artifacts/weights.npz")
    assert len(list(stored)) == 1
