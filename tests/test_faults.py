"""Fault injection where files are written: the all-or-nothing promises, proven.

A run (docs/architecture.md, "A run") stages its four files in a temp folder, logs them
to MLflow from there, then moves them into out_dir, so a failure at any step leaves the
previous outputs whole and ends the MLflow run FAILED. The data stages ("Data stages")
promise the same for their two outputs. Each test here first makes good outputs, then
repeats the work with different results and one write step made to fail (by patching the
exact function the code calls), and checks that out_dir holds the first outputs byte for
byte and nothing else (no staging folder, no temp file). Several files are replaced
together by io.all_or_nothing: a failed move puts back the ones already moved.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import yaml
from conftest import make_split, run_in_process

from backprop_bench.core import files as io
from backprop_bench.data import download, formats, preprocess
from backprop_bench.training import run as train

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

REAL_ATOMIC_WRITE = io.atomic_write


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under folder (dot files and folders included): relative path -> bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def assert_unchanged(folder: Path, before: dict[str, bytes | None]) -> None:
    after = snapshot(folder)
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    assert not added and not removed, f"added {added} (a temp file or staging folder left?), removed {removed}"
    changed = [name for name in before if after[name] != before[name]]
    assert not changed, f"replaced although the run failed: {changed}"


def injected(what: str) -> OSError:
    return OSError(errno.EIO, f"injected fault: {what}")


def fill_disk_on(monkeypatch, name: str) -> None:
    """io.atomic_write (and formats' import of it) runs out of space while writing the file called name.

    The real atomic_write runs, with a writer that puts some bytes into its temp file and
    then fails like write(2) on a full disk, so its own clean-up is what is tested.
    """

    def atomic_write(path, content):
        if Path(path).name != name:
            return REAL_ATOMIC_WRITE(path, content)

        def write_until_full(f) -> None:
            f.write(b"the first bytes, then the disk was full")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        return REAL_ATOMIC_WRITE(path, write_until_full)

    monkeypatch.setattr(io, "atomic_write", atomic_write)
    monkeypatch.setattr(formats, "atomic_write", atomic_write)


# ---------------------------------------------------------------- a tracked training run


@pytest.fixture
def good_run(small_cfg, tracking_uri, tmp_path):
    """A first, successful tracked run (with plots) into out_dir; returns (out_dir, its snapshot, its run id, rerun).

    rerun() repeats it into the same out_dir with another seed, so every file it would
    write differs from the first run's.
    """
    first = run_in_process(small_cfg("tracking.plots=true", "train.seed=0", uri=tracking_uri), tmp_path)
    out = tmp_path / "out"
    before = snapshot(out)
    assert sorted(before) == sorted(train.OUT_FILES) and first["status"] == "finished"

    def rerun() -> dict:
        return run_in_process(small_cfg("tracking.plots=true", "train.seed=1", uri=tracking_uri), tmp_path)

    return out, before, first["mlflow_run_id"], rerun


def assert_failed_in_mlflow(uri: str, good_run_id: str, message: str) -> None:
    """The store holds the good run, still FINISHED, and the failed attempt, FAILED with the error and traceback."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id])
    assert len(runs) == 2
    (good,) = [r for r in runs if r.info.run_id == good_run_id]
    (failed,) = [r for r in runs if r.info.run_id != good_run_id]
    assert good.info.status == "FINISHED" and good.data.tags["outcome"] == "finished"
    assert failed.info.status == "FAILED"
    assert failed.data.tags["outcome"] == "failed"
    assert message in failed.data.tags["error"]
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}


def fail_on(what: str, when=lambda *args, **kwargs: True):
    """Wrap a real function: raise injected(what) on each call that ``when`` accepts (default: all), else call it."""

    def wrap(real):
        def fake(*args, **kwargs):
            if when(*args, **kwargs):
                raise injected(what)
            return real(*args, **kwargs)

        return fake

    return wrap


def artifact_named(name: str):
    return lambda tracker, path: Path(path).name == name


# Each step of the write-out, by the name train.py calls it through:
# "module:attribute" (or "module:Class.method") to patch -> how to wrap the real one.
WRITE_STEPS = {
    "metrics.json write": ("backprop_bench.training.run:write_metrics", fail_on("metrics.json")),
    "history.csv write": ("backprop_bench.training.run:write_history", fail_on("history.csv")),
    "weights.npz write": ("backprop_bench.training.run:save_weights", fail_on("weights.npz")),
    "predictions.npy write": ("backprop_bench.training.run:write_npy", fail_on("predictions.npy")),
    "curves plot": ("backprop_bench.report.plots:plot_curves", fail_on("plot_curves")),
    "confusion plot": ("backprop_bench.report.plots:plot_confusion", fail_on("plot_confusion")),
    # _log_artifacts logs config.yaml and the plots first, the four staged files last
    "first MLflow artifact": (
        "backprop_bench.tracking.run:MlflowRun.log_artifact",
        fail_on("log_artifact config.yaml", artifact_named("config.yaml")),
    ),
    "last MLflow artifact": (
        "backprop_bench.tracking.run:MlflowRun.log_artifact",
        fail_on("log_artifact predictions.npy", artifact_named("predictions.npy")),
    ),
    # the UI's Dataset, Source and Models columns, logged from the staging folder too
    "MLflow standard columns": ("backprop_bench.tracking.columns:log_standard_columns", fail_on("standard columns")),
}


