"""bench/scaling.py and --scaling: the "within 1.2x from batch" rule on constructed curves, the
pinned child (NumPy only, tiny sizes), the report and plot from a constructed result, failures kept.

    .venv/bin/python -m pytest tests/test_bench_scaling.py -x -q
"""

from __future__ import annotations

import json
import os

import pytest

from backprop_bench.bench import __main__ as bench
from backprop_bench.bench import scaling
from backprop_bench.bench.cells import SIZES, Cell
from backprop_bench.bench.report import cell_rows
from backprop_bench.core.specs import MLPSpec

# Tiny: 256 synthetic rows a point, two batches, one round; no MLflow run (--scaling records none)
TINY = ["--scaling", "--data", "synthetic", "--scaling-samples", "256", "--batches", "16,64", "--rounds", "1"]
TINY += ["--keep-blas-env"]


# ----------------------------------------------------------------------------- within 1.2x from batch


def test_within_from_on_a_rising_curve_is_the_first_batch_near_the_best():
    # epoch time over the best's, per batch: samples/s rising and flattening
    assert scaling.within_from({16: 3.0, 32: 1.9, 64: 1.25, 128: 1.15, 256: 1.0}) == 128
    assert scaling.within_from({16: 1.0, 32: 1.0}) == 16  # flat: from the smallest
    assert scaling.within_from({64: 1.2, 128: 1.0}) == 64  # exactly 1.2x counts as within


def test_within_from_on_a_non_monotone_curve_is_after_the_last_dip():
    # batch 32 is within, 64 dips out, 128 on are within: every batch from 128 on, not from 32
    assert scaling.within_from({16: 1.5, 32: 1.1, 64: 1.3, 128: 1.0, 256: 1.1, 512: 1.05}) == 128


def test_within_from_is_none_when_the_curve_falls_off_or_its_end_is_unknown():
    assert scaling.within_from({16: 1.5, 64: 1.0, 256: 1.4}) is None  # the largest batch is not within
    assert scaling.within_from({16: 1.0, 64: 1.1, 256: None}) is None  # not measured: nothing is known there
    assert scaling.within_from({16: 1.0, 64: None, 256: 1.1}) == 256  # a gap breaks the run
    assert scaling.within_from({}) is None


def _cell(fw: str, mode: str, batch: int, epochs: list[float] | None, status: str = "ok", group: str = "main") -> Cell:
    return Cell(fw, mode, False, 1, "parallel", batch, "cpu", group, status=status, epoch_seconds=epochs or [])


def _rows(cells: list[Cell], threads: int, n: int = 1000) -> list[dict]:
    rows = [r | {"threads": threads} for r in cell_rows(cells, MLPSpec(SIZES), n, None)]
    return [r | {"cores_busy": scaling.cores_busy(r)} for r in rows]


def test_a_curve_is_read_from_its_points_paired_over_rounds():
    # torch eager: samples/s 1000 rows / median epoch; b64 is the best, b16 2x slower, b256 dips to 1.5x
    cells = [
        _cell("torch", "eager", 16, [2.0, 2.2, 2.0]),
        _cell("torch", "eager", 64, [1.0, 1.1, 1.0]),
        _cell("torch", "eager", 256, [1.5, 1.65, 1.5]),
        _cell("torch", "compile", 16, [1.0, 1.0, 1.0]),
        _cell("torch", "compile", 64, None, status="failed"),
        _cell("torch", "compile", 256, [1.0, 1.0, 1.0]),
    ]
    eager, compiled = scaling.curves(_rows(cells, threads=2), [16, 64, 256], keras_spe=[16])
    assert (eager["kind"], eager["best_batch"], eager["best_samples_per_second"]) == ("plain", 64, 1000.0)
    assert [p["vs_best"] for p in eager["points"]] == pytest.approx([2.0, 1.0, 1.5])  # per-round ratios, median
    assert eager["within_from"] is None  # b256 is 1.5x: the curve falls off at its end
    assert compiled["kind"] == "fastest" and compiled["points"][1]["status"] == "failed"
    assert compiled["within_from"] == 256  # b64 did not run: from 256 only


