"""Cluster sweeps for real: Hydra multiruns as SLURM jobs (the submitit launcher) on the
one-node cluster that scripts/services.sh starts, logging to its `mlflow server` on
PostgreSQL with MLflow's basic auth; a crashed cell and a scancel-led one; submitit's local
executor; and the services script's own promises (127.0.0.1 only, only the team gets in,
each daemon as its own user, secrets kept private, idempotent up, down stops exactly its pids).

The services come up once for this module (a private state folder and free ports, so a
stack a developer already runs is left alone) and go down at the end. docs/cluster.md.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_tiny_npz, run_app
from repo_copy import copy_repo, dvc
from services_stack import SERVICES, Stack
from test_dvc_team import shrink

from backprop_bench.data.formats import write_canonical_csv

pytestmark = pytest.mark.slow
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the cluster extra: pip install -e '.[cluster]'")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture
def server(services, monkeypatch):
    """The stack, with this process logged in as the project's MLflow user (MlflowClient reads
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), as after `source <state>/env`."""
    for name, value in services.credentials.items():
        monkeypatch.setenv(name, value)
    return services


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny processed set (tests/conftest.py) and its test split as a canonical CSV, for predict."""
    folder = tmp_path_factory.mktemp("tiny")
    npz = make_tiny_npz(folder / "tiny.npz")
    arrays = np.load(npz)
    csv = write_canonical_csv(folder / "test.csv", np.rint(arrays["x_test"] * 255).astype(np.int64), arrays["y_test"])
    return npz, csv


GRID = ["framework=numpy,torch", "strategy=sequential,parallel", "train.seed=0,1"]  # 8 cells
CELLS = [(f, s, seed) for f in ("numpy", "torch") for s in ("sequential", "parallel") for seed in (0, 1)]


def sweep_args(launcher: str, data_path: str, uri: str, sweep_dir: Path, *overrides: str) -> list[str]:
    """A sweep of tiny cells into its own experiment (named after the sweep folder's test)."""
    return [
        "-m",
        f"hydra/launcher={launcher}",
        f"data.path={data_path}",
        "train.epochs=1",
        "train.batch_size=16",
        "tracking.plots=false",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment_of(sweep_dir)}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def experiment_of(sweep_dir: Path) -> str:
    """One experiment per test on the shared server: pytest names tmp_path after the test."""
    return sweep_dir.parent.name


