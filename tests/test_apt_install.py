"""scripts/apt_install.sh, the one place the project's scripts install Debian packages: retried
on a failed fetch, waiting for apt's locks, and, when every try fails, apt's own reason on
stderr. A stand-in apt-get first on PATH plays a mirror that fails (the real one cannot be made
to fail on cue); the real apt-get runs through scripts/services.sh in tests/test_cluster.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts/apt_install.sh"

# Fails its first $FAILS calls the way a broken mirror does (exit 100), then succeeds; logs each call.
FAKE_APT = """#!/bin/sh
echo "$*" >> "$CALLS"
n=$(wc -l < "$CALLS")
if [ "$n" -le "$FAILS" ]; then
  echo "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  503  Service Unavailable"
  exit 100
fi
echo "Setting up $(echo "$*" | awk '{print $NF}') ..."
"""


def run(tmp_path: Path, fails: int, *args: str, tries: int = 3) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(tmp_path / "calls"), FAILS=str(fails))
    env.update(BB_APT_TRIES=str(tries), BB_APT_WAIT="0")
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="apt_install.sh installs as root only")


@root_only
def test_a_failed_fetch_is_tried_again_and_then_installs(tmp_path):
    log = tmp_path / "apt.log"
    done = run(tmp_path, 1, "--no-recommends", "--log", str(log), "munge", "slurm-wlm")
    assert done.returncode == 0, done.stderr
    assert "apt-get failed (exit 100) on try 1 of 3; trying again in 0 s" in done.stderr
    assert calls(tmp_path) == [
        "-q -o DPkg::Lock::Timeout=300 update",  # failed
        "-q -o DPkg::Lock::Timeout=300 update",
        "-q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends munge slurm-wlm",
    ]
    text = log.read_text()
    assert "try 1 of 3" in text and "503  Service Unavailable" in text and "Setting up slurm-wlm" in text


@root_only
def test_every_try_failing_ends_with_apts_own_reason(tmp_path):
    done = run(tmp_path, 99, "chromium", tries=2)
    assert done.returncode == 100
    assert len(calls(tmp_path)) == 2
    assert "apt-get install chromium failed (exit 100) 2 times; the last lines of /tmp/bb-apt." in done.stderr
    assert "  | E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  503" in done.stderr
    log = Path(done.stderr.split("the last lines of ")[1].split(":")[0])
    assert log.is_file() and log.parent.stat().st_mode & 0o777 == 0o700  # kept, private, to read
    shutil.rmtree(log.parent)


@root_only
def test_its_own_log_folder_goes_after_a_success(tmp_path):
    before = set(Path("/tmp").glob("bb-apt.*"))
    assert run(tmp_path, 0, "chromium").returncode == 0
    assert set(Path("/tmp").glob("bb-apt.*")) == before
    assert calls(tmp_path)[-1] == "-q -o DPkg::Lock::Timeout=300 install -y chromium"  # recommends kept


def test_a_user_without_root_is_told_and_nothing_is_tried(tmp_path):
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("no setpriv to run the script as another user")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        prefix = []
    # A copy in a folder that user can read: the checkout's own may sit under a private home.
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shared.chmod(0o755)
        script = shutil.copy(SCRIPT, shared / SCRIPT.name)
        done = subprocess.run(
            [*prefix, "bash", script, "chromium"], capture_output=True, text=True, timeout=60, cwd="/"
        )
    finally:
        shutil.rmtree(shared)
    assert done.returncode == 3
    assert done.stderr == "apt_install.sh: cannot install chromium: this is not a root shell with apt-get\n"


@pytest.mark.parametrize(
    ("args", "said"),
    [([], "no package named"), (["--recommends", "x"], "unknown option --recommends")],
)
def test_a_wrong_command_line_is_named(tmp_path, args, said):
    done = run(tmp_path, 0, *args)
    assert done.returncode == 2 and said in done.stderr
    assert not (tmp_path / "calls").exists()