def test_scaling_options_resolve_to_its_own_cells_and_a_child_parses_the_same(tmp_path):
    args = bench.parse_args(["--scaling", "--frameworks", "numpy", "--scaling-samples", "2048"])
    assert (args.cells, args.samples, args.batches) == ("scaling", 2048, list(scaling.BATCHES))
    assert (args.devices, args.strategies, args.tracking) == (["cpu"], ["parallel"], False)
    child = bench.parse_args(bench.child_argv(args, "main", ["numpy"], tmp_path) + ["--threads", "1"])
    assert (child.cells, child.samples, child.batches, child.threads) == ("scaling", 2048, args.batches, 1)
    assert bench.parse_args(["--batches", "32"]).batches == [32] and bench.parse_args([]).batches == [64, 256]
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "1"])  # a child's option only


# ----------------------------------------------------------------------------- one thread


def test_the_pinned_env_sets_every_pool_and_keeps_the_users_xla_flags():
    env = scaling.pinned_env({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "HOME": "/h"})
    assert all(env[k] == "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PJRT_NPROC"))
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_cpu_multi_thread_eigen=false"
    assert env["HOME"] == "/h" and scaling.pinned_env(env)["XLA_FLAGS"] == env["XLA_FLAGS"]  # added once


def test_the_one_thread_check_trusts_what_the_pools_report_and_the_cpu_time_not_the_env():
    rows = [{"cell": "a", "cores_busy": 0.98}, {"cell": "b", "cores_busy": None}]
    one = {"blas": {"openblas x.so": 1}, "torch": {"intra": 1, "interop": 1}, "os_threads": {"tf_XLAEigen": 1}}
    assert scaling.one_thread_check(one, rows) == {"ok": True, "why": [], "cpu_max": 0.98}
    # two pools named alike (JAX's and TF's XLA device's) are no 2-thread pool; tf.config's 0 is "not set there"
    same = one | {"os_threads": {"tf_XLAEigen": 2}, "tensorflow": {"intra": 0, "inter": 0}}
    assert scaling.one_thread_check(same, rows)["ok"]
    two = one | {"torch": {"intra": 2, "interop": 1}}
    got = scaling.one_thread_check(two, rows + [{"cell": "c", "cores_busy": 1.7}])
    assert not got["ok"] and got["why"] == ["torch intra: 2 threads", "c: 1.70 CPU s per wall s (> 1.2)"]


