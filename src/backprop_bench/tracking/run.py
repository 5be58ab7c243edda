"""One MLflow run as a context manager (``MlflowRun``), talking to MLflow through a client bound to
its own URI (no global active run). Leaving the block ends the run FINISHED, FAILED (an exception)
or KILLED (Ctrl-C); ``tracking=off`` gives a ``NullRun`` with the same methods. Statuses, tags and
what is logged: docs/architecture.md, "MLflow"."""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from backprop_bench.tracking.client import client_and_experiment, retry
from backprop_bench.tracking.reaper import process_tags, reap_now_and_then
from backprop_bench.tracking.uri import redact, resolve_uri

PARAM_MAX = 6000  # MLflow's longest param value


TAG_MAX = 8000


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


class NullRun:
    """Tracking switched off: the same interface, doing nothing."""

    run_id = ""

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *exc: object) -> bool:
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
        self.tags = {k: redact(str(v))[:TAG_MAX] for k, v in (tags or {}).items()}
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.flush_seconds = flush_seconds
        self._pending: list = []  # mlflow Metric entities not yet sent
        self._last_flush = time.monotonic()
        self.client = None

    def __enter__(self) -> MlflowRun:
        self.client, experiment_id = client_and_experiment(self.uri, self.experiment)
        reap_now_and_then(self.client, self.uri, experiment_id)
        self.tags = process_tags() | self.tags
        run = retry(self.client.create_run, experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
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
                retry(self.client.log_text, self.run_id, redact(text), "traceback.txt")
        finally:
            retry(self.client.set_terminated, self.run_id, status)
        return False  # never swallow the exception

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            retry(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))[:TAG_MAX]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, self.run_id, tags=items[i : i + 100])

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
            retry(self.client.log_batch, self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path) -> None:
        retry(self.client.log_artifact, self.run_id, str(path))


def open_run(
    enabled: bool,
    uri: str | None,
    experiment: str,
    project_root: Path,
    run_name: str,
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> NullRun:
    """An MlflowRun on resolve_uri(uri, project_root), or a NullRun when tracking is off."""
    if not enabled:
        return NullRun()
    return MlflowRun(resolve_uri(uri, project_root), experiment, run_name, tags, parent_run_id)
