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
