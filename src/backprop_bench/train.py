"""The Hydra app (one run per call) and the shared training loop ``fit``.

    python -m backprop_bench.train                                   # defaults: conf/config.yaml
    python -m backprop_bench.train framework=torch strategy=sequential train.epochs=3
    python -m backprop_bench.train experiment=worked_example_222     # a preset, conf/experiment/
    python -m backprop_bench.train -m framework=numpy,torch,tensorflow,keras \
        strategy=sequential,parallel device=cpu,cuda                 # the grid; cuda cells skip here
    python -m backprop_bench.train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 train.seed=1,2,3,4
    python -m backprop_bench.train --cfg job                         # print the composed config

A run writes metrics.json, history.csv, weights.npz and predictions.npy into ``out_dir``
(docs/architecture.md, "A study cell") and logs everything to MLflow (tracking.py).

Outcomes: finished (exit 0); skipped, when the backend raises DeviceUnavailable (one
warning line, metrics.json status "skipped", exit 0); failed, on any error or divergence
(MLflow FAILED, out_dir left untouched, exit 1; in a multirun the other cells still run
and Hydra exits 1 at the end).

Timing rules (DESIGN.md): only ``backend.train_epoch`` sits between the two clock reads,
each preceded by ``backend.synchronize()``; evaluation and logging are outside. The first
epoch (tracing, compilation, warm-up) is reported on its own, ``steady_epoch_seconds`` is
the median of the others.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from backprop_bench.artifacts import save_npy, save_weights, write_csv, write_json
from backprop_bench.config import Components, register_configs, to_components
from backprop_bench.dataset import Dataset, load_dataset

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # src/backprop_bench/train.py -> <root>/conf
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_seconds",
    "samples_per_second",
)
OUT_FILES = ("metrics.json", "history.csv", "weights.npz", "predictions.npy")


class Diverged(RuntimeError):
    """The loss became NaN or inf."""


# ---------------------------------------------------------------- the training loop


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # from 1
    train_loss: float  # the backend's epoch loss: sample-weighted mean of pre-update batch losses
    train_accuracy: float  # whole train set, end-of-epoch weights (NaN with eval_train=False)
    val_loss: float  # NaN when there is no val split
    val_accuracy: float
    epoch_seconds: float  # train_epoch alone, between synchronised clock reads
    samples_per_second: float  # train samples / epoch_seconds


@dataclass(frozen=True)
class FitResult:
    history: list[EpochStats]
    n_train: int

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
    backend,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    eval_train: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train ``epochs`` epochs on data's train split (already ``backend.load``-ed); time and evaluate each."""
    n = data.x_train.shape[0]
    history = []
    for epoch, order in enumerate(batch_orders(n, epochs, seed, shuffle), start=1):
        backend.synchronize()
        start = time.perf_counter()
        train_loss = float(backend.train_epoch(order, batch_size))
        backend.synchronize()
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise Diverged(_divergence_message(backend, epoch, train_loss, n, batch_size))
        train_acc = backend.evaluate(data.x_train, data.y_train)[1] if eval_train else math.nan
        val_loss, val_acc = backend.evaluate(data.x_val, data.y_val) if len(data.x_val) else (math.nan, math.nan)
        if len(data.x_val) and not math.isfinite(val_loss):
            raise Diverged(f"diverged in epoch {epoch}: the weights became non-finite (val loss {val_loss}); lr too high?")
        stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc, seconds, n / seconds)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return FitResult(history, n)


def _divergence_message(backend, epoch: int, loss: float, n: int, batch_size: int) -> str:
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


