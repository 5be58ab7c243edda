"""The MLflow tracker as a listener: what each event of a run leaves in MLflow, and the silent
listener of a run with tracking off."""

from __future__ import annotations

import pytest

from backprop_bench.tracking.listener import MlflowListener, for_run
from backprop_bench.tracking.uri import TrackingUriError
from backprop_bench.training.config import to_components
from backprop_bench.training.events import Listener
from backprop_bench.training.run import run

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def test_tracking_off_gives_the_silent_listener(small_cfg, tmp_path):
    listener = for_run(to_components(small_cfg()), tmp_path, {}, {})
    assert type(listener) is Listener and listener.run_id == ""


def test_a_bad_uri_fails_when_the_listener_is_made_before_any_work(small_cfg, tmp_path):
    c = to_components(small_cfg(uri="file:./mlruns"))
    with pytest.raises(TrackingUriError, match="tracking.uri='file:./mlruns'"):
        for_run(c, tmp_path, {}, {})


def test_a_run_heard_by_the_tracker_ends_finished_with_its_story(small_cfg, tmp_path, tracking_uri):
    c = to_components(small_cfg(uri=tracking_uri))
    listener = for_run(
        c, tmp_path, {"train": {"epochs": 2}}, {"uri": "elsewhere", "parent_run_id": "p", "sweep_id": "s"}
    )
    assert isinstance(listener, MlflowListener) and listener.parent is None  # a parent in another store is not linked
    metrics = run(c, tmp_path / "out", tmp_path, listener)
    got = MlflowClient(tracking_uri).get_run(metrics.mlflow_run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == c.key.name
    tags = got.data.tags
    assert tags["outcome"] == "finished" and tags["sweep_id"] == "s" and tags["cell"] == c.key.cell
    assert tags["data_sha256"] and tags["resolved_device"] == "cpu"
    assert got.data.params["train.epochs"] == "2"
    assert got.data.metrics["test_accuracy"] == pytest.approx(metrics.test_accuracy)
    history = MlflowClient(tracking_uri).get_metric_history(got.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