def sweep_runs(uri: str, experiment: str):
    """(client, parent run, child runs) of the one sweep in the experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name.startswith("sweep-")]
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children)
    return client, parent, children


def test_the_services_listen_on_localhost_only_and_up_is_idempotent(services):
    assert all(re.search(rf"^{s}: up in [0-9.]+ s \(pid \d+\)$", services.up_log, re.M) for s in SERVICES), (
        services.up_log
    )
    status = services.script("status")
    assert status.returncode == 0, status.stdout
    assert [line.split(":")[0] for line in status.stdout.splitlines()[: len(SERVICES)]] == SERVICES
    assert f"export MLFLOW_TRACKING_URI={services.uri}" in status.stdout
    again = services.script("up")
    assert again.returncode == 0 and again.stdout.count("already running") == len(SERVICES), again.stdout
    # Every TCP port the stack listens on is bound to 127.0.0.1, none to all interfaces.
    ports = {int(v) for k, v in services.env.items() if re.fullmatch(r"BB_\w+_PORT", k)}
    listening = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A":  # LISTEN
            listening.setdefault(int(port, 16), set()).add(address)
    assert {p: listening.get(p) for p in ports} == {p: {"0100007F"} for p in ports}  # 127.0.0.1, little-endian hex


# Who each daemon runs as: root only where it must be (slurmd starts jobs as their users).
DAEMON_USERS = {
    "munge": "munge",
    "mariadb": "mysql",
    "slurmdbd": "slurm",
    "slurmctld": "slurm",
    "slurmd": "root",
    "postgres": "postgres",
    "mlflow": "bb-mlflow",
}


def http_status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def owner(pid: int) -> str:
    return pwd.getpwuid(Path(f"/proc/{pid}").stat().st_uid).pw_name


def test_only_the_team_gets_in_and_no_secret_leaves_the_state_folder(services):
    """The MLflow server answers 401 without the project's credentials; every daemon runs as
    its own user; the generated secrets are private files, found in no log, config others can
    read, command line or status output; PostgreSQL keeps SCRAM hashes and trusts no one."""
    search = f"{services.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    creds = services.credentials
    user, password = creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]
    assert http_status(search) == 401
    assert http_status(search, user, "not-the-password") == 401
    assert http_status(search, "admin", password) == 401
    assert http_status(search, user, password) == 200
    assert http_status(f"{services.uri}/health") == 200  # the only door without a key

    pids = services.pids()
    assert {s: owner(pid) for s, pid in pids.items()} == DAEMON_USERS
    server_group = [
        p for p in Path("/proc").iterdir() if p.name.isdigit() and os.getpgid(int(p.name)) == pids["mlflow"]
    ]
    assert len(server_group) > 1 and {owner(int(p.name)) for p in server_group} == {"bb-mlflow"}  # workers too

    run = services.run_dir
    modes = {f: stat.S_IMODE(f.stat().st_mode) for f in [run, run / "env", *(run / "secrets").iterdir()]}
    assert modes.pop(run) == 0o711 and set(modes.values()) == {0o600}, modes
    assert len(modes) == 1 + 4  # env; postgres, mariadb, mlflow-admin, mlflow-user
    key = run / "munge" / "munge.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o400 and key.owner() == "munge"
    secrets = [f.read_text() for f in (run / "secrets").iterdir()]
    assert password in secrets and all(len(s) == 48 for s in secrets)
    readable = [f for f in run.rglob("*") if f.is_file() and f.stat().st_mode & stat.S_IROTH]  # logs, slurm.conf
    assert run / "etc" / "slurm.conf" in readable and run / "log" / "slurmctld.log" in readable
    for f in [*readable, *(run / "log").iterdir()]:
        text = f.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"a secret in {f}"
    status = services.script("status").stdout
    command_lines = [p.joinpath("cmdline").read_bytes().decode(errors="replace") for p in server_group]
    for shown in [status, services.up_log, *command_lines]:
        assert not [s for s in secrets if s in shown]

    port, sock = services.env["BB_PG_PORT"], str(run / "postgres")
    query = "SELECT rolpassword FROM pg_authid WHERE rolname = 'backprop_bench'"
    hashed = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-h", sock, "-p", port, "-d", "postgres", "-tAc", query],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert hashed.startswith("SCRAM-SHA-256$")
    hba = (run / "postgres" / "data" / "pg_hba.conf").read_text().splitlines()
    methods = {line.split()[-1] for line in hba if line.strip() and not line.startswith("#")}
    assert methods == {"peer", "scram-sha-256"}, methods


@pytest.mark.timeout(600)
def test_an_eight_cell_sweep_on_slurm_logs_every_run_to_the_server(server, tiny, tmp_path):
    npz, csv = tiny
    start = time.monotonic()
    args = sweep_args("slurm", str(npz), server.uri, tmp_path / "multirun", "hydra.launcher.timeout_min=10", *GRID)
    proc = run_app("backprop_bench.train", *args, cwd=ROOT, env_extra=server.env)
    print(f"8 cells through SLURM: {time.monotonic() - start:.1f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client, parent, children = sweep_runs(server.uri, experiment_of(tmp_path / "multirun"))
    assert parent.info.status == "FINISHED" and len(children) == 8
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{f}-{s}-cpu-controlled-s{seed}"
        for f in ("numpy", "torch")
        for s in ("sequential", "parallel")
        for seed in (0, 1)
    )
    assert {r.info.status for r in children} == {"FINISHED"}
    assert client.search_runs(["0"]) == [], "nothing may land in the Default experiment"
    # Each cell was its own task of one SLURM job array, and SLURM's accounting saw it complete.
    jobs = {r.data.tags["slurm_job_id"] for r in children}
    array = {j.split("_")[0] for j in jobs}
    assert len(jobs) == 8 and len(array) == 1 and all(re.fullmatch(r"\d+_[0-7]", j) for j in jobs), jobs
    wait_until_slurm_is_idle(server)  # a job's result is written a moment before SLURM marks it done
    states = settled_sacct(server, array.pop(), "JobID,State")
    assert sorted(line.split("|")[1] for line in states.split()) == ["COMPLETED"] * 8, states

    # Artifacts went through the server into its own store, and come back the same way.
    run = next(r for r in children if r.info.run_name == "torch-parallel-cpu-controlled-s1")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    got = Path(client.download_artifacts(run.info.run_id, "weights.npz", str(tmp_path)))
    assert got.stat().st_size > 0 and list((server.run_dir / "mlflow" / "artifacts").rglob("weights.npz"))
    predicted = run_app(
        "backprop_bench.predict",
        "--run-id",
        run.info.run_id,
        "--tracking-uri",
        server.uri,
        "--csv",
        str(csv),
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert f"accuracy {run.data.metrics['test_accuracy']:.4f}" in predicted.stdout


@pytest.mark.timeout(600)
def test_a_crashed_cell_ends_failed_and_a_cancelled_one_killed(server, tiny, tmp_path):
    """One cell's data file is missing (it fails inside its job, after its run opened); the last
    cell trains ~forever (its epochs come from an env var only it reads) until scancel stops it."""
    npz, _ = tiny
    data = tmp_path / "data"
    data.mkdir()
    for f, s, seed in CELLS:
        if (f, s, seed) != ("numpy", "parallel", 0):  # the crashing cell
            os.link(npz, data / f"{f}-{s}-s{seed}.npz")
    per_cell_path = str(data / "${framework.name}-${strategy.name}-s${train.seed}.npz")
    experiment = experiment_of(tmp_path / "multirun")
    per_cell_epochs = "train.epochs='${oc.env:BB_TEST_EPOCHS_${framework.name}_${strategy.name}_s${train.seed},1}'"
    args = sweep_args("slurm", per_cell_path, server.uri, tmp_path / "multirun", *GRID, per_cell_epochs)
    env = {k: v for k, v in server.env.items() if k != "MLFLOW_TRACKING_URI"}
    env["BB_TEST_EPOCHS_torch_parallel_s1"] = "1000000"  # sbatch passes the environment to the jobs
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "backprop_bench.train", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        client = MlflowClient(server.uri)
        target = wait_for_training(
            client, experiment_of(tmp_path / "multirun"), "torch-parallel-cpu-controlled-s1", proc
        )
        server.slurm("scancel", target.data.tags["slurm_job_id"])
        assert proc.wait(timeout=300) != 0, "a sweep with a failed cell must exit non-zero"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "sweep.log").read_text()
    wait_until_slurm_is_idle(server)  # the parent may stop waiting before SLURM is done with every job

    _, parent, children = sweep_runs(server.uri, experiment)
    status = {r.info.run_name: r.info.status for r in children}
    assert len(children) == 8, status
    assert status.pop("numpy-parallel-cpu-controlled-s0") == "FAILED"
    assert status.pop("torch-parallel-cpu-controlled-s1") == "KILLED"
    assert set(status.values()) == {"FINISHED"}, status
    runs = {r.info.run_name: r for r in children}
    crashed = runs["numpy-parallel-cpu-controlled-s0"].data.tags
    assert crashed["outcome"] == "failed" and "numpy-parallel-s0.npz: processed data not found" in crashed["error"]
    cancelled = runs["torch-parallel-cpu-controlled-s1"].data.tags
    assert cancelled["outcome"] == "killed" and cancelled["error"] == "KeyboardInterrupt: signal 15"
    assert parent.info.status == "FAILED"  # a cell failed; nothing is left RUNNING
    state = settled_sacct(server, cancelled["slurm_job_id"], "State")
    assert state.split()[0].startswith("CANCELLED"), state
    # The parent waits on the jobs in order: the last one, cancelled, is what it reports.
    assert f"UncompletedJobError: Job {cancelled['slurm_job_id']} " in output, output[-3000:]
    assert "CANCELLED AT" in output, output[-3000:]


def wait_until_slurm_is_idle(stack: Stack, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while stack.slurm("squeue", "-h", "-o", "%i").strip():
        assert time.monotonic() < deadline, "SLURM still has jobs:\n" + stack.slurm("squeue")
        time.sleep(0.5)


def settled_sacct(stack: Stack, job: str, fields: str, timeout: float = 60.0) -> str:
    """sacct's lines for job once no task is still pending or running there: slurmctld hands
    a job's end to slurmdbd asynchronously, so accounting can lag squeue by seconds."""
    deadline = time.monotonic() + timeout
    while True:
        out = stack.slurm("sacct", "-n", "-P", "-X", "-j", job, "-o", fields)
        if not re.search(r"\b(PENDING|RUNNING|COMPLETING|REQUEUED|RESIZING|SUSPENDED)\b", out):
            return out
        assert time.monotonic() < deadline, f"sacct still shows unfinished tasks after {timeout} s:\n{out}"
        time.sleep(0.5)


