"""End to end: the whole DVC pipeline (download, preprocess, the study's train cells,
compare) in a temporary copy of the repository, shrunk through params.yaml to a tiny
subset, 1 epoch and the numpy and torch parallel cells; then a second `dvc repro` must rerun only what
an edit to torch_backend.py changed, and a third must be a no-op."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from repo_copy import ROOT, copy_repo
from repo_copy import dvc as run_dvc

FRAMEWORKS = ["numpy", "torch"]
STRATEGIES = ["parallel"]  # one strategy keeps this test to three cell runs
CELLS = [f"{f}-{s}-cpu" for f in FRAMEWORKS for s in STRATEGIES]


def dvc(args: list[str], repo: Path, mlflow_uri: str) -> subprocess.CompletedProcess:
    """dvc in the copy, with MLflow writing to a temp store."""
    return run_dvc(args, repo, {"MLFLOW_TRACKING_URI": mlflow_uri}, timeout=900)


def stages_run(result: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", result.stdout)


def shrink_study(repo: Path) -> None:
    """The study params a user would set with `dvc exp run -S`, written into params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["subset"] = 300  # 270 train + 30 val rows; the test split stays 1,000
    params["train"].update(epochs=1, batch_size=32)
    params["study"] = {"frameworks": FRAMEWORKS, "strategies": STRATEGIES, "devices": ["cpu"]}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dvc_repro_runs_the_study_and_reruns_only_what_changed(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    shrink_study(repo)
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    first = dvc(["repro"], repo, mlflow_uri)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:]
    assert stages_run(first) == ["download", "preprocess", *(f"train@{c}" for c in CELLS), "compare"]

    # The report: one row per cell, all finished, and the table printed by the stage.
    with open(repo / "reports/comparison.csv", newline="") as f:
        rows = {row["cell"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(CELLS)
    assert {row["status"] for row in rows.values()} == {"finished"}
    assert float(rows["numpy-parallel-cpu"]["speed_vs_numpy"]) == 1.0
    table = (repo / "reports/comparison.md").read_text()
    for cell in CELLS:
        framework, strategy, device = cell.split("-")
        assert f"| {framework} | {strategy} | {device} | finished |" in table
    assert table.split("\n\n")[1] in first.stdout  # compare prints the table at the end
    for name in ("loss_curves.png", "time_bars.png", "accuracy_bars.png", "disagreements.png"):
        assert (repo / "reports" / name).stat().st_size > 0
    assert (tmp_path / "mlflow.db").is_file() and not (repo / "mlflow.db").exists()

    # An edit to one backend reruns that backend's cells and the report, nothing else.
    torch_backend = repo / "src/backprop_bench/backends/torch_backend.py"
    torch_backend.write_text(torch_backend.read_text() + "\n# an edit\n")
    numpy_stamp = (repo / "runs/numpy-parallel-cpu/metrics.json").stat().st_mtime_ns
    second = dvc(["repro"], repo, mlflow_uri)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    assert stages_run(second) == ["train@torch-parallel-cpu", "compare"]
    assert (repo / "runs/numpy-parallel-cpu/metrics.json").stat().st_mtime_ns == numpy_stamp

    # Nothing changed: a no-op.
    third = dvc(["repro"], repo, mlflow_uri)
    assert third.returncode == 0, third.stdout[-5000:] + third.stderr[-5000:]
    assert stages_run(third) == []
    assert "Data and pipelines are up to date." in third.stdout


def test_study_stage_cmd_matches_the_contract():
    """dvc.yaml's train cells call the app as the pipeline contract says, and track exactly
    the params their command uses (no drift between params: and cmd)."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["matrix"] == {
        "framework": "${study.frameworks}",
        "strategy": "${study.strategies}",
        "device": "${study.devices}",
    }
    used = sorted(set(re.findall(r"\$\{((?!item\.)[a-z_.]+)\}", stage["cmd"])))
    assert used == sorted(stage["params"]) == ["train.batch_size", "train.epochs", "train.seed"]
    assert "out_dir=runs/${item.framework}-${item.strategy}-${item.device}" in stage["cmd"]
    assert "src/backprop_bench/backends/${item.framework}_backend.py" in stage["deps"]
    other_backends = [d for d in stage["deps"] if re.search(r"backends/(numpy|torch|tensorflow|keras)_backend", d)]
    assert other_backends == []  # a cell depends on its own backend module only
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params["study"]) == {"frameworks", "strategies", "devices"}
    assert set(params["train"]) == {"epochs", "batch_size", "seed"}