def test_scaling_runs_numpy_on_every_core_then_in_a_child_pinned_to_one_thread(tmp_path):
    assert bench.main(TINY + ["--frameworks", "numpy", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_scaling.json").read_text())
    cores = len(os.sched_getaffinity(0))
    assert result["threads"] == list(dict.fromkeys((cores, 1)))
    pinned = result["runs"][-1]
    assert (pinned["group"], pinned["threads"], pinned["error"]) == ("main", 1, None)
    assert set(pinned["thread_counts"]["blas"].values()) == {1}  # asked of NumPy's BLAS in the child
    assert pinned["one_thread"]["ok"], pinned["one_thread"]["why"]
    assert len(result["machine"]["load_average"]) == 2
    assert 0 < pinned["one_thread"]["cpu_max"] <= scaling.ONE_THREAD_CPU_MAX  # measured: one core's worth
    if cores > 1:
        assert set(result["runs"][0]["thread_counts"]["blas"].values()) == {cores}  # the parent kept them all
    names = {(c["mode"], c["threads"]) for c in result["curves"]}
    assert names == {(m, t) for m in ("plain", "fast") for t in result["threads"]}
    assert all(p["status"] == "ok" and p["samples_per_second"] > 0 for c in result["curves"] for p in c["points"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_scaling.json", "bench_scaling.md", "bench_scaling.png"]


def test_a_failing_framework_is_reported_not_dropped(tmp_path, monkeypatch, capsys):
    made = bench.child_argv
    monkeypatch.setattr(bench, "child_argv", lambda *a: made(*a) + ["--rounds", "0"])  # every child refuses it
    assert bench.main(TINY + ["--frameworks", "numpy,keras-torch", "--out-dir", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "bench_scaling.json").read_text())
    assert [r["group"] for r in result["runs"]][:2] == ["main", "keras-torch"]
    failed = [r for r in result["runs"] if r["error"] is not None]
    assert {r["group"] for r in failed} >= {"keras-torch"} and all("need --rounds >= 1" in r["error"] for r in failed)
    torch_curves = [c for c in result["curves"] if c["framework"] == "keras-torch"]
    assert torch_curves and all(p["status"] == "failed" for c in torch_curves for p in c["points"])
    md = (tmp_path / "bench_scaling.md").read_text()
    assert "| keras-torch | fit (plain) | failed |" in md
    assert "- group keras-torch, " in md and "**FAILED**" in md and "need --rounds >= 1" in md
    assert "bench: scaling group keras-torch" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the report


def _result() -> dict:
    cells = [_cell("numpy", "plain", b, [t, t]) for b, t in ((16, 2.0), (64, 1.0), (256, 0.9))]
    cells += [_cell("numpy", "fast", b, [t, t]) for b, t in ((16, 1.0), (64, 0.5), (256, 0.45))]
    one = [_cell("numpy", "plain", b, [t, t]) for b, t in ((16, 1.0), (64, 0.8), (256, 0.8))]
    one += [_cell("keras-jax", "fit", b, None, "failed", "keras-jax") for b in (16, 64, 256)]
    for c in one[3:]:
        c.reason = "build: ImportError: no jax"
    rows = _rows(cells, threads=2) + _rows(one, threads=1)
    counts = {"blas": {"openblas libopenblas.so": 1}, "os_threads": {}}
    return {
        "sizes": list(SIZES),
        "optimizer": "sgd lr=0.005",
        "data": {"source": "synthetic", "n": 1000},
        "batches": [16, 64, 256],
        "threads": [2, 1],
        "within": scaling.WITHIN,
        "rounds": 2,
        "rounds_requested": 2,
        "runs": [
            {"group": "main", "threads": 2, "ran": True, "error": None, "thread_counts": counts},
            {"group": "main", "threads": 1, "ran": True, "error": None, "thread_counts": counts}
            | {"one_thread": scaling.one_thread_check(counts, [])},
            {"group": "keras-jax", "threads": 1, "ran": True, "error": None, "thread_counts": counts}
            | {"one_thread": scaling.one_thread_check(counts, [])},
        ],
        "curves": scaling.curves(rows, [16, 64, 256], [16]),
        "cells": rows,
        "machine": {"cpu": "Test CPU", "cores_usable": 2, "load_average": [7.25, 13.9]},
        "command": "python -m backprop_bench.bench --scaling",
    }


def test_the_report_names_the_batch_from_which_each_curve_is_within_its_best():
    md = scaling.markdown(_result())
    assert "Machine: Test CPU, 2 usable cores, load average 7.2 before and 13.9 after the run." in md
    assert "## Within 1.2x of its own best: from which batch" in md
    # numpy plain on 2 cores: 500, 1000, 1111 samples/s: from 64; fast: 1000, 2000, 2222: from 64;
    # plain on 1 thread: 1000, 1250, 1250: from 64 (its best is the first of two equal points)
    assert "| numpy | plain (plain) | 64 | 64 | 1,111 (256) | 1,250 (64) |" in md
    assert "| numpy | fast (fastest) | 64 |  | 2,222 (256) |  |" in md  # not timed on 1 thread
    assert "| keras-jax | fit (plain) |  | failed |  |  |" in md
    assert "| numpy plain | 1 thread | 1,000 | 1,250 | 1,250 |" in md
    assert "| keras-jax fit | 1 thread | failed | failed | failed |" in md
    assert "- keras-jax fit, 1 thread, batch 16: build: ImportError: no jax" in md
    assert "| main | 1 thread | openblas libopenblas.so 1 |" in md and "| yes |" in md


def test_the_files_are_written_from_a_constructed_result(tmp_path):
    md = scaling.write(_result(), tmp_path)
    assert (tmp_path / "bench_scaling.md").read_text() == md
    assert json.loads((tmp_path / "bench_scaling.json").read_text())["curves"][0]["within_from"] == 64
    assert (tmp_path / "bench_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp file left