def run(c: Components, *, project_root: Path, out_dir: Path, resolved: dict, sweep: Mapping[str, str]) -> dict:
    """Train one cell and write its files; returns the metrics.json dict. Raises on failure."""
    from backprop_bench import tracking
    from backprop_bench.backends import DeviceUnavailable, make_backend
    from backprop_bench.model import init_params

    tags = {
        "cell": c.cell,
        "framework": c.framework.name,
        "strategy": c.strategy,
        "device": c.device,
        "seed": c.train.seed,
        "dtype": c.train.dtype,
        "data": c.data.name,
        "git_commit": git_commit(project_root),
        "sweep_id": sweep.get("sweep_id", ""),
    }
    tr = c.tracking
    # Link to the sweep's parent run only when both live in the same tracking store.
    same_store = sweep.get("uri") == tracking.resolve_uri(tr.uri, project_root)
    parent = sweep.get("parent_run_id") if same_store else None
    tracker = tracking.open_run(tr.enabled, tr.uri, tr.experiment, project_root, f"{c.cell}-s{c.train.seed}", tags, parent)
    with tracker:
        tracker.log_params(tracking.flatten(resolved))
        data = load_dataset(c.data.name, _under(project_root, c.data.path) if c.data.path else None)
        _check_fits(c, data)
        tracker.set_tags({"data_sha256": data.sha256})
        base = {"cell": c.cell, "framework": c.framework.name, "strategy": c.strategy, "device": c.device}
        try:
            backend = make_backend(
                c.framework.name,
                c.spec,
                init_params(c.spec, c.init, c.train.dtype),
                c.optimizer,
                strategy=c.strategy,
                device=c.device,
                dtype=c.train.dtype,
                compile=c.framework.compile,
                steps_per_execution=c.framework.steps_per_execution,
            )
            backend.load(data.x_train, data.y_train)
        except DeviceUnavailable as err:
            log.warning("SKIPPED %s: %s", c.cell, err)
            tracker.set_tags({"outcome": "skipped", "skip_reason": str(err)})
            metrics = {**base, "status": "skipped", "reason": str(err), "mlflow_run_id": tracker.run_id}
            _write_outputs(out_dir, metrics, [], None, np.zeros(0, np.int64), c, tracker=None)
            return metrics
        info = backend.info()
        tracker.set_tags({k: v for k, v in info.items() if k != "peak_memory_mb"} | {"resolved_device": backend.device})
        log.info("%s: %d train samples, %d epochs, batch %d", c.cell, len(data.x_train), c.train.epochs, c.train.batch_size)

        every = max(1, c.train.epochs // 10)  # about ten log lines per run

        def on_epoch(s: EpochStats) -> None:
            tracker.log_epoch(s.epoch, {k: v for k, v in asdict(s).items() if k != "epoch"})
            if s.epoch == 1 or s.epoch % every == 0:
                log.info("epoch %d: train_loss %.6g val_accuracy %.4f (%.3f s)", s.epoch, s.train_loss, s.val_accuracy, s.epoch_seconds)

        t = c.train
        result = fit(backend, data, epochs=t.epochs, batch_size=t.batch_size, seed=t.seed, shuffle=t.shuffle, eval_train=t.eval_train, on_epoch=on_epoch)
        test_loss, test_acc = backend.evaluate(data.x_test, data.y_test)
        if not math.isfinite(test_loss):
            raise Diverged(f"diverged in the last epoch: test loss {test_loss}; lr too high?")
        predictions = predicted_labels(backend.predict(data.x_test))
        summary = {
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "train_seconds": result.train_seconds,
            "first_epoch_seconds": result.first_epoch_seconds,
            "steady_epoch_seconds": result.steady_epoch_seconds,
            "samples_per_second": result.samples_per_second,
            "peak_memory_mb": peak_memory_mb(backend.info()),
        }
        metrics = {
            **base,
            "status": "finished",
            "reason": "",
            **summary,
            "final_train_loss": result.history[-1].train_loss,
            "final_val_accuracy": _none_if_nan(result.history[-1].val_accuracy),
            "n_train": result.n_train,
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "dtype": t.dtype,
            "resolved_device": backend.device,
            "framework_version": info.get("framework_version", ""),
            "device_name": info.get("device_name", ""),
            "blas": info.get("blas", ""),
            "mlflow_run_id": tracker.run_id,
        }
        # samples_per_second is also a per-epoch series: the summary goes under its own name
        mlflow_summary = {("steady_" + k if k == "samples_per_second" else k): v for k, v in summary.items()}
        tracker.log_metrics({k: v for k, v in mlflow_summary.items() if v is not None})
        history = [asdict(h) for h in result.history]
        _write_outputs(out_dir, metrics, history, (c.spec, backend.params()), predictions, c, tracker, data, resolved)
        tracker.set_tags({"outcome": "finished"})
    log.info("%s: test_accuracy %.4f, train %.2f s -> %s", c.cell, test_acc, result.train_seconds, out_dir)
    return metrics


def _write_outputs(out_dir, metrics, history, weights, predictions, c, tracker, data=None, resolved=None) -> None:
    """Stage the four files (and the MLflow-only plots) in a temp dir, log them, then move them in.

    Everything is written before anything lands in out_dir, so a failure leaves the
    previous outputs whole; each move is an atomic os.replace.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        write_json(stage / "metrics.json", metrics)
        write_csv(stage / "history.csv", HISTORY_COLUMNS, [[h[k] for k in HISTORY_COLUMNS] for h in history])
        if weights is None:  # skipped: the spec only, so the file exists for DVC but loads with a clear error
            save_weights(stage / "weights.npz", c.spec, [])
        else:
            save_weights(stage / "weights.npz", *weights)
        save_npy(stage / "predictions.npy", predictions)
        if tracker is not None:
            _log_artifacts(tracker, stage, history, predictions, c, data, resolved)
        for name in OUT_FILES:
            (stage / name).replace(out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _log_artifacts(tracker, stage: Path, history, predictions, c: Components, data: Dataset, resolved: dict) -> None:
    from backprop_bench import tracking

    if not tracker.run_id:  # tracking off: skip the plots too
        return
    extra = stage / "mlflow"
    extra.mkdir()
    (extra / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    tracking.plot_curves(history, extra / "curves.png", c.cell)
    n_out = c.spec.sizes[-1]
    tracking.plot_confusion(
        labels_of(data.y_test), predictions, max(n_out, 2), extra / "confusion_matrix.png", f"{c.cell} (test)"
    )
    for path in [extra / "config.yaml", extra / "curves.png", extra / "confusion_matrix.png"]:
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


def predicted_labels(probs: np.ndarray) -> np.ndarray:
    """(N, out) outputs -> (N,) int64 labels, the rule of model.accuracy: argmax, or > 0.5 for one output."""
    probs = np.asarray(probs)
    if probs.shape[1] == 1:
        return (probs[:, 0] > 0.5).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def labels_of(y: np.ndarray) -> np.ndarray:
    """Labels from (N,) labels or (N, out) float targets, by the same rule."""
    return y.astype(np.int64) if y.ndim == 1 else predicted_labels(y)


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


def _terminate_as_interrupt() -> None:
    """SIGTERM (dvc/joblib/SLURM cancelling a job) ends the run like Ctrl-C: MLflow KILLED, not RUNNING."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a threaded launcher): keep the default
        pass


# ---------------------------------------------------------------- Hydra entry point

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from backprop_bench.tracking import read_sweep_info

    _terminate_as_interrupt()
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
