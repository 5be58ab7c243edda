"""A throw-away copy of this repository, and `dvc` run inside it: for the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def repo_files() -> list[str]:
    """Tracked files plus new ones not yet committed (git-ignored outputs excluded)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def copy_repo(dest: Path) -> Path:
    """Copy the repository's files into dest (a fresh git repo, as DVC wants one)."""
    for name in repo_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def run_in(
    repo: Path, cmd: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """cmd in the copy, output captured."""
    env = dict(os.environ)
    # The stages run `python -m backprop_bench...`: the venv's python, importing the copy's
    # own sources rather than the editable install's.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo / "src")
    env.update(env_extra or {})
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def dvc(
    args: list[str], repo: Path, env_extra: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    exe = VENV_BIN / "dvc"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]
    return run_in(repo, cmd + args, env_extra, timeout)
