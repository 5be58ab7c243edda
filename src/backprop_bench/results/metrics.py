"""A run's result files: metrics.json (``RunMetrics``) and history.csv (``EpochStats`` rows).

training/run.py writes both; compare.py reads them back with ``read_metrics`` and
``read_history``, whose errors name the file and the key, and measures each history's
``time_to_target``. docs/architecture.md ("A study cell") documents every field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

from backprop_bench.core.files import write_csv, write_json

FINISHED, SKIPPED, FAILED = "finished", "skipped", "failed"
STATUSES = (FINISHED, SKIPPED, FAILED)


class MetricsError(ValueError):
    """A run's metrics.json or history.csv is missing or malformed: the message names the file and key."""


@dataclass(frozen=True)
class EpochStats:
    """One epoch of a run: one row of history.csv, one step of the MLflow series."""

    epoch: int  # from 1
    train_loss: float  # the backend's epoch loss: sample-weighted mean of the pre-update batch losses
    train_accuracy: float  # whole train set, end-of-epoch weights (NaN with train.eval_train=false)
    val_loss: float  # NaN when there is no val split
    val_accuracy: float
    epoch_seconds: float  # train_epoch alone, between synchronised clock reads
    samples_per_second: float  # train samples / epoch_seconds
    lr: float  # the learning rate in effect during the epoch (schedule x reduce-on-plateau)


HISTORY_COLUMNS = tuple(f.name for f in fields(EpochStats))


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json of one run. A run that did not finish has only the first eight fields and mlflow_run_id."""

    cell: str  # {framework}-{strategy}-{device}: RunKey.cell, the runs of one report row before mode and seed
    framework: str
    strategy: str
    device: str  # as asked: cpu | cuda | auto
    status: str  # one of STATUSES
    reason: str = ""  # why it was skipped or failed; "" when finished
    mode: str = "controlled"  # core.specs.MODES
    seed: int | None = None  # the run's seed: initial weights, batch order (and dropout masks)
    # ---- a finished run
    test_accuracy: float | None = None  # fraction in [0, 1]
    test_loss: float | None = None
    train_seconds: float | None = None  # all epochs of the training loop, the first included
    first_epoch_seconds: float | None = None  # tracing, compilation and warm-up land here
    steady_epoch_seconds: float | None = None  # median of epochs 2..E; None with one epoch
    samples_per_second: float | None = None  # n_train / steady (or the only) epoch's seconds
    peak_memory_mb: float | None = None  # the device's peak, or the process's max RSS on CPU
    final_train_loss: float | None = None  # train_loss of the last epoch
    final_val_accuracy: float | None = None  # None when there is no val split
    n_train: int | None = None  # train samples per epoch
    epochs: int | None = None  # asked for; early stopping may stop sooner (stopped_epoch)
    best_epoch: int | None = None  # early stopping on: the best epoch, whose weights were kept when restored
    stopped_epoch: int | None = None  # early stopping stopped after this epoch; None: every epoch ran
    batch_size: int | None = None
    dtype: str | None = None
    resolved_device: str | None = None  # what "auto" became: cpu | cuda
    framework_version: str | None = None
    device_name: str | None = None  # e.g. the CPU model or the GPU's name
    blas: str | None = None  # the BLAS library the framework calls on CPU
    mlflow_run_id: str = ""  # "" with tracking off

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field when finished, else the first eight fields and mlflow_run_id."""
        d = asdict(self)
        if self.status != FINISHED:
            d = {k: v for k, v in d.items() if k in REQUIRED_KEYS or k in ("mode", "seed", "mlflow_run_id")}
        return d

    @classmethod
    def from_dict(cls, obj: Any, source: str | Path) -> RunMetrics:
        """Check a parsed metrics.json (from ``source``, named in errors) and build it; unknown keys are ignored."""
        if not isinstance(obj, dict):
            raise MetricsError(f"{source}: expected one JSON object, got {type(obj).__name__}")
        for key in REQUIRED_KEYS:
            if key not in obj:
                raise MetricsError(f"{source}: missing key {key!r} (every run needs: {', '.join(REQUIRED_KEYS)})")
        if obj["status"] not in STATUSES:
            raise MetricsError(f"{source}: key 'status' is {obj['status']!r}, expected one of {', '.join(STATUSES)}")
        finished = obj["status"] == FINISHED
        if finished:
            for key in FINISHED_KEYS:
                if key not in obj:
                    needs = ", ".join(FINISHED_KEYS)
                    raise MetricsError(f"{source}: missing key {key!r} (a finished run needs: {needs})")
        for key in NUMBER_KEYS:
            value = obj.get(key)
            if value is None and (key in NULLABLE_KEYS or not finished):
                continue
            if key in obj and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise MetricsError(f"{source}: key {key!r} is {value!r}, expected a number")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


