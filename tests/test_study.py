"""study.py: the study's params, the runs of one stage, and a real stage run in one process."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import make_tiny_npz

from backprop_bench.results.grid import StudyParams, read_study_params
from backprop_bench.results.key import RunKey
from backprop_bench.study import main, overrides, run_stage

PARAMS = {
    "train": {"epochs": 2, "batch_size": 16},
    "study": {
        "frameworks": ["numpy"],
        "strategies": ["sequential", "parallel"],
        "devices": ["cpu"],
        "modes": ["controlled", "native"],
        "seeds": 2,
    },
}


def write_params(path, **study):
    params = json.loads(json.dumps(PARAMS))
    params["study"].update(study)
    path.write_text(yaml.safe_dump(params))
    return path


def test_read_study_params(tmp_path):
    p = read_study_params(write_params(tmp_path / "params.yaml"))
    assert p == StudyParams(("numpy",), ("sequential", "parallel"), ("cpu",), ("controlled", "native"), 2, 2, 16)
    assert p.threads == 1  # study.threads left out: one CPU thread per framework
    assert read_study_params(write_params(tmp_path / "all.yaml", threads=0)).threads == 0
    # study.keras_on adds Keras on each backend named, after study.frameworks
    keras_on = read_study_params(
        write_params(tmp_path / "k.yaml", frameworks=["numpy", "jax"], keras_on=["torch", "jax"])
    )
    assert keras_on.frameworks == ("numpy", "jax", "keras-torch", "keras-jax")
    assert read_study_params(write_params(tmp_path / "none.yaml", keras_on=[])).frameworks == ("numpy",)


@pytest.mark.parametrize(
    "study,message",
    [
        ({"seeds": 0}, r"study.seeds=0: must be an integer >= 1"),
        ({"modes": ["controlled", "wild"]}, r"study.modes\[1\]='wild': must be one of controlled, native"),
        ({"strategies": []}, r"study.strategies=\[\]: must be a non-empty list"),
        (
            {"frameworks": ["mxnet"]},
            r"study.frameworks\[0\]='mxnet': must be one of numpy, torch, tensorflow, keras, jax",
        ),
        ({"keras_on": ["tensorflow"]}, r"study.keras_on\[0\]='tensorflow': must be one of jax, torch"),
        ({"keras_on": "jax"}, r"study.keras_on='jax': must be a list of jax, torch"),
        ({"threads": -2}, r"study.threads=-2: must be an integer >= 0 \(0: each framework's default\)"),
        ({"threads": "one"}, r"study.threads='one': must be an integer >= 0"),
    ],
)
def test_bad_study_params_name_the_file_and_option(tmp_path, study, message):
    path = write_params(tmp_path / "params.yaml", **study)
    with pytest.raises(ValueError, match=f"{tmp_path}.*{message}"):
        read_study_params(path)
    assert main(["--framework", "numpy", "--device", "cpu", "--params", str(path)]) == 2


def test_runs_and_their_overrides():
    p = StudyParams(("numpy",), ("sequential", "parallel"), ("cpu",), ("controlled", "native"), 2, 3, 32)
    runs = list(p.keys("numpy", "cpu"))
    assert len(runs) == 8 and len(set(runs)) == 8
    pair = [RunKey("numpy", "cpu", "sequential", "controlled", 0), RunKey("numpy", "cpu", "parallel", "controlled", 0)]
    assert runs[:2] == pair  # a pair runs side by side
    key = RunKey("torch", "cpu", "sequential", "native", 1)
    assert key.folder == "runs/torch-cpu/sequential-native-s1"
    assert overrides(key, p) == [
        "framework=torch",
        "strategy=sequential",
        "device=cpu",
        "train.mode=native",
        "train.seed=1",
        "out_dir=runs/torch-cpu/sequential-native-s1",
        "train.epochs=3",
        "train.batch_size=32",
        "tracking.plots=false",
    ]


@pytest.fixture
def project(tmp_path, monkeypatch, empty_mlflow_db):
    """A project root with tiny processed data where conf/ expects it, and a temp MLflow store."""
    make_tiny_npz((tmp_path / "data/processed").mkdir(parents=True) or tmp_path / "data/processed/mnist.npz")
    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_mlflow_db, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return tmp_path


def test_a_stage_runs_every_strategy_mode_and_seed_in_one_process(project):
    from mlflow.tracking import MlflowClient

    p = read_study_params(write_params(project / "params.yaml"))
    times = run_stage("numpy", "cpu", p, project)
    assert (times.runs, times.failed) == (8, 0)
    assert 0 < times.first_epochs < times.training < times.in_runs < times.total
    assert "8 of 8 runs in" in times.describe() and "training loops" in times.describe()
    metrics = {}
    for key in p.keys("numpy", "cpu"):
        strategy, mode, seed = key.strategy, key.mode, key.seed
        m = json.loads((project / key.folder / "metrics.json").read_text())
        assert (m["status"], m["strategy"], m["mode"], m["seed"], m["epochs"]) == ("finished", strategy, mode, seed, 2)
        metrics[strategy, mode, seed] = m
    # the seed changes the run; native mode starts elsewhere than controlled
    assert (
        metrics["parallel", "controlled", 0]["final_train_loss"]
        != metrics["parallel", "controlled", 1]["final_train_loss"]
    )
    assert (
        metrics["parallel", "controlled", 0]["final_train_loss"] != metrics["parallel", "native", 0]["final_train_loss"]
    )

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "study-numpy-cpu"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8 and len(runs) == 9  # each run once, under one parent
    assert {r.info.status for r in runs} == {"FINISHED"}
    names = {r.info.run_name for r in children}
    assert "numpy-sequential-cpu-native-s1" in names and len(names) == 8
    assert {r.data.tags["mode"] for r in children} == {"controlled", "native"}


def test_a_failing_run_is_failed_and_the_others_go_on(project, monkeypatch):
    from mlflow.tracking import MlflowClient

    import backprop_bench.training.run as train

    real_fit = train.fit

    def fit_crashing_once(backend, data, **kwargs):
        if kwargs["seed"] == 1 and backend.strategy == "sequential":
            raise RuntimeError("a crash in one run")
        return real_fit(backend, data, **kwargs)

    monkeypatch.setattr(train, "fit", fit_crashing_once)
    p = read_study_params(write_params(project / "params.yaml", modes=["controlled"]))
    assert run_stage("numpy", "cpu", p, project).failed == 1
    assert (project / RunKey("numpy", "cpu", "parallel", "controlled", 1).folder / "metrics.json").is_file()
    assert not (project / RunKey("numpy", "cpu", "sequential", "controlled", 1).folder / "metrics.json").exists()
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status.pop("numpy-sequential-cpu-controlled-s1") == "FAILED"
    assert status.pop("study-numpy-cpu") == "FAILED"  # the parent sums up its runs
    assert set(status.values()) == {"FINISHED"} and len(status) == 3
