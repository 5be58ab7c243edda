"""The study's own MLflow run: the compare stage's report (index.html, the plots) as artifacts and
the headline numbers as metrics, beside the runs it sums up.

    run_id = log_study_summary(uri, "backprop-bench", {"speed_vs_numpy.torch": 0.35}, [Path("reports/index.html")])

Named SUMMARY_RUN and tagged ROLE_TAG=SUMMARY_RUN, so a search finds it among the study's runs:
`tags.\\`backprop_bench.role\\` = 'study-summary'`. An MlflowRun, so it never stays RUNNING: an
error ends it FAILED (with the traceback), Ctrl-C KILLED.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from backprop_bench.tracking.run import MlflowRun

SUMMARY_RUN = "study-summary"
ROLE_TAG = "backprop_bench.role"


def log_study_summary(
    uri: str,
    experiment: str,
    metrics: Mapping[str, float],
    artifacts: Iterable[Path],
    tags: Mapping[str, str] | None = None,
) -> str:
    """One run of its own in `experiment` at `uri` (resolved: tracking.uri.resolve_uri): the metrics
    at step 0, each existing artifact file at the run's artifact root; returns its run id."""
    with MlflowRun(uri, experiment, SUMMARY_RUN, {ROLE_TAG: SUMMARY_RUN, **(tags or {})}) as run:
        run.log_metrics(metrics)
        for path in artifacts:
            if Path(path).is_file():
                run.log_artifact(path)
        run.set_tags({"outcome": "finished"})
    return run.run_id


def ui_urls(uri: str, experiment: str, base: str) -> list[str]:
    """Where the MLflow UI at `base` (e.g. http://127.0.0.1:5000) shows the study: the experiment's
    Runs table, then the newest study-summary run's report; [] when the experiment does not exist.

    MLflow 3.17 opens an experiment in its GenAI view (traces); workflowType=machine_learning opens
    the Runs table (the "Model training" switch). Reads only: never creates the store or the experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    eid = found.experiment_id
    urls = [f"{base}/#/experiments/{eid}/runs?workflowType=machine_learning"]
    runs = client.search_runs(
        [eid], f"tags.`{ROLE_TAG}` = '{SUMMARY_RUN}'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    urls += [f"{base}/#/experiments/{eid}/runs/{r.info.run_id}/artifacts/index.html" for r in runs]
    return urls
