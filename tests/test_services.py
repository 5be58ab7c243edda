"""scripts/services.sh and scripts/mlflow_server.sh where no stack is needed: usage, status and
down with nothing running, refusals that name what is wrong (a state folder someone else could
have prepared, a server that would serve others without authentication), and `make
mlflow-server`'s default (a sqlite store, artifacts served over HTTP). The stack itself:
tests/test_cluster.py."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_in_process, stop_session

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


def snapshot(path: Path) -> dict[str, tuple]:
    """Every entry under path (itself included): its kind, mode, owner and content, links not followed."""
    found = {}
    for entry in [path, *sorted(path.rglob("*"))]:
        info = entry.lstat()
        content = (
            entry.read_bytes()
            if entry.is_file() and not entry.is_symlink()
            else os.readlink(entry)
            if entry.is_symlink()
            else None
        )
        found[str(entry)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, content)
    return found


def plant_symlink(state: Path, victim: Path) -> None:
    """An attacker's state folder as root would make it, but with env pointing at a file of root's."""
    state.mkdir(mode=0o711)
    (state / ".backprop-bench-services").touch()
    (state / "env").symlink_to(victim)


def world_writable(state: Path, victim: Path) -> None:
    state.mkdir()
    state.chmod(0o777)


def someone_elses(state: Path, victim: Path) -> None:
    state.mkdir(mode=0o711)
    os.chown(state, 65534, 65534)  # nobody


def not_ours(state: Path, victim: Path) -> None:
    """A folder of root's that up did not make (no mark), with files in it."""
    state.mkdir(mode=0o700)
    (state / "munge").mkdir()


def is_a_symlink(state: Path, victim: Path) -> None:
    state.symlink_to(victim.parent, target_is_directory=True)


def under_an_open_folder(state: Path, victim: Path) -> None:
    """Above the state folder, a folder anyone can rename entries in (no sticky bit)."""
    state.parent.chmod(0o777)


def under_someone_elses_folder(state: Path, victim: Path) -> None:
    """The state folder's parent does not exist yet, but the folder above it is another user's."""
    os.chown(state.parent, 65534, 65534)


REFUSALS = {
    plant_symlink: "{state} holds a symbolic link, {state}/env: up follows none",
    world_writable: "{state} is writable by group or others (mode 777)",
    someone_elses: "{state} belongs to uid 65534, not root",
    not_ours: "{state} holds files up did not make (no .backprop-bench-services in it)",
    is_a_symlink: "{state} is a symbolic link",
    under_an_open_folder: "{parent} (above {state}) is writable by others (mode 777) without the sticky bit",
    under_someone_elses_folder: "{parent} (above {state}) belongs to uid 65534, not root",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="up needs root, and checks the state folder only after that")
@pytest.mark.parametrize("prepare", REFUSALS, ids=lambda f: f.__name__)
def test_up_refuses_a_state_folder_someone_else_could_have_prepared(tmp_path, prepare):
    """Before it writes, re-owns or starts anything: nothing in the folder or outside it changes."""
    victim = tmp_path / "root-only" / "secret.conf"
    victim.parent.mkdir()
    victim.write_text("root's own file\n")
    victim.chmod(0o600)
    state = tmp_path / "open" / "state"
    state.parent.mkdir()
    prepare(state, victim)
    if prepare is under_someone_elses_folder:
        state = state.parent / "not-yet" / "state"  # up would make not-yet itself
    before = snapshot(tmp_path)
    done = script(SERVICES_SH, "up", BB_SERVICES_DIR=str(state), BB_PYTHON=sys.executable, BB_SERVICES_INSTALL="0")
    assert done.returncode == 1, done.stdout + done.stderr
    expected = REFUSALS[prepare].format(state=state, parent=tmp_path / "open")
    assert done.stderr.startswith(f"services.sh: {expected}"), done.stderr
    assert done.stdout == ""
    assert snapshot(tmp_path) == before, "up changed files although it refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="a folder owned by another user needs root to make")
def test_down_signals_nothing_from_a_folder_another_user_could_write(tmp_path):
    """Its pid files say which processes root signals: another user's folder could name any."""
    decoy = subprocess.Popen(["bash", "-c", "exec -a slurmd sleep 300"])
    try:
        (tmp_path / "state" / "pid").mkdir(parents=True)
        (tmp_path / "state" / "pid" / "slurmd.pid").write_text(f"{decoy.pid}\n")
        os.chown(tmp_path / "state", 65534, 65534)
        down = script(SERVICES_SH, "down", BB_SERVICES_DIR=str(tmp_path / "state"))
        assert down.returncode == 1 and down.stderr.startswith(
            f"services.sh: {tmp_path / 'state'} belongs to uid 65534, not root"
        ), down.stderr
        assert decoy.poll() is None, "down signalled a pid from a folder it cannot trust"
    finally:
        decoy.kill()
        decoy.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="down as root is what is tested")
def test_down_signals_a_pid_only_if_it_runs_as_the_services_user(tmp_path):
    """postgres writes its own pid file: naming a root process whose command line says
    "postgres" must not make root stop it."""
    decoy = subprocess.Popen(["bash", "-c", "exec -a postgres sleep 300"])  # root's, not postgres's
    try:
        state = tmp_path / "state"
        (state / "postgres" / "data").mkdir(parents=True)
        state.chmod(0o711)
        (state / "postgres" / "data" / "postmaster.pid").write_text(f"{decoy.pid}\n")
        down = script(SERVICES_SH, "down", BB_SERVICES_DIR=str(state))
        assert down.returncode == 0, down.stdout + down.stderr
        assert decoy.poll() is None, "down signalled a process that does not run as postgres"
        assert "postgres: stopped" not in down.stdout
    finally:
        decoy.kill()
        decoy.wait()


def test_the_mlflow_server_serves_other_machines_only_with_authentication(tmp_path):
    python = {"BB_PYTHON": sys.executable}
    done = script(MLFLOW_SH, BB_MLFLOW_HOST="0.0.0.0", BB_MLFLOW_STATE_DIR=str(tmp_path), **python)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "mlflow_server.sh: BB_MLFLOW_HOST=0.0.0.0: without authentication the server listens on 127.0.0.1 only;"
    ), done.stderr
    config = tmp_path / "auth.ini"
    config.write_text("[mlflow]\nadmin_username = admin\nadmin_password = x\n")
    config.chmod(0o644)
    done = script(MLFLOW_SH, BB_MLFLOW_HOST="0.0.0.0", BB_MLFLOW_AUTH_CONFIG=str(config), **python)
    assert done.returncode == 1
    expected = f"BB_MLFLOW_AUTH_CONFIG={config}: mode 644, expected 600 or 400 (it holds the admin password)"
    assert done.stderr == f"mlflow_server.sh: {expected}\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_the_mlflow_server_refuses_a_store_it_cannot_use(tmp_path):
    done = script(
        MLFLOW_SH,
        BB_MLFLOW_BACKEND_STORE_URI="file:./mlruns",
        BB_MLFLOW_STATE_DIR=str(tmp_path),
        BB_PYTHON=sys.executable,
    )
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
        stop_session(server, grace_s=60)
    first_line = (tmp_path / "server.log").read_text().splitlines()[0]
    assert first_line == f"mlflow server: store sqlite:///{tmp_path}/state/mlflow.db, " + (
        f"artifacts {tmp_path}/state/artifacts, {url}"
    )
    assert (tmp_path / "state" / "mlflow.db").is_file()
    stored = (tmp_path / "state" / "artifacts").glob(f"*/{metrics['mlflow_run_id']}/artifacts/weights.npz")
    assert len(list(stored)) == 1