def patch_step(monkeypatch, target: str, wrap) -> None:
    module_name, _, attribute = target.partition(":")
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"no module {module_name} in this checkout")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))


@pytest.mark.slow  # two real tracked runs per case: make test runs them, make test-fast keeps the moves below
@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_failing_write_step_keeps_the_previous_outputs_and_fails_the_mlflow_run(
    step, good_run, tracking_uri, monkeypatch
):
    out, before, good_id, rerun = good_run
    target, wrap = WRITE_STEPS[step]
    patch_step(monkeypatch, target, wrap)
    with pytest.raises(OSError, match="injected fault"):
        rerun()
    assert_unchanged(out, before)
    assert_failed_in_mlflow(tracking_uri, good_id, "injected fault")


@pytest.mark.slow
@pytest.mark.parametrize("name", train.OUT_FILES)
def test_a_full_disk_while_staging_keeps_the_previous_outputs(name, good_run, tracking_uri, monkeypatch):
    out, before, good_id, rerun = good_run
    fill_disk_on(monkeypatch, name)
    with pytest.raises(OSError) as info:
        rerun()
    assert info.value.errno == errno.ENOSPC
    assert_unchanged(out, before)
    assert_failed_in_mlflow(tracking_uri, good_id, "No space left on device")


@pytest.mark.parametrize(
    "move",
    [
        pytest.param(1, id="move 1 (metrics.json)"),
        pytest.param(2, id="move 2 (history.csv)"),
        pytest.param(3, id="move 3 (weights.npz)"),
        pytest.param(4, id="move 4 (predictions.npy)"),
    ],
)
def test_a_failing_final_move_keeps_the_previous_outputs(move, good_run, tracking_uri, monkeypatch):
    """The moves of the staged files into out_dir fail, the first, second, ... in turn.

    train.py moves with Path.replace, which is os.replace underneath: os.replace is
    patched, so a move written either way is caught; only a staged file going into
    out_dir counts (atomic_write's own renames inside the staging folder pass).
    """
    out, before, good_id, rerun = good_run
    real_replace = os.replace
    moves = []

    def replace(src, dst, **kwargs):
        src, dst = Path(src), Path(dst)
        if src.parent.name.startswith(".staging-") and dst.parent == out:
            moves.append(src.name)
            if len(moves) == move:
                raise injected(f"move of {src.name}")
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="injected fault: move of"):
        rerun()
    assert moves == list(train.OUT_FILES[:move])
    assert_failed_in_mlflow(tracking_uri, good_id, "injected fault")
    assert_unchanged(out, before)


# ---------------------------------------------------------------- the data stages


@pytest.fixture
def download_stage(tmp_path):
    """source=file CSVs -> data/raw; returns (argv, out, write_inputs(seed))."""
    src, out = tmp_path / "src", tmp_path / "raw"
    params = tmp_path / "params.yaml"
    files = {"format": "csv", "train_csv": str(src / "train.csv"), "test_csv": str(src / "test.csv")}
    params.write_text(yaml.safe_dump({"data": {"source": "file", "file": files}}))

    def write_inputs(seed: int) -> None:
        formats.write_canonical_csv(src / "train.csv", *make_split(20, seed))
        formats.write_canonical_csv(src / "test.csv", *make_split(10, seed + 100))

    argv = ["--params", str(params), "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    return argv, out, write_inputs


@pytest.fixture
def preprocess_stage(tmp_path):
    """data/raw CSVs -> data/processed; returns (argv, out, write_inputs(seed))."""
    raw, out = tmp_path / "raw", tmp_path / "processed"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"val_fraction": 0.2, "seed": 1}}))

    def write_inputs(seed: int) -> None:
        formats.write_canonical_csv(raw / "train.csv", *make_split(30, seed))
        formats.write_canonical_csv(raw / "test.csv", *make_split(10, seed + 100))

    return ["--params", str(params), "--raw-dir", str(raw), "--out-dir", str(out)], out, write_inputs


STAGES = {"download": (download, ["test.csv", "train.csv"]), "preprocess": (preprocess, ["mnist.npz", "stats.json"])}


@pytest.mark.parametrize(
    "stage,failing",
    [("download", "train.csv"), ("download", "test.csv"), ("preprocess", "mnist.npz"), ("preprocess", "stats.json")],
)
def test_a_data_stage_full_disk_on_an_output_keeps_the_previous_outputs(stage, failing, request, monkeypatch):
    """Either output of either stage failing (the second one too) leaves both previous outputs."""
    module, outputs = STAGES[stage]
    argv, out, write_inputs = request.getfixturevalue(f"{stage}_stage")
    write_inputs(seed=0)
    assert module.main(argv) == 0
    before = snapshot(out)
    assert sorted(before) == outputs

    write_inputs(seed=1)  # new rows: a successful run would change both files
    fill_disk_on(monkeypatch, failing)
    with pytest.raises(OSError) as info:  # not a DataError: main lets it out (a traceback, exit 1)
        module.main(argv)
    assert info.value.errno == errno.ENOSPC
    assert_unchanged(out, before)
