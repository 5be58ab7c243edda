"""tracking/summary.py: the study-summary MLflow run, written by the compare stage (--mlflow) and
read back with MlflowClient from a sqlite store in tmp_path."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from test_compare import study  # noqa: F401  (the fixture)

from backprop_bench import compare
from backprop_bench.tracking import __main__ as tracking_cli
from backprop_bench.tracking.summary import ROLE_TAG, SUMMARY_RUN, log_study_summary, ui_urls


def summary_runs(uri: str, experiment: str = "backprop-bench") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{SUMMARY_RUN}'")


def test_the_run_holds_the_metrics_and_files_and_ends_finished(tracking_uri, tmp_path):
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    run_id = log_study_summary(tracking_uri, "study", {"x.pt": 0.35, "runs": 24.0}, [page, tmp_path / "absent.png"])
    (run,) = summary_runs(tracking_uri, "study")
    assert (run.info.run_id, run.info.run_name, run.info.status) == (run_id, SUMMARY_RUN, "FINISHED")
    assert run.data.metrics == {"x.pt": 0.35, "runs": 24.0} and run.data.tags["outcome"] == "finished"
    assert [a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id)] == ["index.html"]  # absent: skipped


def test_an_error_ends_the_run_failed_never_running(tracking_uri):
    with pytest.raises(ValueError):
        log_study_summary(tracking_uri, "study", {"x.pt": "not a number"}, [])  # type: ignore[dict-item]
    (run,) = summary_runs(tracking_uri, "study")
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "failed"
    assert "ValueError" in run.data.tags["error"]


def test_the_compare_stage_logs_its_report(study, tracking_uri, capsys):  # noqa: F811
    runs, data, reports, params = study
    args = ["--runs-dir", str(runs), "--reports-dir", str(reports), "--data", str(data), "--params", str(params)]
    assert compare.main([*args, "--mlflow", "--tracking-uri", tracking_uri]) == 0
    (run,) = summary_runs(tracking_uri)
    assert f"MLflow run {run.info.run_id} (backprop-bench, study-summary)" in capsys.readouterr().out
    files = {a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id)}
    assert files == {"index.html", "comparison.md", *compare.PNGS}
    summary = json.loads((reports / "summary.json").read_text())
    assert run.data.metrics["x.pt"] == summary["x"]["pt"] and run.data.metrics["acc.seq"] == summary["acc"]["seq"]
    assert (run.data.metrics["runs"], run.data.metrics["runs.finished"]) == (24.0, 24.0)
    assert compare.summary_metrics({}, "3 runs: 1 finished, 2 missing") == {
        "runs": 3.0,
        "runs.finished": 1.0,
        "runs.missing": 2.0,
    }


def test_the_ui_urls_open_the_runs_table_and_the_newest_report(tracking_uri):
    base = "http://127.0.0.1:5000"
    assert ui_urls(tracking_uri, "study", base) == []  # no such experiment: nothing to show, nothing created
    log_study_summary(tracking_uri, "study", {"runs": 1.0}, [])
    newest = log_study_summary(tracking_uri, "study", {"runs": 2.0}, [])
    eid = MlflowClient(tracking_uri).get_experiment_by_name("study").experiment_id
    assert ui_urls(tracking_uri, "study", base) == [
        f"{base}/#/experiments/{eid}/runs?workflowType=machine_learning",
        f"{base}/#/experiments/{eid}/runs/{newest}/artifacts/index.html",
    ]


def test_the_url_command_reads_the_store_and_never_creates_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_cli.main(["url"]) == 0
    assert "url: no experiment 'backprop-bench' in sqlite:///" in capsys.readouterr().out
    assert not (tmp_path / "mlflow.db").exists()
    run_id = log_study_summary(f"sqlite:///{tmp_path}/mlflow.db", "backprop-bench", {"runs": 1.0}, [])
    assert tracking_cli.main(["url", "--base", "http://127.0.0.1:5055/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("http://127.0.0.1:5055/#/experiments/") and lines[0].endswith(
        "?workflowType=machine_learning"
    )
    assert lines[1].endswith(f"/runs/{run_id}/artifacts/index.html")
