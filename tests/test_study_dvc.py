"""End to end: the whole DVC pipeline (download, preprocess, the study's stages, compare) in
a temporary copy of the repository, shrunk through params.yaml to a tiny subset, 1 epoch,
numpy, torch, jax and Keras on JAX x both strategies x both modes x 2 seeds, run as `make run` runs it
(backprop_bench.repro: two stages at a time); then a plain `dvc repro` must rerun only what an
edit to torch_backend.py changed, and a third must be a no-op."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_copy import ROOT, copy_repo, run_in
from repo_copy import dvc as run_dvc

FRAMEWORKS = ["numpy", "torch", "jax"]
KERAS_ON = ["jax"]  # Keras on JAX: a keras-on stage beside the study's
RUN_FRAMEWORKS = FRAMEWORKS + [f"keras-{b}" for b in KERAS_ON]  # the report's rows
STRATEGIES = ["sequential", "parallel"]
MODES = ["controlled", "native"]
SEEDS = 2
STAGES = [f"study@{f}-cpu" for f in FRAMEWORKS] + [f"keras-on@{b}-cpu" for b in KERAS_ON]


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
    params["study"] = {
        "frameworks": FRAMEWORKS,
        "keras_on": KERAS_ON,
        "strategies": STRATEGIES,
        "devices": ["cpu"],
        "modes": MODES,
        "seeds": SEEDS,
        "threads": 1,
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dvc_repro_runs_the_study_and_reruns_only_what_changed(tmp_path):
    from mlflow.tracking import MlflowClient

    repo = copy_repo(tmp_path / "repo")
    shrink_study(repo)
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    repro = [sys.executable, "-m", "backprop_bench.repro", "--jobs", "2"]
    first = run_in(repo, repro, {"MLFLOW_TRACKING_URI": mlflow_uri}, timeout=900)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:]
    ran = stages_run(first)
    assert ran[:2] == ["download", "preprocess"] and ran[-1] == "compare"
    assert sorted(ran[2:-1]) == sorted([*STAGES, "stability"])  # side by side, each once
    assert "2 at a time: keras-on@jax-cpu, study@torch-cpu, study@jax-cpu, study@numpy-cpu, stability" in first.stdout
    assert re.search(r"repro: [\d.]+ s in all: data [\d.]+ s; side by side \(2 at a time\)", first.stdout)
    assert dvc(["status"], repo, mlflow_uri).stdout.strip() == "Data and pipelines are up to date."

    # Every expected run exists in MLflow exactly once, finished, under its stage's parent.
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id], max_results=1000)
    names = [r.info.run_name for r in runs]
    expected = [
        f"{f}-{s}-cpu-{m}-s{seed}" for f in RUN_FRAMEWORKS for s in STRATEGIES for m in MODES for seed in range(SEEDS)
    ]
    assert sorted(n for n in names if not n.startswith("study-")) == sorted(expected)
    parents = sorted(n for n in names if n.startswith("study-") and n != "study-summary")
    assert parents == sorted(f"study-{f}-cpu" for f in RUN_FRAMEWORKS)
    assert names.count("study-summary") == 1  # the compare stage's report, a run of its own
    assert {r.info.status for r in runs} == {"FINISHED"}

    # The report: one row per framework x strategy x mode, every seed finished, with intervals.
    with open(repo / "reports/comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(RUN_FRAMEWORKS) * len(STRATEGIES) * len(MODES)
    assert all(row["test_accuracy_hw"] != "" for row in rows)  # 2 seeds: an interval
    table = (repo / "reports/comparison.md").read_text()
    assert "## sequential − parallel, paired by seed" in table and " ± " in table
    assert "Native mode" in table
    keras_row = "| keras-jax | jax | parallel | cpu | controlled | 0 | – | no steady epoch: runs of one epoch"
    assert keras_row in table  # what Keras costs over JAX: one epoch has no steady epoch to time
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert list(summary["acc"]) == ["seq", "par", "hw"] and list(summary["x"]) == ["pt", "jx", "kj"]
    for name in ("loss_curves.png", "time_bars.png", "accuracy_bars.png", "time_to_accuracy.png", "disagreements.png"):
        assert (repo / "reports" / name).stat().st_size > 0
    assert (tmp_path / "mlflow.db").is_file() and not (repo / "mlflow.db").exists()

    # The stability map ran in the same pipeline and marks a divergence.
    stability = json.loads((repo / "reports/stability.json").read_text())
    diverged = [r for r in stability["runs"] if r["status"] == "diverged"]
    assert diverged and all(r["diverged_epoch"] >= 1 for r in diverged)
    assert (repo / "reports/stability.png").stat().st_size > 0
    # compare ran after it: index.html has the stability map's plot inlined and its lr in the headline
    page = (repo / "reports/index.html").read_text()
    assert "Stability map: where the strategies part" in page and "The stability map parts the strategies" in page

    # An edit to one backend reruns that framework's stage and the report, nothing else.
    torch_backend = repo / "src/backprop_bench/backends/torch_backend.py"
    torch_backend.write_text(torch_backend.read_text() + "\n# an edit\n")
    numpy_stamp = (repo / "runs/numpy-cpu/parallel-controlled-s0/metrics.json").stat().st_mtime_ns
    second = dvc(["repro"], repo, mlflow_uri)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    assert stages_run(second) == ["study@torch-cpu", "compare"]
    assert (repo / "runs/numpy-cpu/parallel-controlled-s0/metrics.json").stat().st_mtime_ns == numpy_stamp

    # An edit to jax_backend.py reruns JAX's stage and Keras on JAX's (its step math), nothing else.
    jax_backend = repo / "src/backprop_bench/backends/jax_backend.py"
    jax_backend.write_text(jax_backend.read_text() + "\n# an edit\n")
    again = dvc(["repro"], repo, mlflow_uri)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-5000:]
    assert sorted(stages_run(again)) == ["compare", "keras-on@jax-cpu", "study@jax-cpu"]

    # Nothing changed: a no-op.
    third = dvc(["repro"], repo, mlflow_uri)
    assert third.returncode == 0, third.stdout[-5000:] + third.stderr[-5000:]
    assert stages_run(third) == []
    assert "Data and pipelines are up to date." in third.stdout


def test_study_stage_cmd_matches_the_contract():
    """dvc.yaml's study stages call the runner as the pipeline contract says, and track exactly
    the params the runner reads (no drift between params: and the code)."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["study"]
    assert stage["matrix"] == {"framework": "${study.frameworks}", "device": "${study.devices}"}
    assert stage["cmd"] == "python -m backprop_bench.study --framework ${item.framework} --device ${item.device}"
    assert sorted(stage["params"]) == [
        "study.modes",
        "study.seeds",
        "study.strategies",
        "study.threads",
        "train.batch_size",
        "train.epochs",
    ]
    assert stage["outs"] == ["runs/${item.framework}-${item.device}"]
    assert "src/backprop_bench/backends/${item.framework}_backend.py" in stage["deps"]
    other_backends = [d for d in stage["deps"] if re.search(r"backends/(numpy|torch|tensorflow|keras)_backend", d)]
    assert other_backends == []  # a stage depends on its own backend module only
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params["study"]) == {"frameworks", "keras_on", "strategies", "devices", "modes", "seeds", "threads"}
    assert set(params["train"]) == {"epochs", "batch_size"}