def wait_for_training(client: MlflowClient, experiment: str, run_name: str, proc: subprocess.Popen, timeout=300.0):
    """The run named run_name once it is RUNNING and has logged an epoch (mid-training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before its last cell trained"
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            found = client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'")
            if found and found[0].info.status == "RUNNING" and "train_loss" in found[0].data.metrics:
                return found[0]
        time.sleep(0.5)
    raise AssertionError(f"{run_name} did not start training within {timeout} s")


@pytest.mark.timeout(600)
def test_a_four_cell_sweep_on_submitit_local(tiny, tmp_path, tracking_uri):
    """submitit's local executor (no SLURM, no root): every cell a process of its own, one run each."""
    npz, _ = tiny
    args = sweep_args("submitit_local", str(npz), tracking_uri, tmp_path / "multirun", "train.seed=0,1,2,3")
    proc = run_app("backprop_bench.train", *args, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, parent, children = sweep_runs(tracking_uri, experiment_of(tmp_path / "multirun"))
    assert parent.info.status == "FINISHED" and {r.info.status for r in children} == {"FINISHED"}
    assert sorted(r.data.params["train.seed"] for r in children) == ["0", "1", "2", "3"]
    assert len({r.data.tags["pid"] for r in children}) == 4, "one process per cell"
    assert sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "multirun").glob("*/metrics.json")) == [
        0,
        1,
        2,
        3,
    ]


