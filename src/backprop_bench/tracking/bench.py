"""A bench as MLflow runs (python -m backprop_bench.bench; docs/benchmark.md, "MLflow").

One parent run per bench in the experiment EXPERIMENT: tags name the machine, the BLAS kernel,
the installed versions, the git commit of the code that ran and the command line; bench.json and bench.md are its
artifacts. One child run per cell: params framework, mode, strategy, batch, device, group;
metrics the median epoch seconds, samples/s and each round's seconds as the series
``epoch_seconds`` (step = round). mlflow is imported only when a run is opened. Each run ends
FINISHED, or FAILED / KILLED when an error / Ctrl-C stops the recording (MlflowRun).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from backprop_bench.tracking.listener import git_commit
from backprop_bench.tracking.run import MlflowRun
from backprop_bench.tracking.uri import resolve_uri

EXPERIMENT = "backprop-bench-bench"
SOURCE = Path(__file__).resolve().parent  # the commit tagged is the checkout's that holds this code
CELL_PARAMS = ("framework", "mode", "strategy", "batch", "device", "group", "compile", "steps_per_execution")
CELL_METRICS = ("median_epoch_seconds", "min_epoch_seconds", "samples_per_second", "first_epoch_seconds", "gflops")


def bench_tags(result: Mapping, commit: str) -> dict[str, str]:
    """The parent run's tags: machine, BLAS kernel, versions present, git commit, command line."""
    kernels = sorted({f"{b['internal_api']} {b['architecture']}" for b in result["blas"] if b.get("architecture")})
    tags = {
        "machine.cpu": result["machine"]["cpu"],
        "machine.cores_usable": result["machine"]["cores_usable"],
        "blas.kernel": ", ".join(kernels) or "unknown",
        "git.commit": commit or "unknown",
        "command": result["command"],
        "cell_set": result.get("cell_set", "full"),
        "data": result["data"]["source"],
    }
    tags |= {f"version.{name}": v for name, v in result["versions"].items() if v}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def cell_record(row: Mapping) -> tuple[dict, dict[str, float], dict[str, str]]:
    """One bench.json cell as (params, metrics, tags)."""
    params = {k: row[k] for k in CELL_PARAMS}
    metrics = {k: float(row[k]) for k in CELL_METRICS if row.get(k) is not None}
    tags = {"status": row["status"]} | ({"reason": row["reason"]} if row.get("reason") else {})
    return params, metrics, tags


def record_bench(
    result: Mapping, files: list[Path], project_root: Path, uri: str | None = None, experiment: str = EXPERIMENT
) -> str:
    """Log a finished bench (bench.json's content) and its report files; returns the parent run's id.

    The store is resolve_uri(uri, project_root): $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db there.
    """
    store = resolve_uri(uri, project_root)
    compared = {(c["cell"], c["group"]): c for c in (result.get("baseline") or {}).get("cells", [])}
    tags = bench_tags(result, git_commit(SOURCE))
    with MlflowRun(store, experiment, f"bench {result.get('cell_set', 'full')}", tags) as parent:
        parent.log_params({"rounds": result["rounds"], "samples": result["data"]["n"], "batches": result["batches"]})
        for row in result["cells"]:
            params, metrics, cell_tags = cell_record(row)
            if (row["cell"], row["group"]) in compared:
                baseline = compared[row["cell"], row["group"]]
                metrics["baseline_ratio"] = baseline["ratio"]
                cell_tags["baseline_verdict"] = baseline["verdict"]
            with MlflowRun(store, experiment, row["cell"], cell_tags, parent_run_id=parent.run_id) as child:
                child.log_params(params)
                for step, seconds in enumerate(row["epoch_seconds"], start=1):
                    child.log_epoch(step, {"epoch_seconds": seconds})
                child.log_metrics(metrics)
        for path in files:
            parent.log_artifact(path)
    return parent.run_id
