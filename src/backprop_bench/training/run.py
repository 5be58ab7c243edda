"""One run end to end, as a straight line: load -> build -> fit -> write, telling a listener.

    metrics = run(c, out_dir, project_root, listener)

The run knows nothing of MLflow: it calls its listener's methods (training/events.py) at
each step, and the tracker (tracking/listener.py) is one such listener. Outcomes and exit
codes: docs/architecture.md, "A run".
"""

from __future__ import annotations

import logging
import math
import resource
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from backprop_bench.backends import DeviceUnavailable, backend_class
from backprop_bench.backends.base import Backend
from backprop_bench.core.dataset import Dataset, load_dataset
from backprop_bench.core.files import all_or_nothing, one_writer, under, write_npy
from backprop_bench.core.specs import Params, init_params, predicted_labels
from backprop_bench.results.metrics import FINISHED, SKIPPED, EpochStats, RunMetrics, write_history, write_metrics
from backprop_bench.results.weights import save_weights
from backprop_bench.training.callbacks import check_monitors
from backprop_bench.training.config import Components
from backprop_bench.training.events import OUT_FILES, Listener, Outputs
from backprop_bench.training.loop import Diverged, FitResult, fit

log = logging.getLogger(__name__)


def run(
    c: Components, out_dir: Path, project_root: Path, listener: Listener | None = None, pool: dict | None = None
) -> RunMetrics:
    """Train one run and write its four files into out_dir; returns its metrics. Raises on failure.

    pool: what the runs of one process (a study stage) share: the loaded dataset, and
    backends, restarted instead of rebuilt when a run needs the same kind (build_backend).

    A second run into the same out_dir while this one runs is refused up front (core.files.Busy,
    before its listener hears of it): their files would interleave."""
    listener = listener or Listener()
    with one_writer(out_dir, "out_dir"):
        listener.run_started(c.key)
        try:
            data = load(c, project_root, pool)
            listener.data_loaded(data)
            try:
                backend = build(c, data, pool)
            except DeviceUnavailable as err:
                outputs, weights = skipped(c, err, listener.run_id), []
            else:
                listener.backend_built(backend.info() | {"resolved_device": backend.device})
                result = train(c, backend, data, listener)
                outputs, weights = evaluate(c, backend, data, result, listener.run_id), backend.params()
            write(out_dir, c, outputs, weights, listener.outputs_staged)
        except BaseException as err:
            listener.run_failed(err)
            raise
        listener.run_ended(outputs.metrics)
    return outputs.metrics


# ---------------------------------------------------------------- the steps


def load(c: Components, project_root: Path, pool: dict | None) -> Dataset:
    """The run's data, checked against the model and the callbacks before anything is built."""
    data = shared_dataset(c.data.name, under(project_root, c.data.path) if c.data.path else None, pool)
    if data.n_features != c.spec.sizes[0]:
        raise ValueError(f"model.sizes[0]={c.spec.sizes[0]} but data {data.name} has {data.n_features} features")
    n_out = c.spec.sizes[-1]
    classes = max(n_out, 2)  # one sigmoid output tells 0 from 1
    for split, y in (("train", data.y_train), ("val", data.y_val), ("test", data.y_test)):
        if y.ndim == 1 and len(y) and (y.min() < 0 or y.max() >= classes):
            raise ValueError(
                f"data {data.name}: y_{split} has labels {y.min()}..{y.max()}, "
                f"the model's {n_out} outputs take 0..{classes - 1}"
            )
    check_monitors(c.training, len(data.x_val))
    return data


def build(c: Components, data: Dataset, pool: dict | None) -> Backend:
    """The backend, from the shared initial weights (controlled) or the framework's own (native,
    docs/native.md), with the train split loaded. Raises DeviceUnavailable when it cannot run here."""
    cls = backend_class(c.framework.name, c.framework.compile)
    t = c.train
    native = t.mode == "native"
    init = cls.native_init(c.spec, t.seed, t.dtype) if native else init_params(c.spec, c.init, t.dtype)
    backend = build_backend(cls, c, init, pool)
    backend.load(data.x_train, data.y_train)
    return backend


def train(c: Components, backend: Backend, data: Dataset, listener: Listener) -> FitResult:
    """fit, with the batch order of the run's mode, telling the listener after every epoch."""
    t, n = c.train, len(data.x_train)
    cls = type(backend)
    log.info("%s: %d train samples, %d epochs, batch %d", c.key.name, n, t.epochs, t.batch_size)
    return fit(
        backend,
        data,
        epochs=t.epochs,
        batch_size=t.batch_size,
        seed=t.seed,
        shuffle=t.shuffle,
        orders=cls.native_orders(n, t.epochs, t.seed) if t.mode == "native" else None,
        eval_train=t.eval_train,
        on_epoch=epoch_logger(t.epochs, listener.epoch_ended),
        training=c.training,
    )