def test_keras_on_stages_run_keras_on_each_backend_with_that_backends_math():
    """keras-on@<backend>-<device>: the same command and params as a study stage, for the
    framework keras-<backend>; its deps name the Keras adapter and the backend it reuses."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stage, study = stages["keras-on"], stages["study"]
    assert stage["matrix"] == {"backend": "${study.keras_on}", "device": "${study.devices}"}
    assert stage["cmd"] == "python -m backprop_bench.study --framework keras-${item.backend} --device ${item.device}"
    assert stage["params"] == study["params"] and stage["outs"] == ["runs/keras-${item.backend}-${item.device}"]
    own = {
        "src/backprop_bench/backends/keras_${item.backend}_backend.py",
        "src/backprop_bench/backends/${item.backend}_backend.py",
    }
    assert own <= set(stage["deps"])
    numpy_own = ("numpy_fast", "numpy_gemm")  # the numpy stage's compile=true path
    shared = [d for d in study["deps"] if "_backend.py" not in d and "_tf_common" not in d]
    shared = [d for d in shared if not any(name in d for name in numpy_own)]
    assert set(shared) <= set(stage["deps"])  # everything else a study stage runs


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_an_experiments_exp_show_fits_160_columns(tmp_path):
    """The study's five frameworks (tiny data, 2 seeds, controlled mode, a two-lr stability map: to
    keep it short) as `make run` runs it, committed as a team would (dvc.lock included, so the deps'
    hashes stay out of --only-changed), then `dvc exp run -S train.epochs=2`: `dvc exp show
    --only-changed` fits 160 columns, summary.json's numbers included."""
    repo = copy_repo(tmp_path / "repo")
    shrink_study(repo)
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    # every framework (summary.json's columns); controlled mode only, which summary.json reads
    params["study"].update(frameworks=["numpy", "torch", "tensorflow", "keras", "jax"], modes=["controlled"])
    params["stability"].update(lrs=[0.1, 5.0], batch_sizes=[64], epochs=1)  # not what this test is about
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "COLUMNS": "400"}  # no wrapping
    repro = run_in(repo, [sys.executable, "-m", "backprop_bench.repro", "--jobs", "2"], env, timeout=900)
    assert repro.returncode == 0, repro.stdout[-5000:] + repro.stderr[-5000:]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=repo, check=True)
    exp = dvc(["exp", "run", "-S", "train.epochs=2"], repo, env["MLFLOW_TRACKING_URI"])
    assert exp.returncode == 0, exp.stdout[-5000:] + exp.stderr[-5000:]
    show = run_dvc(["exp", "show", "--only-changed", "--no-pager"], repo, env)
    assert show.returncode == 0, show.stderr
    lines = show.stdout.rstrip("\n").splitlines()
    header = next(line for line in lines if "Experiment" in line).split()
    # --only-changed shows the numbers that differ from the baseline's: a ratio may round to the same
    # two decimals after 2 epochs as after 1, and its column is then rightly left out
    before = json.loads(
        subprocess.run(
            ["git", "show", "HEAD:reports/summary.json"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
    )
    after = json.loads((repo / "reports/summary.json").read_text())
    assert set(after) == {"acc", "x"} and set(after["x"]) == {"pt", "tf", "ks", "jx", "kj"}  # kj: keras-on jax
    changed = {f"{group}.{k}" for group in ("acc", "x") for k in after[group] if after[group][k] != before[group][k]}
    assert {"acc.seq", "acc.par"} <= changed  # a second epoch moves the accuracy
    assert changed | {"train.epochs", "runs"} <= set(header), header  # runs: the changed dependency's hash
    assert max(len(line) for line in lines) <= 160, show.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stopped_make_run_leaves_no_mlflow_run_running(tmp_path):
    """SIGTERM to `python -m backprop_bench.repro` (make run) while study stages train: it passes
    a Ctrl-C to each running dvc and its stage, whose runs end KILLED; nothing is left RUNNING."""
    import os
    import signal
    import time

    from mlflow.tracking import MlflowClient

    repo = copy_repo(tmp_path / "repo")
    shrink_study(repo)
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"]["epochs"] = 400  # long enough to be caught mid-run
    params["study"].update(frameworks=["numpy"], modes=["controlled"])
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update(PYTHONPATH=str(repo / "src"), MLFLOW_TRACKING_URI=uri)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backprop_bench.repro", "--jobs", "2"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, running = time.monotonic() + 240, []
        while not running and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            running = running_runs(tmp_path / "mlflow.db")
        assert running, "no run was seen RUNNING"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "repro: stopped by signal 15; compare not run" in out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id], max_results=1000)
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert "RUNNING" not in statuses.values(), statuses
    assert statuses[running[0]] == "KILLED"


