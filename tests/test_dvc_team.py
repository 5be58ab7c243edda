"""DVC for a team, end to end in a temporary copy of the repository: `dvc push` to a remote,
then a fresh `git clone` + `dvc pull` restores the data and every stage's outputs (`dvc status`
clean, `dvc exp show` has the baseline's numbers); and DVC's own queue runs three experiments
two at a time. The study is shrunk to a tiny subset, NumPy only, 1 epoch. docs/cluster.md."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from repo_copy import ROOT, copy_repo
from repo_copy import dvc as run_dvc

STAGE_OUTPUTS = ["data/raw/train.csv", "data/processed/mnist.npz", "runs/numpy-cpu", "reports/comparison.md"]


def git(*args: str, cwd: Path) -> str:
    identity = ["-c", "user.name=backprop-bench tests", "-c", "user.email=tests@backprop-bench.invalid"]
    return subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def shrink(repo: Path) -> None:
    """The smallest study that still runs every stage: 270 train rows, 1 epoch, NumPy, 2 seeds."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["subset"] = 300
    params["train"].update(epochs=1, batch_size=32)
    params["study"].update(frameworks=["numpy"], modes=["controlled"], seeds=2)
    params["stability"].update(lrs=[0.1, 5.0], batch_sizes=[64], epochs=1, subset=300)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def summary_numbers(metrics: dict) -> list[float]:
    """Every number in reports/summary.json as `dvc exp show --json` gives it ([] when missing)."""
    data = (metrics or {}).get("reports/summary.json", {}).get("data", {})

    def walk(node):
        if isinstance(node, dict):
            return [x for v in node.values() for x in walk(v)]
        return [node] if isinstance(node, int | float) and not isinstance(node, bool) else []

    return walk(data)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A shrunk copy, reproduced, committed and pushed to a local remote: (repo, remote, env)."""
    base = tmp_path_factory.mktemp("dvc-team")
    repo = copy_repo(base / "repo")
    shrink(repo)
    remote = base / "remote"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}"}

    def dvc(args: list[str], where: Path = repo) -> subprocess.CompletedProcess:
        done = run_dvc(args, where, env, timeout=600)
        assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    # --local: .dvc/config.local (git-ignored), as a user points the committed remote elsewhere.
    dvc(["remote", "modify", "--local", "storage", "url", str(remote)])
    dvc(["repro"])
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "baseline", cwd=repo)
    assert "reports/summary.json" in git("ls-files", "reports", cwd=repo).split(), "the metric is committed"
    dvc(["push"])
    return repo, remote, dvc


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fresh_clone_pulls_the_data_and_every_output(pushed, tmp_path):
    repo, remote, dvc = pushed
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    # git brings only data/local's README (the folder of data.source=file); DVC brings the rest
    assert [p.relative_to(clone).as_posix() for p in (clone / "data").rglob("*")] == [
        "data/local",
        "data/local/README.md",
    ]
    assert not (clone / "runs").exists()
    dvc(["remote", "modify", "--local", "storage", "url", str(remote)], clone)
    dvc(["pull"], clone)
    for out in STAGE_OUTPUTS:
        assert (clone / out).exists(), out
    assert (clone / "runs/numpy-cpu/parallel-controlled-s1/metrics.json").read_bytes() == (
        repo / "runs/numpy-cpu/parallel-controlled-s1/metrics.json"
    ).read_bytes()
    assert "Data and pipelines are up to date." in dvc(["status"], clone).stdout
    show = json.loads(dvc(["exp", "show", "--json"], clone).stdout)
    (baseline,) = [row for row in show if row["rev"] != "workspace"]
    numbers = summary_numbers(baseline["data"]["metrics"])
    assert numbers and all(isinstance(x, int | float) for x in numbers), baseline["data"]["metrics"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dvc_queue_runs_three_experiments_two_at_a_time(pushed):
    repo, _, dvc = pushed
    queued = {"epochs-2": "train.epochs=2", "epochs-3": "train.epochs=3", "batch-16": "train.batch_size=16"}
    for name, param in queued.items():
        dvc(["exp", "run", "--queue", "-n", name, "-S", param])
    start = time.monotonic()
    dvc(["queue", "start", "-j", "2"])
    while time.monotonic() - start < 600:
        status = dvc(["queue", "status"]).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    print(f"3 queued experiments, 2 workers: {time.monotonic() - start:.1f} s")
    rows = [line.split() for line in status.splitlines() if line.split()[1:2] and line.split()[1] in queued]
    assert sorted((row[1], row[-1]) for row in rows) == sorted((name, "Success") for name in queued), status
    show = json.loads(dvc(["exp", "show", "--json"]).stdout)
    (baseline,) = [row for row in show if row["rev"] != "workspace"]
    experiments = {rev["name"]: rev["data"] for exp in baseline["experiments"] or [] for rev in exp["revs"]}
    assert sorted(experiments) == sorted(queued)
    for name, param in queued.items():
        key, value = param.split("=")
        assert experiments[name]["params"]["params.yaml"]["data"]["train"][key.split(".")[1]] == int(value)
        assert summary_numbers(experiments[name]["metrics"]), (name, experiments[name]["metrics"])


def test_the_repository_has_a_default_remote_outside_itself_and_private_to_its_user():
    def project_config(key: str) -> str:  # .dvc/config only, not a developer's config.local
        done = run_dvc(["config", "--project", key], ROOT)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert project_config("core.remote") == "storage"
    url = project_config("remote.storage.url")
    # In the user's home (DVC expands ~): private to them, not a /tmp folder anyone can make first.
    path = Path(url).expanduser()
    assert path.is_absolute() and Path.home() in path.parents, url
    assert ROOT not in path.parents and path != ROOT


def test_the_metric_is_committed_and_the_other_reports_are_not():
    """reports/summary.json (cache: false) goes to git, so `dvc exp show` has every commit's
    numbers without a pull; the other reports are DVC outputs, in its cache and remote."""
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "reports/summary.json", "reports/comparison.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == ["reports/comparison.md"]
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["compare"]
    assert {"reports/summary.json": {"cache": False}} in stage["metrics"]
