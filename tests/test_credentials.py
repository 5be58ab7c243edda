"""A password written into a tracking URI never leaves the environment: one sentinel password goes
through every entry point (a tracking.uri override, $MLFLOW_TRACKING_URI, a multirun sweep, a
succeeding run, a failing run, a store that cannot take a password from the environment, `reap`)
against a real `mlflow server` with MLflow's basic-auth app on 127.0.0.1 (so every run had to
authenticate with it), and is then looked for, as bytes, in every file the runs and the server
wrote (Hydra's .hydra/ and logs, out_dir, the sweep dir, the server's databases and artifacts)
and in everything the processes printed: it is nowhere."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import run_app, shrunk, stop_session
from test_tracking_processes import free_port, runs_in

SENTINEL = "Sentinel-7f3a9c1e-pw"
USER = "alice"


def status_of(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # not listening yet
        return 0


@pytest.fixture
def auth_server(tmp_path, empty_mlflow_db):
    """`mlflow server --app-name basic-auth` on 127.0.0.1 and a free port, admin USER with the
    password SENTINEL (given through the environment, as an admin would); stopped after."""
    state = tmp_path / "server"
    state.mkdir()
    shutil.copyfile(empty_mlflow_db, state / "mlflow.db")
    config = state / "auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{state / 'auth.db'}\n"
        f"admin_username = {USER}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    args = ["server", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--artifacts-destination", str(state / "art")]
    args += ["--workers", "1"]  # MLflow's default 4 each import MLflow: ~15 s of CPU more to start
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=SENTINEL)
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)  # the auth app's CSRF key
    log = open(state / "log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while status_of(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", (USER, SENTINEL)) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer:\n" + (state / "log").read_text())
            time.sleep(0.5)
        yield url
    finally:
        stop_session(proc)
        log.close()


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under root whose bytes hold secret."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_uri_password_is_in_no_output_param_tag_artifact_or_log_line(auth_server, tiny_npz, tmp_path, monkeypatch):
    url = auth_server
    assert status_of(f"{url}/api/2.0/mlflow/experiments/search?max_results=1") == 401  # no credentials, no entry
    secret_url = url.replace("http://", f"http://{USER}:{SENTINEL}@")
    project = tmp_path / "project"
    project.mkdir()

    def train(*args: str, uri: str | None = None, env: dict | None = None, name: str):
        base = [a for a in shrunk(tiny_npz, tmp_path / f"out-{name}", None) if a != "tracking=off"]
        base += ["tracking.plots=false", f"hydra.run.dir={tmp_path / f'hydra-{name}'}"]
        base += [f"tracking.uri={uri}"] if uri else []
        multirun = ["-m"] if "-m" in args else []  # Hydra wants it before the overrides
        rest = [a for a in args if a != "-m"]
        return run_app("backprop_bench.train", *multirun, *base, *rest, cwd=project, env_extra=env)

    refused = f"mysql://{USER}:{SENTINEL}@127.0.0.1:{free_port()}/mlflow"  # no variable to move it into
    done = {
        "override": train(uri=secret_url, name="override"),
        "env": train(env={"MLFLOW_TRACKING_URI": secret_url}, name="env"),
        "sweep": train(
            "-m", "train.seed=1,2", f"hydra.sweep.dir={tmp_path / 'multirun'}", uri=secret_url, name="sweep"
        ),
        "failing": train(f"data.path={tmp_path / 'no-such.npz'}", uri=secret_url, name="failing"),
        "refused": train(uri=refused, name="refused"),
        "reap": run_app("backprop_bench.tracking", "reap", "--tracking-uri", secret_url, cwd=project),
    }
    codes = {name: proc.returncode for name, proc in done.items()}
    assert codes == {"override": 0, "env": 0, "sweep": 0, "failing": 1, "refused": 1, "reap": 0}, {
        n: p.stderr[-2000:] for n, p in done.items()
    }

    # Each way in reached the server, authenticating from the environment; each run names the
    # store by its URI without the password.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)  # this process reads the runs back
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SENTINEL)
    client, runs = runs_in(url)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED"] + ["FINISHED"] * 5, statuses  # 2 runs, a sweep's parent and 2 cells; 1 failed
    assert {r.data.params["tracking.uri"] for r in runs if r.data.params} == {"None", url}  # None: from the env
    (failed,) = [r for r in runs if r.info.status == "FAILED"]
    assert "no-such.npz" in failed.data.tags["error"]
    assert (tmp_path / "multirun" / "mlflow_sweep.json").read_text().count(url) == 1

    # ... and the password is nowhere: not on the terminal, not in a file, not in the store.
    printed = {name: proc.stdout + proc.stderr for name, proc in done.items()}
    assert [name for name, text in printed.items() if SENTINEL in text] == [], printed
    assert files_holding(tmp_path, SENTINEL) == []
    for name, text in printed.items():  # the warning, or the refusal, points to the supported ways
        assert "MLFLOW_TRACKING_PASSWORD" in text and "PGPASSFILE" in text, (name, text[-2000:])
    assert "mysql://alice:***@127.0.0.1" in printed["refused"] and not (tmp_path / "hydra-refused").exists()


def test_hydra_records_the_command_line_without_the_password(tiny_npz, tmp_path):
    # Tracking off: nothing is logged, yet Hydra writes every override into .hydra/ before
    # the run starts, so the password must be gone from the command line by then.
    args = shrunk(tiny_npz, tmp_path / "out", None, f"hydra.run.dir={tmp_path / 'h'}")
    proc = run_app("backprop_bench.train", *args, f"tracking.uri=http://{USER}:{SENTINEL}@127.0.0.1:1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracking.uri=http://127.0.0.1:1" in (tmp_path / "h" / ".hydra" / "overrides.yaml").read_text()
    assert SENTINEL not in proc.stdout + proc.stderr and files_holding(tmp_path, SENTINEL) == []
