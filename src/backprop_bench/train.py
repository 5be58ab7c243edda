"""The Hydra app (one run per call) and the shared training loop ``fit``.

    python -m backprop_bench.train [group=option ...] [key=value ...]   # conf/config.yaml
    python -m backprop_bench.train -m framework=numpy,torch strategy=sequential,parallel
    python -m backprop_bench.train --cfg job                              # the composed config

A run writes metrics.json, history.csv, weights.npz and predictions.npy into ``out_dir``
and logs to MLflow. Outcomes and exit codes: docs/architecture.md, "A run"; the timing
rules ``fit`` follows: docs/reference.md, "Timing rules".
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from backprop_bench.backends.base import Backend, timed_epoch
from backprop_bench.callbacks import PLAIN, EarlyStopping, ReduceOnPlateau, Training, check_monitors
from backprop_bench.config import Components, register_configs, to_components
from backprop_bench.dataset import Dataset, load_dataset
from backprop_bench.io import all_or_nothing, write_npy
from backprop_bench.metrics import FINISHED, SKIPPED, CellMetrics, EpochStats, write_history, write_metrics
from backprop_bench.model import (
    MLPSpec,
    Params,
    dropout_masks,
    dropout_rng,
    init_params,
    labels_of,
    predicted_labels,
)
from backprop_bench.schedules import lr_at
from backprop_bench.weights import save_weights

if TYPE_CHECKING:
    from backprop_bench.tracking import NullRun  # for the type hint only: run() imports tracking when it runs

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # src/backprop_bench/train.py -> <root>/conf
OUT_FILES = ("metrics.json", "history.csv", "weights.npz", "predictions.npy")
# The summary metrics of a finished run that go to MLflow (samples_per_second under the
# name steady_samples_per_second: the per-epoch series already has that name).
MLFLOW_SUMMARY = (
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "first_epoch_seconds",
    "steady_epoch_seconds",
    "samples_per_second",
    "peak_memory_mb",
    "best_epoch",  # early stopping only
    "stopped_epoch",
)


class Diverged(RuntimeError):
    """The loss became NaN or inf."""


# ---------------------------------------------------------------- the training loop


@dataclass(frozen=True)
class FitResult:
    history: list[EpochStats]
    n_train: int
    best_epoch: int | None = None  # early stopping's best epoch (its weights when restored)
    stopped_epoch: int | None = None  # the epoch early stopping stopped after; None: all epochs ran

    @property
    def train_seconds(self) -> float:
        return sum(h.epoch_seconds for h in self.history)

    @property
    def first_epoch_seconds(self) -> float:
        return self.history[0].epoch_seconds

    @property
    def steady_epoch_seconds(self) -> float | None:
        """Median of epochs 2..E; None with one epoch (there is no steady state to report)."""
        rest = [h.epoch_seconds for h in self.history[1:]]
        return float(np.median(rest)) if rest else None

    @property
    def samples_per_second(self) -> float:
        """Steady throughput; the first epoch's when it is the only one."""
        return self.n_train / (self.steady_epoch_seconds or self.first_epoch_seconds)