REQUIRED_KEYS = ("cell", "framework", "strategy", "device", "status", "reason")  # every run
# What compare needs of a finished run; training/run.py writes all the other fields too.
FINISHED_KEYS = (
    "test_accuracy",
    "train_seconds",
    "first_epoch_seconds",
    "steady_epoch_seconds",
    "samples_per_second",
    "final_train_loss",
)
NUMBER_KEYS = tuple(k for k, t in get_type_hints(RunMetrics).items() if t in (float | None, int | None))
NULLABLE_KEYS = ("steady_epoch_seconds", "final_val_accuracy", "best_epoch", "stopped_epoch")


def write_metrics(path: str | Path, metrics: RunMetrics) -> Path:
    return write_json(path, metrics.to_dict())


def read_metrics(path: str | Path) -> RunMetrics:
    """One run's metrics.json, checked (``RunMetrics.from_dict``)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsError(f"{path}: not found (has the run's study stage run?)") from None
    except json.JSONDecodeError as err:
        raise MetricsError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON: {err.msg}") from None
    return RunMetrics.from_dict(obj, path)


def write_history(path: str | Path, history: Sequence[EpochStats]) -> Path:
    """history.csv: the HISTORY_COLUMNS header, one row per epoch (NaN written as nan)."""
    return write_csv(path, HISTORY_COLUMNS, [astuple(h) for h in history])


def read_history(path: str | Path, columns: Sequence[str] = HISTORY_COLUMNS) -> dict[str, np.ndarray]:
    """The named columns of a history.csv, each (E,) float64; other columns are ignored."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except FileNotFoundError:
        raise MetricsError(f"{path}: not found (a finished run writes its history)") from None
    for column in columns:
        if column not in header:
            raise MetricsError(f"{path}: missing column {column!r} (expected at least {', '.join(columns)})")
    table = {}
    for column in columns:
        for row_no, row in enumerate(rows, start=2):  # row 1 is the header, as an editor counts
            if not _is_float(row[column]):
                raise MetricsError(f"{path}: row {row_no}, column {column!r}: {row[column]!r} is not a number")
        table[column] = np.array([float(row[column]) for row in rows])
    return table


def _is_float(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False


# time_to_target's outcomes
REACHED, NEVER, NO_VAL = "reached", "never", "no validation split"
TARGET_COLUMNS = ("epoch", "val_accuracy", "epoch_seconds")  # what time_to_target reads of a history


@dataclass(frozen=True)
class TimeToTarget:
    """When one run first reached a target validation accuracy (MLPerf's and AlgoPerf's time to result)."""

    outcome: str  # REACHED | NEVER | NO_VAL (val_accuracy NaN in every epoch: data.val_fraction 0)
    epoch: int | None = None  # the first epoch whose val_accuracy >= target; None unless reached
    seconds: float | None = None  # epoch_seconds summed over epochs 1..epoch: the training loop only
    best: float | None = None  # the highest val_accuracy of the run; None without a val split


def time_to_target(history: dict[str, np.ndarray], target: float) -> TimeToTarget:
    """The first epoch of a history (``read_history``'s TARGET_COLUMNS, each (E,)) whose validation
    accuracy is at least ``target`` (a fraction), and the training-loop seconds until the end of it.

    Validation runs at the end of each epoch, so the time has an epoch's resolution. The first
    epoch counts in full, its compilation and warm-up included, as a user waits for them too.
    """
    val = np.asarray(history["val_accuracy"], dtype=np.float64)
    if val.size and np.isnan(val).all():
        return TimeToTarget(NO_VAL)
    best = float(np.nanmax(val)) if val.size else None
    # NaN compares False; the slack lets a float32 accuracy (0.88 stored as 0.8799999952) reach
    # 0.88, and is far below any val split's resolution (1 / its rows)
    reached = np.flatnonzero(val >= target - 1e-6)
    if not reached.size:
        return TimeToTarget(NEVER, best=best)
    i = int(reached[0])
    seconds = float(np.sum(history["epoch_seconds"][: i + 1]))
    return TimeToTarget(REACHED, int(history["epoch"][i]), seconds, best)
