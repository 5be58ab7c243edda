"""The MLflow adapter: the one module that imports mlflow (lazily, inside functions).

One training run = one ``MlflowRun`` context manager. It talks to MLflow only through
an ``MlflowClient`` bound to its own tracking URI, so no global "active run" exists that
could leak between runs, tests or sweep cells; leaving the ``with`` block always ends
the run:

    normal exit            FINISHED  (tag outcome=finished, or outcome=skipped: see below)
    an exception           FAILED    (tags outcome=failed, error=<message>; traceback.txt artifact)
    Ctrl-C                 KILLED    (tag outcome=killed)

A *skipped* cell (the device is not available here) ends FINISHED with tag
``outcome=skipped`` and ``skip_reason``: the cell did what it should, and FAILED would
make a CPU-only sweep look broken. Filter real results with ``tags.outcome = 'finished'``.

Per-epoch metrics are buffered and sent with ``log_batch`` at most every
``flush_seconds`` (and at the end, also on a crash or Ctrl-C), so a killed run keeps its
history without paying a database round trip per epoch.

Several processes may share one sqlite file (joblib sweeps): creating the database and
the experiment happens under a file lock, and writes that meet "database is locked" are
retried with backoff.

A multirun gets one parent run (``SweepCallback``, registered in conf/config.yaml); each
cell's run links to it through the ``mlflow.parentRunId`` tag and carries ``sweep_id``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"  # in the multirun's sweep dir: {sweep_id, parent_run_id, uri}
PARAM_MAX = 6000  # MLflow's longest param value
TAG_MAX = 8000


def resolve_uri(uri: str | None, project_root: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params are flat strings."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:PARAM_MAX]
    return flat


def _retry(fn: Callable, *args, attempts: int = 10, **kwargs):
    """Call fn, retrying while sqlite says the database is locked (another writer holds it)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException / sqlalchemy OperationalError wrap it
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (1 + random.random()))


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _client_and_experiment(uri: str, experiment: str):
    """(MlflowClient, experiment id), creating the experiment (and the sqlite db) if needed."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(uri)
    if db is None:
        client = MlflowClient(uri)
        return client, _experiment_id(client, experiment, None)
    db.parent.mkdir(parents=True, exist_ok=True)
    # Two processes creating a fresh sqlite schema at once race on its tables: serialise.
    with FileLock(str(db) + ".lock", timeout=120):
        client = MlflowClient(uri)
        # Artifacts beside the database (mlartifacts/), not in whatever cwd the run had.
        return client, _experiment_id(client, experiment, (db.parent / "mlartifacts").as_uri())


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return _retry(client.create_experiment, name, artifact_location=artifact_location)
    except Exception:  # another process created it in between
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


class NullRun:
    """Tracking switched off: the same interface, doing nothing."""

    run_id = ""

    def __enter__(self) -> "NullRun":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...


class MlflowRun(NullRun):
    """One MLflow run; see the module docstring for how it ends."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        flush_seconds: float = 2.0,
    ) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags = {k: str(v)[:TAG_MAX] for k, v in (tags or {}).items()}
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.flush_seconds = flush_seconds
        self._pending: list = []  # mlflow Metric entities not yet sent
        self._last_flush = time.monotonic()
        self.client = None

    def __enter__(self) -> "MlflowRun":
        self.client, experiment_id = _client_and_experiment(self.uri, self.experiment)
        run = _retry(self.client.create_run, experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status, outcome = "FINISHED", None  # the caller tagged finished/skipped
        elif issubclass(exc_type, KeyboardInterrupt):
            status, outcome = "KILLED", "killed"
        else:
            status, outcome = "FAILED", "failed"
        try:
            self._flush()
            if outcome:
                self.set_tags({"outcome": outcome, "error": f"{exc_type.__name__}: {exc}"})
            if outcome == "failed":
                text = "".join(traceback.format_exception(exc_type, exc, tb))
                _retry(self.client.log_text, self.run_id, text, "traceback.txt")
        finally:
            _retry(self.client.set_terminated, self.run_id, status)
        return False  # never swallow the exception

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            _retry(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:TAG_MAX]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, self.run_id, tags=items[i : i + 100])

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue one epoch's metrics (step=epoch); sent when flush_seconds have passed."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now_ms, step) for k, v in metrics.items() if v == v]  # v == v: not NaN
        if time.monotonic() - self._last_flush >= self.flush_seconds or len(self._pending) >= 900:
            self._flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_epoch(step, metrics)
        self._flush()

    def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            _retry(self.client.log_batch, self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path))


def open_run(
    enabled: bool,
    uri: str | None,
    experiment: str,
    project_root: Path,
    run_name: str,
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> NullRun:
    if not enabled:
        return NullRun()
    return MlflowRun(resolve_uri(uri, project_root), experiment, run_name, tags, parent_run_id)


# ---------------------------------------------------------------- sweeps


def read_sweep_info(sweep_dir: str | Path) -> dict:
    """What SweepCallback left for the cells of this multirun ({} when it left nothing)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class SweepCallback(Callback):
    """Hydra callback: one parent MLflow run per multirun, ended when the sweep ends.

    Hydra calls on_multirun_end only when every cell succeeded (a failed cell makes the
    sweeper raise first), so an atexit hook ends the parent in the other cases. The
    parent's status sums up its cells: FAILED if any cell failed, KILLED if any was
    killed or left unfinished, else FINISHED.
    """

    def __init__(self) -> None:
        self.run: MlflowRun | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        tracking = config.tracking
        if not tracking.enabled:
            return
        from backprop_bench.artifacts import atomic_write_text

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_id = uuid.uuid4().hex[:12]
        uri = resolve_uri(tracking.uri, Path(config.hydra.runtime.cwd or os.getcwd()))
        overrides = " ".join(config.hydra.overrides.task)
        self.run = MlflowRun(uri, tracking.experiment, f"sweep-{sweep_id}", {"sweep_id": sweep_id, "sweep_overrides": overrides, "sweep_dir": str(sweep_dir)})
        self.run.__enter__()
        info = {"sweep_id": sweep_id, "parent_run_id": self.run.run_id, "uri": uri}
        atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps(info) + "\n")
        atexit.register(self._close, ended=False)
        log.info("MLflow sweep %s: parent run %s in %s", sweep_id, self.run.run_id, uri)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._close(ended=True)

    def _close(self, ended: bool) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        children = _retry(
            run.client.search_runs,
            [run.client.get_run(run.run_id).info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run.run_id}'",
            max_results=5000,
        )
        statuses = {c.info.status for c in children}
        if "FAILED" in statuses:
            status = "FAILED"
        elif "KILLED" in statuses or "RUNNING" in statuses or not ended:
            status = "KILLED"
        else:
            status = "FINISHED"
        run.set_tags({"outcome": status.lower(), "n_cells": len(children)})
        _retry(run.client.set_terminated, run.run_id, status)


# ---------------------------------------------------------------- plots (artifacts)


def plot_curves(history: list[Mapping[str, float]], path: str | Path, title: str) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and val."""
    from matplotlib.figure import Figure  # no pyplot: files only, no GUI backend, no global state

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title=title)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_confusion(y_true, y_pred, n_classes: int, path: str | Path, title: str) -> Path:
    """Counts of (true, predicted) label pairs on the test split."""
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        color = "white" if n > counts.max() / 2 else "black"  # readable on dark cells
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(n_classes), yticks=range(n_classes))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