def evaluate(c: Components, backend: Backend, data: Dataset, result: FitResult, run_id: str) -> Outputs:
    """Test loss, accuracy and predictions of the trained backend, and the run's metrics.json."""
    t, info = c.train, backend.info()
    test_loss, test_acc = backend.evaluate(data.x_test, data.y_test)
    if not math.isfinite(test_loss):
        raise Diverged(f"diverged in the last epoch: test loss {test_loss}; lr too high?")
    last = result.history[-1]
    metrics = RunMetrics(
        **c.key.fields(),
        status=FINISHED,
        test_accuracy=test_acc,
        test_loss=test_loss,
        train_seconds=result.train_seconds,
        first_epoch_seconds=result.first_epoch_seconds,
        steady_epoch_seconds=result.steady_epoch_seconds,
        samples_per_second=result.samples_per_second,
        peak_memory_mb=peak_memory_mb(info),
        final_train_loss=last.train_loss,
        final_val_accuracy=None if math.isnan(last.val_accuracy) else last.val_accuracy,
        n_train=result.n_train,
        epochs=t.epochs,
        best_epoch=result.best_epoch,
        stopped_epoch=result.stopped_epoch,
        batch_size=t.batch_size,
        dtype=t.dtype,
        resolved_device=backend.device,
        framework_version=info.get("framework_version", ""),
        device_name=info.get("device_name", ""),
        blas=info.get("blas", ""),
        mlflow_run_id=run_id,
    )
    log.info("%s: test_accuracy %.4f, train %.2f s", c.key.name, test_acc, result.train_seconds)
    return Outputs(metrics, result.history, predicted_labels(backend.predict(data.x_test)))


def skipped(c: Components, err: DeviceUnavailable, run_id: str) -> Outputs:
    """The outputs of a run that cannot run here (cuda asked for, no GPU): a reason, no numbers."""
    log.warning("SKIPPED %s: %s", c.key.cell, err)
    metrics = RunMetrics(**c.key.fields(), status=SKIPPED, reason=str(err), mlflow_run_id=run_id)
    return Outputs(metrics, [], np.zeros(0, np.int64))


def write(
    out_dir: Path, c: Components, outputs: Outputs, weights: Params, staged: Callable[[Path, Outputs], None]
) -> None:
    """Stage the four files, hand the staging folder to ``staged`` (the tracker logs them), then
    move them in: all or nothing (core.files.all_or_nothing), so a failure anywhere leaves the
    previous outputs whole. A skipped run's weights.npz has the spec and no layers: it exists
    for DVC and loads with a clear error."""
    with all_or_nothing(out_dir, OUT_FILES) as stage:
        write_metrics(stage / "metrics.json", outputs.metrics)
        write_history(stage / "history.csv", outputs.history)
        save_weights(stage / "weights.npz", c.spec, weights)
        write_npy(stage / "predictions.npy", outputs.predictions)
        staged(stage, outputs)


# ---------------------------------------------------------------- helpers


def epoch_logger(epochs: int, then: Callable[[EpochStats], None]) -> Callable[[EpochStats], None]:
    """fit's on_epoch: about ten log lines a run, then the listener."""
    every = max(1, epochs // 10)

    def on_epoch(s: EpochStats) -> None:
        if s.epoch == 1 or s.epoch % every == 0:
            log.info(
                "epoch %d: train_loss %.6g val_accuracy %.4f (%.3f s)",
                s.epoch,
                s.train_loss,
                s.val_accuracy,
                s.epoch_seconds,
            )
        then(s)

    return on_epoch


def shared_dataset(name: str, path: Path | None, pool: dict | None = None) -> Dataset:
    """load_dataset, read once per pool while the file is unchanged (path, size, mtime):
    a study stage's 12 runs would otherwise read and hash the same .npz 12 times."""
    if pool is None:
        return load_dataset(name, path)
    stat = path.stat() if path is not None and path.is_file() else None
    key = ("dataset", name, path, stat and (stat.st_size, stat.st_mtime_ns))
    if key not in pool:
        pool[key] = load_dataset(name, path)
    return pool[key]


def build_backend(cls: type[Backend], c: Components, init: Params, pool: dict | None = None) -> Backend:
    """cls built for c from init; with a pool, a backend of the same kind (same class, spec,
    optimizer, regularization and options) is restarted from init instead (Backend.restart:
    the same numbers as a new one, without TensorFlow retracing its steps)."""
    options = {
        "strategy": c.strategy,
        "device": c.device,
        "dtype": c.train.dtype,
        "compile": c.framework.compile,
        "regularization": c.regularization,
    }
    if (spe := c.framework.steps_per_execution) != 1:  # a Keras-only option, passed only when set
        options["steps_per_execution"] = spe
    key = (cls, c.spec, c.optimizer, *options.items())
    if pool is not None and key in pool:
        pool[key].restart(init)
        return pool[key]
    backend = cls(c.spec, init, c.optimizer, **options)
    if pool is not None:
        pool[key] = backend
    return backend


def peak_memory_mb(info: Mapping[str, str]) -> float:
    """The backend's device peak if it reports one (GPU), else this process's max RSS.

    Max RSS covers the whole process (Python, the framework's libraries, the data) and, in
    a joblib worker that ran earlier runs, the largest of them.
    """
    if "peak_memory_mb" in info:
        return float(info["peak_memory_mb"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
