"""The stack of scripts/services.sh for tests that need it running (test_cluster, test_load):
`up` in a private state folder on free ports, `down` and the folder removed after. Not a test
module: a helper, like repo_copy.py. docs/cluster.md."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

SERVICES_SH = ROOT / "scripts" / "services.sh"
SERVICES = ["munge", "mariadb", "slurmdbd", "slurmctld", "slurmd", "postgres", "mlflow"]
# What the services need, by the Debian package that brings it (services.sh installs them).
DEBIAN = {"munged": "munge", "mariadbd": "mariadb-server", "slurmdbd": "slurmdbd", "slurmctld": "slurm-wlm"}
# Where each service's pid file is (services.sh's pid_file): a daemon that is not root writes its own.
PID_FILES = {
    "munge": "munge/munged.pid",
    "mariadb": "mysql/mariadbd.pid",
    "postgres": "postgres/data/postmaster.pid",
} | {s: f"pid/{s}.pid" for s in ("slurmdbd", "slurmctld", "slurmd", "mlflow")}


def cannot_run() -> str | None:
    """Why the services cannot start here, or None."""
    if os.geteuid() != 0:
        return "scripts/services.sh up needs root (slurmd starts jobs as their users, PostgreSQL runs as postgres)"
    missing = [pkg for exe, pkg in DEBIAN.items() if not (shutil.which(exe) or Path("/usr/sbin", exe).exists())]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing.append("postgresql")
    if missing and not shutil.which("apt-get"):
        return f"Debian packages {', '.join(missing)} are missing and there is no apt-get to install them"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env_file(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of the env file `up` writes."""
    lines = [line.removeprefix("export ") for line in path.read_text().splitlines() if line.startswith("export ")]
    return dict(line.split("=", 1) for line in lines)


@dataclass
class Stack:
    run_dir: Path
    env: dict[str, str]  # a client's environment: SLURM_CONF, the MLflow credentials, the services' settings
    uri: str  # the MLflow server
    up_log: str

    @property
    def credentials(self) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of the project's MLflow user."""
        return {k: v for k, v in self.env.items() if k.startswith("MLFLOW_TRACKING_") and k != "MLFLOW_TRACKING_URI"}

    def script(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SERVICES_SH), command], env=self.env, capture_output=True, text=True, timeout=900, check=False
        )

    def slurm(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def pids(self) -> dict[str, int]:
        """Each service's pid, from the pid files `up` left."""
        files = {s: self.run_dir / f for s, f in PID_FILES.items()}
        return {s: int(f.read_text().split()[0]) for s, f in files.items() if f.is_file()}


@contextmanager
def running_stack() -> Iterator[Stack]:
    """scripts/services.sh up in a fresh state folder on free ports; down (and removed) after."""
    # Under /tmp, not pytest's tmp_path: unix socket paths stay short. An empty folder root
    # made is one `up` accepts (it makes it 0711 and marks it its own).
    run_dir = Path(tempfile.mkdtemp(prefix="bb-services-", dir="/tmp"))
    ports = {
        name: str(free_port())
        for name in ("MLFLOW", "PG", "MYSQL", "SLURMCTLD", "SLURMD", "SLURMDBD")  # BB_<name>_PORT
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env |= {f"BB_{name}_PORT": port for name, port in ports.items()}
    env |= {"BB_SERVICES_DIR": str(run_dir), "BB_PYTHON": sys.executable}
    stack = Stack(run_dir, env, f"http://127.0.0.1:{ports['MLFLOW']}", "")
    up = stack.script("up")
    try:
        assert up.returncode == 0, f"services.sh up failed:\n{up.stdout}\n{up.stderr}"
        stack.up_log = up.stdout
        print(up.stdout)  # the start time of each service (pytest -s shows it)
        stack.env |= read_env_file(run_dir / "env")  # what a user gets from `source <state>/env`
        yield stack
    finally:
        down = stack.script("down")
        print(down.stdout, down.stderr)
        if down.returncode == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
