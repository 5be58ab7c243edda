"""Groups of runs: one parent MLflow run per multirun (``SweepCallback``, a Hydra callback) or per study
stage (``open_parent`` / ``close_parent``); the children link to it through mlflow.parentRunId."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from backprop_bench.tracking.client import retry
from backprop_bench.tracking.run import MlflowRun
from backprop_bench.tracking.uri import TrackingUriError, redact, resolve_uri

log = logging.getLogger(__name__)


SWEEP_FILE = "mlflow_sweep.json"  # in the multirun's sweep dir: {sweep_id, parent_run_id, uri (redacted)}


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
        from backprop_bench.core.files import atomic_write

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
        info = {"sweep_id": sweep_id, "parent_run_id": self.run.run_id, "uri": redact(uri)}
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
    log.info("MLflow parent run %s (%s) in %s", run.run_id, run_name, redact(uri))
    return run


def close_parent(run: MlflowRun, ended: bool) -> str:
    """End a parent run with its children's sum: FAILED if any failed, KILLED if any was
    killed or left running (or the group did not end), else FINISHED. Returns the status."""
    children = retry(
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
    retry(run.client.set_terminated, run.run_id, status)
    return status
