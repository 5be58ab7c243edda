"""The training loop, the run's files, skips, failures, presets and import hygiene."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, compose, make_tiny_npz, run_app, run_in_process, shrunk

from backprop_bench.core.dataset import load_dataset
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Regularization
from backprop_bench.results.metrics import HISTORY_COLUMNS, read_history
from backprop_bench.results.weights import load_weights
from backprop_bench.training.loop import Diverged, batch_orders, fit


class RecordingBackend:
    """A stand-in that records the order of calls, to check what the clock brackets."""

    spec, reg, dtype = MLPSpec((2, 3, 2)), Regularization(), "float64"
    opt_spec = OptimizerSpec("sgd", lr=0.1)

    def __init__(self, losses):
        self.losses = list(losses)
        self.calls: list[str] = []
        self.orders: list[np.ndarray] = []
        self.step_losses = None
        self.lr = None

    def synchronize(self):
        self.calls.append("sync")

    def set_lr(self, lr):
        self.lr = lr

    def train_epoch(self, order, batch_size, masks=None):
        self.calls.append("train")
        self.orders.append(order.copy())
        return self.losses.pop(0)

    def evaluate(self, x, y):
        self.calls.append("eval")
        return 0.5, 0.75


def test_batch_orders_one_permutation_per_epoch_from_the_seed():
    a = list(batch_orders(50, 3, seed=1))
    b = list(batch_orders(50, 3, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # reproducible
    assert all(sorted(o) == list(range(50)) for o in a)  # permutations
    assert not np.array_equal(a[0], a[1])  # a new order each epoch
    assert not np.array_equal(a[0], next(batch_orders(50, 1, seed=2)))
    assert all(np.array_equal(o, np.arange(5)) for o in batch_orders(5, 2, seed=1, shuffle=False))


def test_fit_times_only_train_epoch_between_synchronised_clock_reads(tiny_npz):
    data = load_dataset("tiny", tiny_npz)
    backend = RecordingBackend([2.0, 1.5, 1.0])
    seen = []
    result = fit(backend, data, epochs=3, batch_size=16, seed=0, on_epoch=seen.append)
    # per epoch: sync, train, sync (the timed part), then train-set and val evaluation
    assert backend.calls == ["sync", "train", "sync", "eval", "eval"] * 3
    assert [h.epoch for h in result.history] == [1, 2, 3] and seen == result.history
    assert [h.train_loss for h in result.history] == [2.0, 1.5, 1.0]
    assert all(h.train_accuracy == 0.75 and h.val_loss == 0.5 for h in result.history)
    h = result.history[0]
    assert h.samples_per_second == pytest.approx(len(data.x_train) / h.epoch_seconds)
    assert result.train_seconds == pytest.approx(sum(h.epoch_seconds for h in result.history))
    assert result.first_epoch_seconds == result.history[0].epoch_seconds
    assert result.steady_epoch_seconds == pytest.approx(np.median([h.epoch_seconds for h in result.history[1:]]))
    for order, expected in zip(backend.orders, batch_orders(len(data.x_train), 3, seed=0)):
        assert np.array_equal(order, expected)


def test_fit_with_one_epoch_has_no_steady_time(tiny_npz):
    result = fit(
        RecordingBackend([1.0]), load_dataset("tiny", tiny_npz), epochs=1, batch_size=8, seed=0, eval_train=False
    )
    assert result.steady_epoch_seconds is None
    assert math.isnan(result.history[0].train_accuracy)
    assert result.samples_per_second == pytest.approx(64 / result.first_epoch_seconds)


def test_divergence_stops_with_the_epoch_and_says_the_step_is_unknown(tiny_npz):
    data = load_dataset("tiny", tiny_npz)
    with pytest.raises(Diverged, match=r"diverged at epoch 2 .*4 steps.*lr too high\?"):
        fit(RecordingBackend([1.0, float("nan"), 1.0]), data, epochs=3, batch_size=16, seed=0)


def test_divergence_names_the_step_when_the_backend_kept_step_losses(tiny_npz):
    backend = RecordingBackend([float("inf")])
    backend.step_losses = np.array([1.0, 3.0, np.inf, np.nan])
    with pytest.raises(Diverged, match=r"diverged at epoch 1, step 3: loss inf; lr too high\?"):
        fit(backend, load_dataset("tiny", tiny_npz), epochs=1, batch_size=16, seed=0)


# ---------------------------------------------------------------- whole runs, tracking off


def test_a_run_writes_the_four_files(small_cfg, tmp_path):
    metrics = run_in_process(small_cfg("train.epochs=3"), tmp_path)
    out = tmp_path / "out"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert on_disk["status"] == "finished" and on_disk["reason"] == ""
    assert on_disk["cell"] == "numpy-parallel-cpu" and on_disk["epochs"] == 3
    for key in ("test_accuracy", "train_seconds", "first_epoch_seconds", "steady_epoch_seconds", "peak_memory_mb"):
        assert on_disk[key] > 0
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0] == ",".join(HISTORY_COLUMNS) and len(lines) == 4
    assert float(lines[-1].split(",")[1]) == pytest.approx(on_disk["final_train_loss"])
    spec, params = load_weights(out / "weights.npz")
    assert spec.sizes == (784, 128, 64, 10) and params[0][0].shape == (784, 128)
    predictions = np.load(out / "predictions.npy")
    y_test = np.load(tmp_path / "tiny.npz")["y_test"]
    assert predictions.dtype == np.int64 and predictions.shape == y_test.shape
    assert np.mean(predictions == y_test) == pytest.approx(on_disk["test_accuracy"])
    assert not list(out.glob(".*")), "no staging leftovers"


def test_same_config_twice_gives_identical_metrics(small_cfg, tmp_path):
    a = run_in_process(small_cfg(), tmp_path)
    b = run_in_process(small_cfg(), tmp_path)
    for key in ("test_accuracy", "test_loss", "final_train_loss"):
        assert a[key] == b[key]


def test_an_unavailable_device_is_skipped_with_all_four_files(small_cfg, tmp_path):
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: numpy on cuda may run here")
    metrics = run_in_process(small_cfg("device=cuda"), tmp_path)
    assert metrics["status"] == "skipped" and "CuPy" in metrics["reason"]
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["cell"] == "numpy-parallel-cuda"
    assert (out / "history.csv").read_text().strip() == ",".join(HISTORY_COLUMNS)
    assert np.load(out / "predictions.npy").shape == (0,)
    with pytest.raises(ValueError, match="skipped run leaves no weights"):
        load_weights(out / "weights.npz")


def test_a_failed_run_leaves_the_previous_outputs(small_cfg, tmp_path):
    run_in_process(small_cfg(), tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        run_in_process(small_cfg(f"data.path={tmp_path / 'nowhere.npz'}"), tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_divergence_in_a_real_run(small_cfg, tmp_path):
    # identity output + MSE with a huge lr: the weights overflow within a couple of steps
    cfg = small_cfg("model.output_activation=identity", "model.loss=mse", "optimizer=sgd", "optimizer.lr=1e12")
    with pytest.raises(Diverged, match="lr too high"):
        run_in_process(cfg, tmp_path)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_data_that_does_not_fit_the_model_is_named(small_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"model.sizes\[0\]=2 .* 784 features"):
        run_in_process(small_cfg("model=mlp_221"), tmp_path)


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("strategy,loss_at_1000", [("parallel", 0.0011157856), ("sequential", 0.0011153760)])
def test_worked_example_preset_reproduces_the_reference(strategy, loss_at_1000, tmp_path):
    cfg = compose("experiment=worked_example_222", f"strategy={strategy}", "tracking=off", f"out_dir={tmp_path}")
    metrics = run_in_process(cfg, tmp_path)
    history = (tmp_path / "history.csv").read_text().splitlines()[1:]
    assert len(history) == 1000 == metrics["epochs"]
    assert float(history[0].split(",")[1]) == pytest.approx(0.298371109, abs=1e-9)
    assert metrics["final_train_loss"] == pytest.approx(loss_at_1000, abs=1e-10)


@pytest.mark.parametrize("preset", ["toy_221", "worked_example_222", "mnist_784_10_10", "mnist_784_128_64_10"])
def test_every_preset_runs_by_name(preset, tiny_npz, tmp_path):
    cfg = compose(
        f"experiment={preset}", "train.epochs=3", "tracking=off", f"out_dir={tmp_path}", f"data.path={tiny_npz}"
    )
    metrics = run_in_process(cfg, tmp_path)
    assert metrics["status"] == "finished" and metrics["epochs"] == 3
    assert math.isfinite(metrics["final_train_loss"])
    if preset == "worked_example_222":
        history = (tmp_path / "history.csv").read_text().splitlines()
        assert float(history[1].split(",")[1]) == pytest.approx(0.298371109, abs=1e-9)


# ---------------------------------------------------------------- the app as users call it


def test_importing_train_is_cheap_and_a_numpy_run_never_imports_torch_or_tensorflow(tiny_npz, tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        import backprop_bench.train
        heavy = ("mlflow", "torch", "tensorflow", "keras", "jax", "matplotlib")
        print("after import:", [m for m in heavy if m in sys.modules])
        sys.argv = ["train"] + {shrunk(tiny_npz, tmp_path / "out", None, f"hydra.run.dir={tmp_path / 'h'}")!r}
        backprop_bench.train.main()
        print("after run:", [m for m in heavy if m in sys.modules])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "after import: []" in proc.stdout
    assert "after run: []" in proc.stdout
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "finished"


def test_the_cli_exits_1_on_failure_and_0_on_skip(tiny_npz, tmp_path):
    args = shrunk(tiny_npz, tmp_path / "out", None, f"hydra.run.dir={tmp_path / 'h'}")
    bad = run_app("backprop_bench.train", *args, "train.epochs=-1", cwd=ROOT)
    assert bad.returncode == 1 and "train.epochs=-1: must be >= 1" in bad.stderr
    skipped = run_app("backprop_bench.train", *args, "device=cuda", cwd=ROOT)
    assert skipped.returncode == 0, skipped.stderr
    assert "SKIPPED numpy-parallel-cuda" in skipped.stdout + skipped.stderr


@pytest.mark.slow
# Ctrl-C; SLURM and joblib cancel with SIGTERM; submitit has SLURM warn with SIGUSR2 before the time limit
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGUSR2"])
def test_a_signal_to_a_real_run_ends_it_killed_and_keeps_its_history(sig, tiny_npz, tmp_path, tracking_uri):
    """The signal to the app mid-run: the MLflow run ends KILLED (never RUNNING), the epochs
    logged before it stay, no metrics.json is written, and the exit code is non-zero."""
    import os
    import signal
    import time

    from mlflow.tracking import MlflowClient

    args = shrunk(tiny_npz, tmp_path / "out", tracking_uri, "train.epochs=100000", f"hydra.run.dir={tmp_path / 'h'}")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "backprop_bench.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # a shell's background job ignores SIGINT and its children inherit that: give the app
        # the default disposition, as a terminal would, so Python installs its Ctrl-C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in proc.stdout:  # the app logs epoch 1, then every 10,000th
        seen.append(line)
        if "epoch 1:" in line:
            break
    time.sleep(3)  # some more epochs (milliseconds each on this data)
    proc.send_signal(getattr(signal, sig))
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, "".join(seen) + rest
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(client.get_experiment_by_name("backprop-bench").experiment_id)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "killed", "".join(seen) + rest
    if sig != "SIGINT":
        assert f"signal {int(getattr(signal, sig))}" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 3
    assert "epoch_seconds" in run.data.metrics and not (tmp_path / "out" / "metrics.json").exists()


def test_advanced_training_end_to_end_records_lr_and_the_best_epoch(small_cfg, tmp_path):
    """A run with dropout, a schedule and both callbacks: history.csv has the lr of every
    epoch, metrics.json the best and stopped epochs, weights.npz the best epoch's weights."""
    cfg = small_cfg(
        "train.epochs=6",
        "train.dtype=float64",
        "regularizer=dropout",
        "schedule=step",
        "schedule.step_size=2",
        "callbacks=early_stopping_and_plateau",
        "callbacks.early_stopping.patience=1",
    )
    metrics = run_in_process(cfg, tmp_path)
    out = tmp_path / "out"
    history = read_history(out / "history.csv")
    epochs = len(history["epoch"])
    assert history["lr"][:2].tolist() == [0.01, 0.01] and (epochs < 3 or history["lr"][2] == 0.005)
    best, stopped = metrics["best_epoch"], metrics["stopped_epoch"]
    assert 1 <= best <= epochs and (stopped is None or stopped == epochs == best + 1)
    assert history["val_loss"][best - 1] == history["val_loss"].min()
    # the written weights are the best epoch's: evaluating them gives that epoch's val loss
    from backprop_bench.backends.numpy_backend import NumpyBackend
    from backprop_bench.core.dataset import load_dataset

    spec, params = load_weights(out / "weights.npz")
    data = load_dataset("tiny", cfg.data.path)
    backend = NumpyBackend(spec, params, OptimizerSpec("sgd"), dtype="float64")
    assert backend.evaluate(data.x_val, data.y_val)[0] == pytest.approx(history["val_loss"][best - 1], rel=1e-12)