def batch_orders(n: int, epochs: int, seed: int, shuffle: bool = True) -> Iterator[np.ndarray]:
    """One order of range(n) per epoch: a permutation from one seeded generator, or file order."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        yield rng.permutation(n) if shuffle else np.arange(n)


def fit(
    backend: Backend,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    orders: Iterable[np.ndarray] | None = None,
    eval_train: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    training: Training = PLAIN,
) -> FitResult:
    """Train up to ``epochs`` epochs on data's train split (already ``backend.load``-ed); time and
    evaluate each. Before an epoch: its lr (schedule x plateau) and dropout masks (seeded from
    seed, their own stream); after it: the callbacks. Early stopping may end it sooner, and
    restores the best epoch's weights when asked to.

    orders: one batch order per epoch; None = batch_orders(n, epochs, seed, shuffle), the trainer's own.
    """
    n, n_val = data.x_train.shape[0], len(data.x_val)
    check_monitors(training, n_val)
    history = []
    orders = batch_orders(n, epochs, seed, shuffle) if orders is None else orders
    plateau = ReduceOnPlateau(training.plateau) if training.plateau else None
    stopper = EarlyStopping(training.early_stopping) if training.early_stopping else None
    masks_rng, base_lr = dropout_rng(seed), backend.opt_spec.lr
    for epoch, order in enumerate(orders, start=1):
        raise_if_stopped()
        lr = lr_at(training.schedule, base_lr, epoch, epochs)
        backend.set_lr(plateau.lr(lr) if plateau else lr)
        masks = dropout_masks(masks_rng, n, backend.spec, backend.reg, backend.dtype)  # None without dropout
        train_loss, seconds = timed_epoch(backend, order, batch_size, masks)
        if not math.isfinite(train_loss):
            raise Diverged(_divergence_message(backend, epoch, train_loss, n, batch_size))
        train_acc = backend.evaluate(data.x_train, data.y_train)[1] if eval_train else math.nan
        val_loss, val_acc = backend.evaluate(data.x_val, data.y_val) if n_val else (math.nan, math.nan)
        if n_val and not math.isfinite(val_loss):
            raise Diverged(
                f"diverged in epoch {epoch}: the weights became non-finite (val loss {val_loss}); lr too high?"
            )
        stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc, seconds, n / seconds, backend.lr)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        value = {"val_loss": val_loss, "val_accuracy": val_acc}
        if plateau:
            plateau.end_epoch(epoch, value[plateau.spec.monitor], backend.lr)
        if stopper and stopper.end_epoch(epoch, value[stopper.spec.monitor], backend.params):
            break
    if stopper and stopper.best_params is not None and stopper.best_epoch != len(history):
        backend.set_params(stopper.best_params)  # the weights written and tested are the best epoch's
    return FitResult(history, n, stopper.best_epoch if stopper else None, stopper.stopped_epoch if stopper else None)


def _divergence_message(backend: Backend, epoch: int, loss: float, n: int, batch_size: int) -> str:
    steps = getattr(backend, "step_losses", None)  # only kept with record_steps=True
    if steps is not None and not np.all(np.isfinite(steps)):
        step = int(np.argmin(np.isfinite(steps))) + 1
        return f"diverged at epoch {epoch}, step {step}: loss {steps[step - 1]}; lr too high?"
    n_steps = math.ceil(n / batch_size)
    return (
        f"diverged at epoch {epoch} (of its {n_steps} steps, the backend reports only the mean loss, {loss}; "
        "the first bad step is unknown): lr too high?"
    )


# ---------------------------------------------------------------- one run, end to end


def run(
    c: Components,
    *,
    project_root: Path,
    out_dir: Path,
    resolved: dict,
    sweep: Mapping[str, str],
    pool: dict | None = None,
) -> dict:
    """Train one cell and write its files; returns the metrics.json dict. Raises on failure.

    pool: what the runs of one process (the study's stage) share: backends, restarted instead
    of rebuilt when a run needs the same kind (build_backend), and the loaded dataset."""
    from backprop_bench import tracking
    from backprop_bench.backends import DeviceUnavailable, backend_class

    t = c.train
    tags = {
        "cell": c.cell,
        "framework": c.framework.name,
        "strategy": c.strategy,
        "device": c.device,
        "mode": t.mode,
        "seed": t.seed,
        "dtype": c.train.dtype,
        "data": c.data.name,
        "git_commit": git_commit(project_root),
        "sweep_id": sweep.get("sweep_id", ""),
    }
    tr = c.tracking
    # The URI is checked here, before any work: a bad one raises TrackingUriError naming its option.
    uri = tracking.resolve_uri(tr.uri, project_root) if tr.enabled else None
    # Link to the sweep's parent run only when both live in the same tracking store.
    parent = sweep.get("parent_run_id") if uri and sweep.get("uri") == uri else None
    run_name = f"{c.cell}-{t.mode}-s{t.seed}"
    tracker = tracking.open_run(tr.enabled, tr.uri, tr.experiment, project_root, run_name, tags, parent)
    with tracker:
        tracker.log_params(tracking.flatten(resolved))
        data = shared_dataset(c.data.name, _under(project_root, c.data.path) if c.data.path else None, pool)
        _check_fits(c, data)
        check_monitors(c.training, len(data.x_val))  # before the backend is built
        tracker.set_tags({"data_sha256": data.sha256})
        cell = {"cell": c.cell, "framework": c.framework.name, "strategy": c.strategy, "device": c.device}
        cell |= {"mode": t.mode, "seed": t.seed}
        cls = backend_class(c.framework.name, c.framework.compile)
        native = t.mode == "native"  # the framework's own init and shuffling (docs/native.md)
        try:
            init = cls.native_init(c.spec, t.seed, t.dtype) if native else init_params(c.spec, c.init, t.dtype)
            backend = build_backend(cls, c, init, pool)
            backend.load(data.x_train, data.y_train)
        except DeviceUnavailable as err:
            log.warning("SKIPPED %s: %s", c.cell, err)
            tracker.set_tags({"outcome": SKIPPED, "skip_reason": str(err)})
            metrics = CellMetrics(**cell, status=SKIPPED, reason=str(err), mlflow_run_id=tracker.run_id)
            # the spec and no layers: weights.npz exists for DVC but loads with a clear error
            _write_outputs(out_dir, metrics, [], (c.spec, []), np.zeros(0, np.int64))
            return metrics.to_dict()
        info = backend.info()
        tracker.set_tags({k: v for k, v in info.items() if k != "peak_memory_mb"} | {"resolved_device": backend.device})
        log.info("%s: %d train samples, %d epochs, batch %d", c.cell, len(data.x_train), t.epochs, t.batch_size)

        every = max(1, t.epochs // 10)  # about ten log lines per run

        def on_epoch(s: EpochStats) -> None:
            tracker.log_epoch(s.epoch, {k: v for k, v in asdict(s).items() if k != "epoch"})
            if s.epoch == 1 or s.epoch % every == 0:
                log.info(
                    "epoch %d: train_loss %.6g val_accuracy %.4f (%.3f s)",
                    s.epoch,
                    s.train_loss,
                    s.val_accuracy,
                    s.epoch_seconds,
                )

        result = fit(
            backend,
            data,
            epochs=t.epochs,
            batch_size=t.batch_size,
            seed=t.seed,
            shuffle=t.shuffle,
            orders=cls.native_orders(len(data.x_train), t.epochs, t.seed) if native else None,
            eval_train=t.eval_train,
            on_epoch=on_epoch,
            training=c.training,
        )
        test_loss, test_acc = backend.evaluate(data.x_test, data.y_test)
        if not math.isfinite(test_loss):
            raise Diverged(f"diverged in the last epoch: test loss {test_loss}; lr too high?")
        predictions = predicted_labels(backend.predict(data.x_test))
        metrics = CellMetrics(
            **cell,
            status=FINISHED,
            test_accuracy=test_acc,
            test_loss=test_loss,
            train_seconds=result.train_seconds,
            first_epoch_seconds=result.first_epoch_seconds,
            steady_epoch_seconds=result.steady_epoch_seconds,
            samples_per_second=result.samples_per_second,
            peak_memory_mb=peak_memory_mb(backend.info()),
            final_train_loss=result.history[-1].train_loss,
            final_val_accuracy=_none_if_nan(result.history[-1].val_accuracy),
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
            mlflow_run_id=tracker.run_id,
        )
        # samples_per_second is also a per-epoch series: the summary goes under its own name
        summary = {k: getattr(metrics, k) for k in MLFLOW_SUMMARY}
        summary["steady_samples_per_second"] = summary.pop("samples_per_second")
        tracker.log_metrics({k: v for k, v in summary.items() if v is not None})

        def publish(stage: Path) -> None:
            _log_artifacts(tracker, stage, result.history, predictions, c, data, resolved)
            if tracker.run_id:  # the UI's Dataset, Source and Models columns (mlflow_logging.py)
                from backprop_bench.mlflow_logging import log_standard_columns

                log_standard_columns(tracker, stage / "weights.npz", c, data, project_root, tags["git_commit"])

        _write_outputs(out_dir, metrics, result.history, (c.spec, backend.params()), predictions, publish)
        tracker.set_tags({"outcome": FINISHED})
    log.info("%s: test_accuracy %.4f, train %.2f s -> %s", c.cell, test_acc, result.train_seconds, out_dir)
    return metrics.to_dict()


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


def _write_outputs(
    out_dir: Path,
    metrics: CellMetrics,
    history: Sequence[EpochStats],
    weights: tuple[MLPSpec, Params],
    predictions: np.ndarray,
    publish: Callable[[Path], None] | None = None,
) -> None:
    """Stage the four files, hand the staging folder to ``publish`` (MLflow), then move them in.

    Everything is written (and logged) before anything lands in out_dir, and the moves are
    all or nothing (io.all_or_nothing), so a failure leaves the previous outputs whole.
    """
    with all_or_nothing(out_dir, OUT_FILES) as stage:
        write_metrics(stage / "metrics.json", metrics)
        write_history(stage / "history.csv", history)
        save_weights(stage / "weights.npz", *weights)
        write_npy(stage / "predictions.npy", predictions)
        if publish is not None:
            publish(stage)


def _log_artifacts(
    tracker: NullRun,
    stage: Path,
    history: Sequence[EpochStats],
    predictions: np.ndarray,
    c: Components,
    data: Dataset,
    resolved: dict,
) -> None:
    """The staged files, plus the resolved config and two plots that only MLflow keeps."""
    from backprop_bench import plots

    if not tracker.run_id:  # tracking off: skip the plots too
        return
    extra = stage / "mlflow"
    extra.mkdir()
    (extra / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    if c.tracking.plots:
        plots.plot_curves(history, extra / "curves.png", c.cell)
        n_out = c.spec.sizes[-1]
        title = f"{c.cell} (test)"
        plots.plot_confusion(labels_of(data.y_test), predictions, max(n_out, 2), extra / "confusion_matrix.png", title)
    for path in sorted(extra.iterdir()):
        tracker.log_artifact(path)
    for name in OUT_FILES:
        tracker.log_artifact(stage / name)


def _check_fits(c: Components, data: Dataset) -> None:
    if data.n_features != c.spec.sizes[0]:
        raise ValueError(f"model.sizes[0]={c.spec.sizes[0]} but data {data.name} has {data.n_features} features")
    n_out = c.spec.sizes[-1]
    if data.y_train.ndim == 1 and data.y_train.max() >= n_out:
        raise ValueError(f"data {data.name} has label {data.y_train.max()}, the model has only {n_out} outputs")


# ---------------------------------------------------------------- small helpers


def peak_memory_mb(info: Mapping[str, str]) -> float:
    """The backend's device peak if it reports one (GPU), else this process's max RSS.

    Max RSS covers the whole process (Python, the framework's libraries, the data) and, in
    a joblib worker that ran earlier cells, the largest of them.
    """
    if "peak_memory_mb" in info:
        return float(info["peak_memory_mb"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def git_commit(root: Path) -> str:
    """HEAD's commit hash, or "" when root is not a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _under(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


STOP_SIGNALS: list[int] = []  # the stop signals this process received (terminate_as_interrupt)


def terminate_as_interrupt() -> None:
    """SIGTERM, SIGUSR2 and Ctrl-C end the run as an interrupt: MLflow KILLED, not RUNNING.

    SIGTERM is how dvc, joblib and SLURM stop a job (scancel, the time limit); SIGUSR2 is
    the warning submitit has SLURM send before the time limit (signal_delay_s), whose own
    handler would requeue the job to resume from a checkpoint, which a run does not have.
    The handler raises KeyboardInterrupt and also records the signal: an exception raised
    while Python runs a finalizer (a library's __del__ or weakref callback) is printed and
    dropped, so fit() checks the record between epochs (raise_if_stopped). A SIGINT that
    the parent set to be ignored stays ignored.
    """

    def handler(signum: int, frame: object) -> None:
        STOP_SIGNALS.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    stops = [signal.SIGTERM, signal.SIGUSR2]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        stops.append(signal.SIGINT)
    try:
        for sig in stops:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread (a threaded launcher): keep the default
        pass


def raise_if_stopped() -> None:
    """Raise the interrupt a stop signal asked for, if it was swallowed on its way."""
    if STOP_SIGNALS:
        raise KeyboardInterrupt(f"signal {STOP_SIGNALS[-1]}")


# ---------------------------------------------------------------- Hydra entry point

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from backprop_bench.tracking import read_sweep_info

    terminate_as_interrupt()
    c = to_components(cfg)  # validation first: a bad value fails before any work
    hc = HydraConfig.get()
    root = Path(hc.runtime.cwd)
    out_dir = _under(root, c.out_dir) if c.out_dir else Path(hc.runtime.output_dir)
    sweep = read_sweep_info(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else {}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        run(c, project_root=root, out_dir=out_dir, resolved=resolved, sweep=sweep)
    except Exception as err:
        log.error("FAILED %s: %s: %s", c.cell, type(err).__name__, err)
        raise


if __name__ == "__main__":
    main()
