"""The MLflow adapter: with mlflow_logging.py, the only modules that import mlflow (here lazily, inside functions).

One run = one ``MlflowRun`` context manager, talking to MLflow through an ``MlflowClient``
bound to its own URI (no global active run). Leaving the block ends the run FINISHED,
FAILED (an exception) or KILLED (Ctrl-C); ``tracking=off`` gives a ``NullRun`` with the
same methods. A multirun gets one parent run (``SweepCallback``). Statuses, tags, what
is logged and how sqlite is shared: docs/architecture.md, "MLflow".

``resolve_uri`` checks the URI before any work (``validate_uri``). Every run carries the
tags ``host``, ``pid`` and ``pid_start`` of the process that opened it, so ``reap`` (run as a
process opens its first run in a store, again at most every REAP_EVERY_S, and by ``python -m
backprop_bench.tracking reap``) can end FAILED, ``outcome=lost``, the RUNNING runs of this host
whose process died without ending them.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import functools
import json
import logging
import math
import os
import random
import re
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"  # in the multirun's sweep dir: {sweep_id, parent_run_id, uri}
PARAM_MAX = 6000  # MLflow's longest param value
TAG_MAX = 8000
# A reap searches the experiment's RUNNING runs (~0.1 s): a study stage opening 12 runs in a
# row does it for its first, and a process that lives for hours still again now and then.
REAP_EVERY_S = 60.0
_last_reap: dict[tuple[str, str], float] = {}  # (tracking URI, experiment id) -> time.monotonic()


class TrackingUriError(ValueError):
    """A tracking URI that cannot work; the message names the option it came from."""


URI_EXPECTED = (
    "expected sqlite:///<file>.db (relative to the directory the app is started in), "
    "sqlite:////<absolute path>.db, http(s)://<host>:<port> (an mlflow server) "
    "or a database URL (postgresql://, mysql://, mssql://)"
)
_DB_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy dialects MLflow stores runs in, "+driver" allowed


def resolve_uri(uri: str | None, project_root: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db.

    Checked by validate_uri (a bad URI raises TrackingUriError naming its option), with a
    relative sqlite path made absolute against project_root.
    """
    if uri:
        return validate_uri(uri, project_root, "tracking.uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return validate_uri(os.environ["MLFLOW_TRACKING_URI"], project_root, "MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def validate_uri(uri: str, project_root: Path, source: str = "tracking.uri") -> str:
    """The URI in the form every process of a run agrees on, or TrackingUriError.

    sqlite:///rel.db is taken relative to project_root (the directory the app is started
    in, as MLflow's own client takes it relative to its cwd) and returned absolute, so
    sweep workers, the study and the sweep's parent run name one file. The deprecated
    file store (file:, a plain path), unknown schemes and a sqlite file in a directory
    that does not exist are refused here, before any training.
    """

    def bad(problem: str) -> TrackingUriError:
        return TrackingUriError(f"{source}={uri!r}: {problem}; {URI_EXPECTED}")

    if uri == "databricks" or uri.startswith("databricks://"):  # a Databricks workspace (profile)
        return uri
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "file" or not scheme or len(scheme) == 1:  # a path ("C:" is a drive)
        raise bad("the file store (a path or file:) is not supported by MLflow 3.13 and later")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
            raise bad("a sqlite URI needs a file after three slashes")
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        db = Path(path) if Path(path).is_absolute() else Path(project_root).resolve() / path
        if not db.parent.is_dir():
            raise bad(f"the directory {db.parent} does not exist")
        if db.is_dir():
            raise bad(f"{db} is a directory")
        return f"sqlite:///{db}{sep}{query}"
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/?#]+", uri, re.IGNORECASE):
            raise bad("no host after //")
        return uri
    if scheme.split("+")[0] in _DB_SCHEMES:
        return uri
    raise bad(f"unknown scheme {scheme}:")


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
    """The database file of a sqlite:/// URI (absolute after validate_uri), else None."""
    return Path(uri[len("sqlite:///") :].partition("?")[0]) if uri.startswith("sqlite:///") else None


@functools.lru_cache(maxsize=16)
def _client_and_experiment(uri: str, experiment: str):
    """(MlflowClient, experiment id), creating the experiment (and the sqlite db) if needed.

    Cached per process: a study stage's runs share one client (opening the store costs ~0.3 s).
    """
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(uri)
    if db is None:
        client = MlflowClient(uri)
        return client, _experiment_id(client, experiment, None)
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
        self.tags = {k: str(v)[:TAG_MAX] for k, v in (tags or {}).items()}
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.flush_seconds = flush_seconds
        self._pending: list = []  # mlflow Metric entities not yet sent
        self._last_flush = time.monotonic()
        self.client = None

    def __enter__(self) -> MlflowRun:
        self.client, experiment_id = _client_and_experiment(self.uri, self.experiment)
        _reap_now_and_then(self.client, self.uri, experiment_id)
        self.tags = process_tags() | self.tags
        run = _retry(self.client.create_run, experiment_id, run_name=self.run_name, tags=self.tags)
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


# ---------------------------------------------------------------- lost runs


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc/<pid>/stat (fields 3 and 22; the start
    time in clock ticks after boot), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name (field 2) may hold spaces and ")"
    return fields[0], fields[19]


def _has_proc() -> bool:
    return Path("/proc/self/stat").is_file()


def process_tags() -> dict[str, str]:
    """host, pid and pid_start ("" without /proc) of this process: what reap checks; plus
    slurm_job_id inside a SLURM job (see slurm_job_id)."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    tags = {"host": socket.gethostname(), "pid": str(pid), "pid_start": stat[1] if stat else ""}
    job = slurm_job_id(os.environ)
    if job:
        tags["slurm_job_id"] = job
    return tags


def slurm_job_id(env: Mapping[str, str]) -> str:
    """The SLURM job a process runs in, as squeue, sacct and scancel name it ("" outside SLURM):
    <array job>_<task> for a task of a job array (a sweep's cells), else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def lost_reason(pid: int, pid_start: str) -> str | None:
    """Why the process that owned a run is gone, or None while it lives.

    Gone: no such pid, a zombie, or the pid now belongs to a process with another start
    time (reused). Without /proc only whether the pid exists can be checked.
    """
    if not _has_proc():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} no longer exists"
        except PermissionError:  # exists, owned by someone else
            pass
        return None
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return f"process {pid} no longer exists"
    if pid_start and stat[1] != pid_start:
        return f"pid {pid} now belongs to another process (started at tick {stat[1]}, not {pid_start})"
    return None


def reap_lost(client, experiment_id: str, host: str | None = None) -> list[str]:
    """End FAILED (tags outcome=lost, lost_reason, lost_noticed_at) every RUNNING run of
    the experiment that was started on this host by a process that is gone; returns their ids.

    Runs of other hosts, runs without a pid tag, and runs whose process lives are left alone.
    """
    from mlflow.entities import RunTag

    host = host or socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.host = '{host}'"
    reaped, token = [], None
    while True:
        page = _retry(client.search_runs, [experiment_id], query, max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit():
                continue
            reason = lost_reason(int(tags["pid"]), tags.get("pid_start", ""))
            if reason is None:
                continue
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            lost = {"outcome": "lost", "lost_reason": reason, "lost_noticed_at": now}
            _retry(client.log_batch, run.info.run_id, tags=[RunTag(k, v) for k, v in lost.items()])
            _retry(client.set_terminated, run.info.run_id, "FAILED")
            log.warning("MLflow run %s (%s) left RUNNING: %s; now FAILED", run.info.run_id, run.info.run_name, reason)
            reaped.append(run.info.run_id)
        token = page.token
        if not token:
            return reaped


def _reap_now_and_then(client, uri: str, experiment_id: str) -> None:
    """reap_lost, unless this process did so for this store and experiment in the last
    REAP_EVERY_S; a failure is logged, never a reason to fail the run being opened."""
    key, now = (uri, experiment_id), time.monotonic()
    if now - _last_reap.get(key, -math.inf) < REAP_EVERY_S:
        return
    _last_reap[key] = now
    try:
        reap_lost(client, experiment_id)
    except Exception as err:
        log.warning("MLflow: could not check for lost runs: %s: %s", type(err).__name__, err)


def reap(uri: str, experiment: str) -> list[str]:
    """reap_lost on one experiment of one store (nothing when the experiment does not exist)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = _retry(client.get_experiment_by_name, experiment)
    return [] if exp is None else reap_lost(client, exp.experiment_id)


def download_artifact(run_id: str, name: str, uri: str | None, project_root: Path, dst: Path) -> Path:
    """Fetch one artifact of a run into dst; the store is resolve_uri(uri, project_root)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_uri(uri, project_root))
    return Path(_retry(client.download_artifacts, run_id, name, str(dst)))


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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = config.tracking
        if not tracking.enabled:
            return
        from backprop_bench.io import atomic_write

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_id = uuid.uuid4().hex[:12]
        try:
            uri = resolve_uri(tracking.uri, Path(config.hydra.runtime.cwd or os.getcwd()))
        except TrackingUriError as err:  # Hydra turns a callback's exception into a warning and
            print(f"Error: {err}", file=sys.stderr)  # runs the cells anyway: stop the sweep here
            raise SystemExit(1) from err
        overrides = " ".join(config.hydra.overrides.task)
        tags = {"sweep_overrides": overrides, "sweep_dir": str(sweep_dir)}
        # Opening the parent creates the experiment when it is new: here, once, before any cell
        # starts. Cells on many nodes creating it at once would race (one create wins, the
        # others fail and must look it up again; _experiment_id copes, but only after a failure).
        self.run = open_parent(uri, tracking.experiment, f"sweep-{sweep_id}", sweep_id, tags)
        info = {"sweep_id": sweep_id, "parent_run_id": self.run.run_id, "uri": uri}
        atomic_write(sweep_dir / SWEEP_FILE, json.dumps(info) + "\n")
        atexit.register(self._close, ended=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(ended=True)

    def _close(self, ended: bool) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            close_parent(run, ended)


def open_parent(uri: str, experiment: str, run_name: str, sweep_id: str, tags: Mapping[str, Any]) -> MlflowRun:
    """Start the parent run of a group of runs (a multirun, a study stage); its children link
    to it through mlflow.parentRunId and carry the sweep_id tag."""
    run = MlflowRun(uri, experiment, run_name, {"sweep_id": sweep_id, **tags})
    run.__enter__()
    log.info("MLflow parent run %s (%s) in %s", run.run_id, run_name, uri)
    return run


def close_parent(run: MlflowRun, ended: bool) -> str:
    """End a parent run with its children's sum: FAILED if any failed, KILLED if any was
    killed or left running (or the group did not end), else FINISHED. Returns the status."""
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
    return status


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """python -m backprop_bench.tracking reap [--tracking-uri URI] [--experiment NAME]"""
    parser = argparse.ArgumentParser(prog="python -m backprop_bench.tracking", description="MLflow housekeeping")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("reap", help="end FAILED (outcome=lost) this host's RUNNING runs whose process is gone")
    cmd.add_argument(
        "--tracking-uri",
        default=None,
        help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory",
    )
    cmd.add_argument("--experiment", default="backprop-bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.tracking_uri:
            uri = validate_uri(args.tracking_uri, Path.cwd(), "--tracking-uri")
        else:
            uri = resolve_uri(None, Path.cwd())
    except TrackingUriError as err:
        print(f"reap: {err}", file=sys.stderr)
        return 2
    db = _sqlite_path(uri)
    reaped = [] if db is not None and not db.is_file() else reap(uri, args.experiment)
    print(f"reap: {len(reaped)} lost run(s) of experiment {args.experiment!r} in {uri} marked FAILED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