def running_runs(db: Path) -> list[str]:
    """Names of the RUNNING runs (not the stages' parents), read with sqlite3 alone: an
    MlflowClient here could race the stage that is creating the schema."""
    import sqlite3

    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute("SELECT name FROM runs WHERE status = 'RUNNING'").fetchall()
    except sqlite3.OperationalError:  # no runs table yet, or locked
        return []
    return [name for (name,) in rows if not name.startswith("study-")]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_queued_experiments_keep_their_runs_in_the_projects_own_store(tmp_path, monkeypatch):
    """`dvc exp run --queue` twice, then `dvc queue start -j 2`, with no tracking URI set: DVC runs
    each experiment in a temporary copy under .dvc/tmp/exps/ and deletes it afterwards, yet every
    run lands in the project's own mlflow.db (the one `make mlflow-ui` shows), and each
    experiment's metrics.json names runs that are there, FINISHED."""
    import time

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, as a user has it
    repo = copy_repo(tmp_path / "repo")
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["subset"] = 300
    params["train"].update(epochs=1, batch_size=32)
    params["study"].update(frameworks=["numpy"], strategies=["sequential"], modes=["controlled"], seeds=1)
    params["stability"].update(lrs=[0.1, 5.0], batch_sizes=[64], epochs=1, subset=300)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=repo, check=True)

    def dvc_ok(*args: str) -> str:
        done = run_dvc(list(args), repo, timeout=600)
        assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    queued = {"one-epoch": "train.epochs=1", "two-epochs": "train.epochs=2"}
    for name, param in queued.items():
        dvc_ok("exp", "run", "--queue", "-n", name, "-S", param)
    dvc_ok("queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while "Queued" in (status := dvc_ok("queue", "status")) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    rows = [line.split() for line in status.splitlines() if line.split()[1:2] and line.split()[1] in queued]
    assert sorted((row[1], row[-1]) for row in rows) == sorted((name, "Success") for name in queued), status

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    for name in queued:
        dvc_ok("exp", "apply", name)  # the experiment's outputs, checked out from the cache
        (metrics,) = (repo / "runs/numpy-cpu").glob("*/metrics.json")
        run_id = json.loads(metrics.read_text())["mlflow_run_id"]
        assert run_id, metrics
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == queued[name].split("=")[1]
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
