"""The MLflow client of a store, shared per process, and the retry every call to it goes through.

sqlite allows one writer at a time: a call that finds the database locked is retried with backoff."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

from backprop_bench.tracking.uri import resolve_uri, sqlite_path

log = logging.getLogger(__name__)


def retry(fn: Callable, *args, attempts: int = 10, **kwargs):
    """Call fn, retrying while sqlite says the database is locked (another writer holds it)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException / sqlalchemy OperationalError wrap it
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (1 + random.random()))


@functools.lru_cache(maxsize=16)
def client_and_experiment(uri: str, experiment: str):
    """(MlflowClient, experiment id), creating the experiment (and the sqlite db) if needed.

    Cached per process: a study stage's runs share one client (opening the store costs ~0.3 s).
    """
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        client = MlflowClient(uri)
        return client, _experiment_id(client, experiment, None)
    # Two processes creating a fresh sqlite schema at once race on its tables: serialise.
    with FileLock(str(db) + ".lock", timeout=120):
        client = MlflowClient(uri)
        # Artifacts beside the database (mlartifacts/), not in whatever cwd the run had.
        return client, _experiment_id(client, experiment, (db.parent / "mlartifacts").as_uri())


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return retry(client.create_experiment, name, artifact_location=artifact_location)
    except Exception:  # another process created it in between
        exp = retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def download_artifact(run_id: str, name: str, uri: str | None, project_root: Path, dst: Path) -> Path:
    """Fetch one artifact of a run into dst; the store is resolve_uri(uri, project_root)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_uri(uri, project_root))
    return Path(retry(client.download_artifacts, run_id, name, str(dst)))


def run_status(run_id: str, uri: str | None, project_root: Path) -> str:
    """A run's MLflow status (FINISHED, FAILED, KILLED, RUNNING, ...); the store is resolve_uri(uri, project_root)."""
    from mlflow.tracking import MlflowClient

    return retry(MlflowClient(resolve_uri(uri, project_root)).get_run, run_id).info.status
