"""One run as a straight line: the events a listener hears, in order, and the files written.

training/run.py never imports mlflow: everything it tells the outside world goes through a
Listener, so a recording listener sees the whole story of a run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT

from backprop_bench.core.files import Busy
from backprop_bench.training.config import to_components
from backprop_bench.training.events import Listener
from backprop_bench.training.loop import Diverged
from backprop_bench.training.run import run


class Recorder(Listener):
    run_id = "rec-1"

    def __init__(self):
        self.events: list[str] = []

    def run_started(self, key):
        self.events.append(f"started {key.name}")

    def data_loaded(self, data):
        self.events.append("data")

    def backend_built(self, info):
        self.events.append(f"backend {info['resolved_device']}")

    def epoch_ended(self, stats):
        self.events.append(f"epoch {stats.epoch}")

    def outputs_staged(self, folder, outputs):
        self.events.append(f"staged {sorted(p.name for p in folder.iterdir())} {outputs.metrics.status}")

    def run_ended(self, metrics):
        self.events.append(f"ended {metrics.status}")

    def run_failed(self, error):
        self.events.append(f"failed {type(error).__name__}")


def test_a_run_tells_its_listener_every_step_in_order(small_cfg, tmp_path):
    c = to_components(small_cfg("train.epochs=2"))
    rec = Recorder()
    metrics = run(c, tmp_path / "out", tmp_path, rec)
    files = ["history.csv", "metrics.json", "predictions.npy", "weights.npz"]
    assert rec.events == [
        "started numpy-parallel-cpu-controlled-s0",
        "data",
        "backend cpu",
        "epoch 1",
        "epoch 2",
        f"staged {files} finished",
        "ended finished",
    ]
    assert metrics.mlflow_run_id == "rec-1"  # what the listener calls the run lands in metrics.json
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == files


def test_a_failure_is_told_once_and_raised(small_cfg, tmp_path):
    cfg = small_cfg("model.output_activation=identity", "model.loss=mse", "optimizer=sgd", "optimizer.lr=1e12")
    rec = Recorder()
    with pytest.raises(Diverged):
        run(to_components(cfg), tmp_path / "out", tmp_path, rec)
    assert rec.events[-1] == "failed Diverged" and not any(e.startswith("ended") for e in rec.events)


def test_labels_outside_the_models_classes_fail_before_anything_is_built(small_cfg, tmp_path):
    rec = Recorder()
    with pytest.raises(ValueError, match=r"y_train has labels 0..9, the model's 5 outputs take 0..4"):
        run(to_components(small_cfg("model.sizes=[784,16,5]")), tmp_path / "out", tmp_path, rec)
    assert rec.events == ["started numpy-parallel-cpu-controlled-s0", "failed ValueError"]
    assert not (tmp_path / "out").exists()


def test_a_second_run_into_the_same_out_dir_is_refused_before_it_starts(small_cfg, tmp_path):
    c, out = to_components(small_cfg("train.epochs=2")), tmp_path / "out"
    second = Recorder()

    class StartsAnotherMidway(Recorder):  # a joblib multirun with a fixed out_dir, in one process
        def epoch_ended(self, stats):
            super().epoch_ended(stats)
            with pytest.raises(Busy, match=f"out_dir {out} is being written by another process"):
                run(c, out, tmp_path, second)

    first = StartsAnotherMidway()
    run(c, out, tmp_path, first)
    assert second.events == []  # refused up front: no MLflow run was ever started for it
    assert first.events[-1] == "ended finished"
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json", "predictions.npy", "weights.npz"]


def test_a_skipped_run_stages_its_files_and_ends(small_cfg, tmp_path):
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: numpy on cuda may run here")
    rec = Recorder()
    metrics = run(to_components(small_cfg("device=cuda")), tmp_path / "out", tmp_path, rec)
    assert metrics.status == "skipped"
    assert rec.events[-2:] == [
        "staged ['history.csv', 'metrics.json', 'predictions.npy', 'weights.npz'] skipped",
        "ended skipped",
    ]


def test_the_training_package_never_imports_mlflow():
    code = (
        "import sys, backprop_bench.training.run, backprop_bench.training.loop;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'torch', 'tensorflow', 'jax')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