@pytest.mark.timeout(600)
def test_the_dvc_pipeline_logs_its_study_to_the_server(server, tmp_path):
    """dvc repro with MLFLOW_TRACKING_URI on the server: the study stage's parent and runs go
    there (compare reads only the runs' files, so it is indifferent to the store)."""
    repo = copy_repo(tmp_path / "repo")
    shrink(repo)  # NumPy only, both strategies, controlled, 2 seeds
    done = dvc(["repro"], repo, {"MLFLOW_TRACKING_URI": server.uri}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (repo / "reports" / "comparison.md").is_file()
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.info.run_name == "study-numpy-cpu"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and {r.info.status for r in children + [parent]} == {"FINISHED"}


@pytest.mark.timeout(300)
def test_services_down_stops_exactly_what_up_started(services):
    """Last in this module: it takes the stack down (the fixture's own down is then a no-op).
    A decoy process named like a service must survive: down goes by pid file, not by name."""
    pids = services.pids()
    assert sorted(pids) == sorted(SERVICES)
    decoy = subprocess.Popen(["bash", "-c", "exec -a slurmd sleep 300"])
    try:
        down = services.script("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values()), down.stdout
        assert decoy.poll() is None, "a process down did not start was stopped"
        status = services.script("status")
        assert status.returncode == 3 and status.stdout.count(": stopped") == len(SERVICES), status.stdout
    finally:
        decoy.send_signal(signal.SIGTERM)
        decoy.wait()
