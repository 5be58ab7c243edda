"""Lost runs: every run carries the tags ``host``, ``pid`` and ``pid_start`` of the process that opened
it, so ``reap`` (as a process opens its first run in a store, again at most every REAP_EVERY_S, and
by ``python -m backprop_bench.tracking reap``) can end FAILED, ``outcome=lost``, the RUNNING runs of
this host whose process died without ending them."""

from __future__ import annotations

import datetime
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from backprop_bench.tracking.client import retry
from backprop_bench.tracking.uri import redact

log = logging.getLogger(__name__)


# A reap searches the experiment's RUNNING runs (~0.1 s): a study stage opening 12 runs in a
# row does it for its first, and a process that lives for hours still again now and then.
REAP_EVERY_S = 60.0


_last_reap: dict[tuple[str, str], float] = {}  # (tracking URI, experiment id) -> time.monotonic()


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
        page = retry(client.search_runs, [experiment_id], query, max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit():
                continue
            reason = lost_reason(int(tags["pid"]), tags.get("pid_start", ""))
            if reason is None:
                continue
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            lost = {"outcome": "lost", "lost_reason": reason, "lost_noticed_at": now}
            retry(client.log_batch, run.info.run_id, tags=[RunTag(k, v) for k, v in lost.items()])
            retry(client.set_terminated, run.info.run_id, "FAILED")
            log.warning("MLflow run %s (%s) left RUNNING: %s; now FAILED", run.info.run_id, run.info.run_name, reason)
            reaped.append(run.info.run_id)
        token = page.token
        if not token:
            return reaped


def reap_now_and_then(client, uri: str, experiment_id: str) -> None:
    """reap_lost, unless this process did so for this store and experiment in the last
    REAP_EVERY_S; a failure is logged, never a reason to fail the run being opened."""
    key, now = (uri, experiment_id), time.monotonic()
    if now - _last_reap.get(key, -math.inf) < REAP_EVERY_S:
        return
    _last_reap[key] = now
    try:
        reap_lost(client, experiment_id)
    except Exception as err:
        log.warning("MLflow: could not check for lost runs: %s: %s", type(err).__name__, redact(str(err)))


def reap(uri: str, experiment: str) -> list[str]:
    """reap_lost on one experiment of one store (nothing when the experiment does not exist)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = retry(client.get_experiment_by_name, experiment)
    return [] if exp is None else reap_lost(client, exp.experiment_id)
