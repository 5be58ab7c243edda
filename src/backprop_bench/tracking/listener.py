"""The MLflow tracker: a listener to one run's events (training/events.py).

    listener = for_run(c, project_root, resolved, sweep)   # before any work: checks the URI
    metrics = training.run.run(c, out_dir, project_root, listener)

run_started opens the MLflow run (params, tags); each event adds to it; outputs_staged logs
the summary metrics, the files and the UI's Dataset, Source and Models columns before the
files land; run_ended or run_failed ends it FINISHED, FAILED or KILLED (tracking/run.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from backprop_bench.core.dataset import Dataset
from backprop_bench.core.specs import labels_of
from backprop_bench.results.key import RunKey
from backprop_bench.results.metrics import FINISHED, SKIPPED, EpochStats, RunMetrics
from backprop_bench.tracking.run import MlflowRun, flatten
from backprop_bench.tracking.uri import redact, resolve_uri
from backprop_bench.training.config import Components
from backprop_bench.training.events import OUT_FILES, Listener, Outputs

# The summary metrics of a finished run (samples_per_second under the name
# steady_samples_per_second: the per-epoch series already has that name).
SUMMARY = (
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


def for_run(c: Components, project_root: Path, resolved: dict, sweep: Mapping[str, str]) -> Listener:
    """The tracker of one run, or a Listener that records nothing when tracking is off. The
    URI is checked here, before any work: a bad one raises TrackingUriError naming its option."""
    if not c.tracking.enabled:
        return Listener()
    uri = resolve_uri(c.tracking.uri, project_root)
    return MlflowListener(c, uri, project_root, resolved, sweep)


class MlflowListener(Listener):
    def __init__(self, c: Components, uri: str, project_root: Path, resolved: dict, sweep: Mapping[str, str]):
        self.c, self.uri, self.root, self.resolved = c, uri, project_root, resolved
        # Link to the sweep's parent run only when both live in the same tracking store.
        self.parent = sweep.get("parent_run_id") if sweep.get("uri") == redact(uri) else None
        self.sweep_id = sweep.get("sweep_id", "")
        self.mlflow: MlflowRun | None = None
        self.data: Dataset | None = None
        self.run_id = ""

    def run_started(self, key: RunKey) -> None:
        c, self.commit = self.c, git_commit(self.root)
        tags = key.fields() | {"dtype": c.train.dtype, "data": c.data.name}
        tags |= {"git_commit": self.commit, "sweep_id": self.sweep_id}
        self.mlflow = MlflowRun(self.uri, c.tracking.experiment, key.name, tags, self.parent)
        self.run_id = self.mlflow.__enter__().run_id
        self.mlflow.log_params(flatten(self.resolved))

    def data_loaded(self, data: Dataset) -> None:
        self.data = data
        self.mlflow.set_tags({"data_sha256": data.sha256})

    def backend_built(self, info: Mapping[str, str]) -> None:
        self.mlflow.set_tags({k: v for k, v in info.items() if k != "peak_memory_mb"})

    def epoch_ended(self, stats: EpochStats) -> None:
        self.mlflow.log_epoch(stats.epoch, {k: v for k, v in asdict(stats).items() if k != "epoch"})

    def outputs_staged(self, folder: Path, outputs: Outputs) -> None:
        m = outputs.metrics
        if m.status == SKIPPED:
            self.mlflow.set_tags({"outcome": SKIPPED, "skip_reason": m.reason})
            return
        summary = {k: getattr(m, k) for k in SUMMARY}
        summary["steady_samples_per_second"] = summary.pop("samples_per_second")
        self.mlflow.log_metrics({k: v for k, v in summary.items() if v is not None})
        self.log_files(folder, outputs)
        from backprop_bench.tracking.columns import log_standard_columns  # the pyfunc model: mlflow.pyfunc

        log_standard_columns(self.mlflow, folder / "weights.npz", self.c, self.data, self.root, self.commit)

    def log_files(self, folder: Path, outputs: Outputs) -> None:
        """The staged files, plus the resolved config and two plots that only MLflow keeps."""
        from backprop_bench.report import plots

        c, extra, title = self.c, folder / "mlflow", self.c.key.cell
        extra.mkdir()
        (extra / "config.yaml").write_text(redact(OmegaConf.to_yaml(self.resolved)))
        if c.tracking.plots:
            plots.plot_curves(outputs.history, extra / "curves.png", title)
            y_test, n_out = labels_of(self.data.y_test), c.spec.sizes[-1]
            plots.plot_confusion(
                y_test, outputs.predictions, max(n_out, 2), extra / "confusion_matrix.png", f"{title} (test)"
            )
        for path in sorted(extra.iterdir()):
            self.mlflow.log_artifact(path)
        for name in OUT_FILES:
            self.mlflow.log_artifact(folder / name)

    def run_ended(self, metrics: RunMetrics) -> None:
        if metrics.status == FINISHED:
            self.mlflow.set_tags({"outcome": FINISHED})
        self._end(None)

    def run_failed(self, error: BaseException) -> None:
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        """End the MLflow run (MlflowRun.__exit__: FINISHED, FAILED or KILLED by the error)."""
        if self.mlflow is not None:
            run, self.mlflow = self.mlflow, None
            run.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)


def git_commit(root: Path) -> str:
    """HEAD's commit hash, or "" when root is not a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
