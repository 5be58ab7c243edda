"""metrics.py: metrics.json (RunMetrics) and history.csv round-trip, and every malformed
file is named with the key or column that is wrong."""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from backprop_bench.results.metrics import (
    FINISHED,
    FINISHED_KEYS,
    HISTORY_COLUMNS,
    NEVER,
    NO_VAL,
    NULLABLE_KEYS,
    REACHED,
    REQUIRED_KEYS,
    SKIPPED,
    STATUSES,
    TARGET_COLUMNS,
    EpochStats,
    MetricsError,
    RunMetrics,
    TimeToTarget,
    read_history,
    read_metrics,
    time_to_target,
    write_history,
    write_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
CELL = dict(cell="numpy-parallel-cpu", framework="numpy", strategy="parallel", device="cpu")
FINISHED_CELL = RunMetrics(
    **CELL,
    status=FINISHED,
    test_accuracy=0.9,
    test_loss=0.3,
    train_seconds=3.0,
    first_epoch_seconds=1.5,
    steady_epoch_seconds=0.75,
    samples_per_second=1000.0,
    peak_memory_mb=100.0,
    final_train_loss=0.5,
    final_val_accuracy=None,
    n_train=3600,
    epochs=3,
    batch_size=64,
    seed=0,
    dtype="float32",
    resolved_device="cpu",
    framework_version="2.0",
    device_name="a CPU",
    blas="openblas",
    mlflow_run_id="abc",
)


def test_history_columns_are_the_epoch_stats_fields():
    assert (
        HISTORY_COLUMNS
        == tuple(f.name for f in fields(EpochStats))
        == (
            "epoch",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "epoch_seconds",
            "samples_per_second",
            "lr",
        )
    )


def test_statuses_and_key_groups_are_fields():
    assert STATUSES == ("finished", "skipped", "failed")
    names = {f.name for f in fields(RunMetrics)}
    assert set(REQUIRED_KEYS) | set(FINISHED_KEYS) | set(NULLABLE_KEYS) <= names


def test_a_finished_cell_round_trips(tmp_path):
    write_metrics(tmp_path / "metrics.json", FINISHED_CELL)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert list(on_disk) == [f.name for f in fields(RunMetrics)]  # every field, in order
    assert on_disk["final_val_accuracy"] is None
    assert read_metrics(tmp_path / "metrics.json") == FINISHED_CELL


def test_a_skipped_cell_has_only_the_keys_every_cell_has(tmp_path):
    skipped = RunMetrics(**CELL, status=SKIPPED, reason="no GPU", mode="native", seed=2, mlflow_run_id="")
    every_cell = {"status": "skipped", "reason": "no GPU", "mode": "native", "seed": 2, "mlflow_run_id": ""}
    assert skipped.to_dict() == {**CELL, **every_cell}
    write_metrics(tmp_path / "metrics.json", skipped)
    assert read_metrics(tmp_path / "metrics.json") == skipped


def test_unknown_keys_are_ignored_and_optional_ones_default():
    m = RunMetrics.from_dict({**CELL, "status": "skipped", "reason": "", "extra": 1}, "m.json")
    assert m.mlflow_run_id == "" and m.test_accuracy is None


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.pop("status"), r"m.json: missing key 'status' \(every run needs: cell, framework"),
        (
            lambda d: d.update(status="done"),
            r"m.json: key 'status' is 'done', expected one of finished, skipped, failed",
        ),
        (lambda d: d.pop("samples_per_second"), r"m.json: missing key 'samples_per_second' \(a finished run needs"),
        (lambda d: d.update(train_seconds=None), r"m.json: key 'train_seconds' is None, expected a number"),
        (lambda d: d.update(test_accuracy="0.9"), r"m.json: key 'test_accuracy' is '0.9', expected a number"),
        (lambda d: d.update(epochs=True), r"m.json: key 'epochs' is True, expected a number"),
    ],
)
def test_malformed_metrics_name_the_file_and_key(change, message):
    d = FINISHED_CELL.to_dict()
    change(d)
    with pytest.raises(MetricsError, match=message):
        RunMetrics.from_dict(d, "m.json")


def test_nullable_numbers_may_be_none():
    d = FINISHED_CELL.to_dict() | {"steady_epoch_seconds": None, "final_val_accuracy": None}
    assert RunMetrics.from_dict(d, "m.json") == replace(FINISHED_CELL, steady_epoch_seconds=None)