def test_a_monitor_without_a_validation_split_fails_before_training(tmp_path):
    npz = make_tiny_npz(tmp_path / "noval.npz", n_val=0)
    cfg = compose(*shrunk(npz, tmp_path / "out", None, "callbacks=early_stopping"))
    with pytest.raises(ValueError, match=r"callbacks.early_stopping.monitor='val_loss': needs a validation split"):
        run_in_process(cfg, tmp_path)
    assert not (tmp_path / "out").exists()


def test_shared_dataset_reads_the_file_once_per_pool_until_it_changes(tmp_path):
    import os

    from backprop_bench.training.run import shared_dataset

    npz = make_tiny_npz(tmp_path / "d.npz")
    pool: dict = {}
    first = shared_dataset("mnist", npz, pool)
    assert shared_dataset("mnist", npz, pool) is first
    assert shared_dataset("mnist", npz) is not first  # no pool: read each time
    make_tiny_npz(npz, seed=1)
    os.utime(npz, ns=(1, 1))  # a new file, whatever the clock's resolution
    again = shared_dataset("mnist", npz, pool)
    assert again is not first and again.sha256 != first.sha256
    assert shared_dataset("toy_221", None, pool).name == "toy_221"  # toy sets have no file


def test_build_backend_reuses_one_backend_per_kind(small_cfg):
    from backprop_bench.backends.numpy_backend import NumpyBackend
    from backprop_bench.core.specs import init_params
    from backprop_bench.training.config import to_components
    from backprop_bench.training.run import build_backend

    pool: dict = {}
    c = to_components(small_cfg("train.dtype=float64"))
    first = build_backend(NumpyBackend, c, init_params(c.spec, c.init, "float64"), pool)
    first.set_lr(1.0)
    again = build_backend(NumpyBackend, c, init_params(c.spec, c.init, "float64"), pool)
    assert again is first and again.lr == c.optimizer.lr  # restarted, not rebuilt
    other = to_components(small_cfg("train.dtype=float64", "strategy=sequential"))
    assert build_backend(NumpyBackend, other, init_params(c.spec, c.init, "float64"), pool) is not first
    assert len(pool) == 2 and build_backend(NumpyBackend, c, init_params(c.spec, c.init, "float64")) is not first


def test_a_stop_signal_swallowed_on_its_way_still_ends_fit(tiny_npz, monkeypatch):
    """A stop signal's KeyboardInterrupt raised inside a finalizer is printed and dropped by
    Python (it happened inside SQLAlchemy's weakref callback): the recorded signal still ends
    fit() before the next epoch, with the signal named."""
    from backprop_bench.training import signals as train

    monkeypatch.setattr(train, "STOP_SIGNALS", [])
    backend = RecordingBackend([2.0, 1.5, 1.0])
    original = backend.train_epoch

    def swallowed_interrupt(order, batch_size, masks=None):
        train.STOP_SIGNALS.append(12)  # what the handler records before its exception is lost
        return original(order, batch_size, masks)

    backend.train_epoch = swallowed_interrupt
    with pytest.raises(KeyboardInterrupt, match="signal 12"):
        fit(backend, load_dataset("tiny", tiny_npz), epochs=3, batch_size=16, seed=0)
    assert backend.calls.count("train") == 1  # epoch 2 never started