def test_unreadable_metrics_files_are_named(tmp_path):
    with pytest.raises(MetricsError, match=r"nope.json: not found \(has the run's study stage run\?\)"):
        read_metrics(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetricsError, match=r"bad.json: line 1 column 2: not valid JSON"):
        read_metrics(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(MetricsError, match=r"list.json: expected one JSON object, got list"):
        read_metrics(tmp_path / "list.json")


def test_history_round_trips_with_nan(tmp_path):
    history = [
        EpochStats(1, 2.0, 0.5, math.nan, math.nan, 0.25, 400.0, 0.1),
        EpochStats(2, 1.0, 0.75, math.nan, math.nan, 0.2, 500.0, 0.05),
    ]
    write_history(tmp_path / "history.csv", history)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == [",".join(HISTORY_COLUMNS), "1,2.0,0.5,nan,nan,0.25,400.0,0.1", "2,1.0,0.75,nan,nan,0.2,500.0,0.05"]
    table = read_history(tmp_path / "history.csv")
    assert list(table) == list(HISTORY_COLUMNS) and table["epoch"].tolist() == [1.0, 2.0]
    assert np.isnan(table["val_loss"]).all()
    write_history(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(HISTORY_COLUMNS)


def test_bad_history_names_the_file_row_and_column(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss\n1,0.5\n")
    expected = r"history.csv: missing column 'val_loss' \(expected at least epoch, train_loss, val_loss\)"
    with pytest.raises(MetricsError, match=expected):
        read_history(path, ("epoch", "train_loss", "val_loss"))
    assert read_history(path, ("epoch", "train_loss"))["train_loss"].tolist() == [0.5]  # other columns are not needed
    path.write_text("epoch,train_loss,val_loss\n1,nan,0.5\n2,oops,0.4\n")
    with pytest.raises(MetricsError, match=r"history.csv: row 3, column 'train_loss': 'oops' is not a number"):
        read_history(path, ("epoch", "train_loss", "val_loss"))
    with pytest.raises(MetricsError, match=r"gone.csv: not found"):
        read_history(tmp_path / "gone.csv")


def test_the_architecture_doc_documents_every_field():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, flags=re.MULTILINE))
    missing = [f.name for f in fields(RunMetrics) + fields(EpochStats) if f.name not in documented]
    assert not missing, f"docs/architecture.md has no table row for {missing}"
    for status in STATUSES:
        assert f"`{status}`" in doc


def history(val_accuracy: list[float], seconds: list[float], tmp_path: Path) -> dict[str, np.ndarray]:
    """A history.csv as a run writes it, read back as compare reads it."""
    rows = [
        EpochStats(e, 0.5, 0.9, 0.4, a, t, 1000 / t, 0.01) for e, (a, t) in enumerate(zip(val_accuracy, seconds), 1)
    ]
    return read_history(write_history(tmp_path / "history.csv", rows), TARGET_COLUMNS)


def test_time_to_target_is_the_first_epoch_at_or_above_it(tmp_path):
    seconds = [2.5, 0.5, 0.25, 0.25]  # the first epoch compiles: it counts in full
    h = history([0.80, 0.88, 0.87, 0.90], seconds, tmp_path)
    assert time_to_target(h, 0.88) == TimeToTarget(REACHED, 2, 3.0, 0.90)  # equal counts: 352 of 400
    assert time_to_target(h, 0.89) == TimeToTarget(REACHED, 4, 3.5, 0.90)  # epoch 3 fell back below
    assert time_to_target(h, 0.5) == TimeToTarget(REACHED, 1, 2.5, 0.90)  # at the end of epoch 1
    assert time_to_target(h, 0.95) == TimeToTarget(NEVER, best=0.90)
    assert time_to_target(h, 1.0).seconds is None and time_to_target(h, 1.0).epoch is None


def test_a_float32_accuracy_reaches_the_target_it_rounds_to(tmp_path):
    h = history([float(np.float32(0.88))], [1.0], tmp_path)  # 0.8799999952316284
    assert time_to_target(h, 0.88).outcome == REACHED
    assert time_to_target(h, 0.8801).outcome == NEVER  # a 10,000-row val split's next step is not


def test_no_validation_split_is_its_own_outcome(tmp_path):
    h = history([math.nan, math.nan], [1.0, 1.0], tmp_path)
    assert time_to_target(h, 0.5) == TimeToTarget(NO_VAL)
    some = history([math.nan, 0.9], [1.0, 2.0], tmp_path)  # not a split's absence: NaN never reaches
    assert time_to_target(some, 0.5) == TimeToTarget(REACHED, 2, 3.0, 0.9)
    empty = {c: np.array([]) for c in TARGET_COLUMNS}
    assert time_to_target(empty, 0.5) == TimeToTarget(NEVER)
