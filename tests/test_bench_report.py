"""bench/report.py: each cell's figures, the paired ratios, the project's goals, the markdown.

.venv/bin/python -m pytest tests/test_bench_report.py -x -q
"""

from __future__ import annotations

import pytest

from backprop_bench.bench import report
from backprop_bench.bench.cells import SIZES, Cell
from backprop_bench.core.specs import MLPSpec

SPEC = MLPSpec(SIZES)


def test_a_rows_figures_follow_from_its_epochs():
    cell = Cell("numpy", "fast", True, 1, "parallel", 256, "cpu", status="ok", epoch_seconds=[0.5, 0.4, 0.6])
    (row,) = report.cell_rows([cell], SPEC, 60_000, numpy_peak=100.0)
    assert row["median_epoch_seconds"] == 0.5 and row["min_epoch_seconds"] == 0.4
    assert row["samples_per_second"] == pytest.approx(120_000)
    assert row["gflops"] == pytest.approx(SPEC.needed_flops(60_000) / 1e9 / 0.5)
    assert row["peak_fraction"] == pytest.approx(row["gflops"] / 100.0)
    assert row["ceiling_fraction"] is None  # no ceiling given
    assert row["vs_framework_best"] == 1.0 and row["framework_best"] == row["cell"]


def test_cells_are_set_against_the_matmul_ceiling_on_cpu_only():
    cpu = Cell("numpy", "fast", True, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[1.0])
    gpu = Cell("numpy", "fast", True, 1, "parallel", 64, "cuda", status="ok", epoch_seconds=[0.1])
    rows = report.cell_rows(
        [cpu, gpu], SPEC, 60_000, numpy_peak=100.0, ceiling={64: {"gflops": 40.0, "library": "torch"}}
    )
    gflop = SPEC.needed_flops(60_000) / 1e9
    assert rows[0]["ceiling_fraction"] == pytest.approx(gflop / 40.0)
    assert rows[1]["ceiling_fraction"] is None and rows[1]["peak_fraction"] is None


def test_ratios_pair_the_epochs_of_each_round():
    """One lucky parallel epoch must not make sequential look slow: ratios are per round."""
    cells = [
        Cell("torch", "eager", False, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[1.0, 1.0, 0.6]),
        Cell("torch", "eager", False, 1, "sequential", 64, "cpu", status="ok", epoch_seconds=[1.0, 1.1, 1.0]),
        Cell("numpy", "fast", True, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[0.5, 0.4, 0.3]),
    ]
    rows = {r["cell"]: r for r in report.cell_rows(cells, SPEC, 60_000, numpy_peak=100.0)}
    seq = rows["torch-eager-sequential-b64-cpu"]
    assert seq["seq_over_par"] == pytest.approx(1.1)  # median of 1.0, 1.1, 1.667; min/min would say 1.67
    assert rows["numpy-fast-parallel-b64-cpu"]["vs_torch_eager"] == pytest.approx(2.0)  # 2.0, 2.5, 2.0
    assert report.paired_ratio([2.0, 4.0], [1.0, 1.0]) == pytest.approx(3.0)
    # Against the framework's fastest cell (by median, any mode or strategy), paired too.
    assert seq["framework_best"] == "torch-eager-parallel-b64-cpu"
    assert seq["vs_framework_best"] == pytest.approx(1.1)


def test_the_framework_best_includes_the_stock_idiom():
    cells = [
        Cell("torch", "compile", True, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[1.3, 1.2]),
        Cell("torch", "stock-compile", True, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[1.0, 1.0]),
        Cell("torch", "eager", False, 1, "parallel", 256, "cpu", status="ok", epoch_seconds=[2.0, 2.0]),
        Cell("torch", "eager", False, 1, "parallel", 64, "cpu", status="failed"),
    ]
    rows = {r["cell"]: r for r in report.cell_rows(cells, SPEC, 60_000, numpy_peak=None)}
    assert rows["torch-compile-parallel-b64-cpu"]["vs_framework_best"] == pytest.approx(1.25)
    assert rows["torch-compile-parallel-b64-cpu"]["framework_best"] == "torch-stock-compile-parallel-b64-cpu"
    assert rows["torch-eager-parallel-b256-cpu"]["vs_framework_best"] == 1.0  # alone at its batch
    assert "vs_framework_best" not in rows["torch-eager-parallel-b64-cpu"]


def _row(framework, mode, strategy, batch, seconds, fraction=None):
    return {
        "framework": framework,
        "mode": mode,
        "strategy": strategy,
        "batch": batch,
        "device": "cpu",
        "group": "main",
        "median_epoch_seconds": seconds,
        "samples_per_second": 60_000 / seconds,
        "gflops": 27.26 / seconds,
        "peak_fraction": fraction,
    }


def _by_start(goals: list[dict]):
    got = {g["goal"]: g for g in goals}
    return lambda s: next(g for k, g in got.items() if k.startswith(s))


def test_goals_are_judged_from_the_rows():
    rows = [
        _row("numpy", "fast", "parallel", 256, 0.40, fraction=0.72),
        _row("numpy", "fast", "parallel", 64, 0.60, fraction=0.45) | {"vs_torch_eager": 1.40 / 0.60},
        _row("numpy", "fast", "sequential", 64, 0.72) | {"seq_over_par": 1.2},
        _row("torch", "eager", "parallel", 64, 1.40),
        _row("torch", "compile", "parallel", 64, 1.00),
    ]
    by_start = _by_start(report.evaluate_goals(rows))
    assert by_start("NumPy parallel >= 70%")["met"] is True
    assert by_start("NumPy parallel >= 50%")["met"] is False
    assert by_start("NumPy >= 2x torch")["met"] is True and "2.33x" in by_start("NumPy >= 2x torch")["detail"]
    assert by_start("numpy: sequential")["met"] is False
    assert by_start("torch: sequential")["met"] is None  # not measured is not "met"
    assert by_start("torch: plain mode")["met"] is False
    assert "1.40x: eager against compile (b64" in by_start("torch: plain mode")["detail"]
    assert by_start("torch: backend's fastest")["met"] is True  # compile is the fastest torch here
    assert by_start("keras: plain mode")["met"] is None
    assert by_start("keras: backend's fastest")["met"] is None


def test_numpy_goals_judge_numpys_fastest_mode():
    rows = [
        _row("numpy", "plain", "parallel", 256, 0.80, fraction=0.36),
        _row("numpy", "fast", "parallel", 256, 0.40, fraction=0.72),
    ]
    goal = _by_start(report.evaluate_goals(rows))("NumPy parallel >= 70%")
    assert goal["met"] is True and "fast" in goal["detail"]


def test_backends_are_judged_against_the_stock_idiom_and_numpy_against_its_ceiling():
    rows = [
        _row("numpy", "fast", "parallel", 256, 0.40, fraction=0.60),
        _row("torch", "eager", "parallel", 64, 1.40),
        _row("torch", "compile", "parallel", 64, 1.30),
        _row("torch", "stock-compile", "parallel", 64, 1.00),
        _row("keras", "fit", "parallel", 256, 1.0),
        _row("keras", "stock-fit", "parallel", 256, 1.1),
    ]
    by_start = _by_start(report.evaluate_goals(rows, matmul_ceiling={256: 0.75}))
    torch_best = by_start("torch: backend's fastest")
    assert torch_best["met"] is False and "1.30x: compile against stock-compile (b64" in torch_best["detail"]
    keras_best = by_start("keras: backend's fastest")
    assert keras_best["met"] is True and "1.00x: fit against fit" in keras_best["detail"]
    numpy256 = by_start("NumPy parallel >= 70%")
    assert numpy256["met"] is False and "reach 75.0% (80% of that ceiling)" in numpy256["detail"]


def test_gpu_note_says_why_no_gpu_cell_ran():
    skipped = {"device": "cuda", "status": "skipped", "reason": "build: DeviceUnavailable: no GPU"}
    assert report.gpu_note([], ["cpu"]) == "GPU cells not requested (--devices cpu)."
    assert report.gpu_note([skipped], ["cpu", "cuda"]).startswith("no GPU available: GPU cells not run (build")
    assert report.gpu_note([skipped | {"status": "ok"}], ["cuda"]) == "1 of 1 GPU cells ran; see the table."


def test_jax_is_judged_against_its_flax_idiom():
    """The plain mode is step-jit, the fastest backend mode may be epoch-scan, and both are set
    against the fastest JAX configuration, the stock Flax + optax cell included."""
    rows = [
        _row("jax", "step-jit", "parallel", 64, 1.30),
        _row("jax", "epoch-scan", "parallel", 64, 0.90),
        _row("jax", "stock-jit", "parallel", 64, 1.00),
    ]
    by_start = _by_start(report.evaluate_goals(rows))
    fastest, plain = by_start("jax: backend's fastest"), by_start("jax: plain mode")
    assert fastest["met"] is True and "1.00x: epoch-scan against epoch-scan (b64" in fastest["detail"]
    assert plain["met"] is False and "1.44x: step-jit against epoch-scan (b64" in plain["detail"]


def _cell(framework, mode, epochs, group, strategy="parallel", batch=64, status="ok"):
    return Cell(framework, mode, False, 1, strategy, batch, "cpu", group, status=status, epoch_seconds=epochs)


def test_ratios_never_pair_cells_of_two_groups():
    """jax beside keras-jax is its own set of cells: its best and its seq/par are its group's."""
    cells = [
        _cell("jax", "step-jit", [1.0, 1.0], "main"),
        _cell("jax", "epoch-scan", [0.5, 0.5], "main"),
        _cell("jax", "step-jit", [2.0, 2.0], "keras-jax", strategy="sequential"),
        _cell("jax", "step-jit", [1.6, 1.6], "keras-jax"),
    ]
    rows = report.cell_rows(cells, SPEC, 60_000, numpy_peak=None)
    assert [r["group"] for r in rows] == ["main", "main", "keras-jax", "keras-jax"]
    assert rows[0]["vs_framework_best"] == pytest.approx(2.0)  # against epoch-scan, main
    assert rows[2]["seq_over_par"] == pytest.approx(1.25)  # against 1.6, not main's 1.0
    assert rows[2]["framework_best"] == rows[3]["cell"] and rows[3]["vs_framework_best"] == 1.0


def test_goals_judge_each_framework_in_one_group():
    rows = [
        _row("jax", "step-jit", "parallel", 64, 1.0),
        _row("jax", "epoch-scan", "parallel", 64, 0.9),
        _row("jax", "step-jit", "parallel", 64, 0.1) | {"group": "keras-jax"},  # would make main's look slow
        _row("keras-jax", "fit", "parallel", 64, 2.0) | {"group": "keras-jax"},
    ]
    assert report.home_rows(rows) == [rows[0], rows[1], rows[3]]
    plain = _by_start(report.evaluate_goals(rows))("jax: plain mode")
    assert plain["met"] is True and "1.11x: step-jit against epoch-scan" in plain["detail"]


def test_what_keras_costs_pairs_each_round_within_its_group():
    cells = [
        _cell("keras-jax", "fit", [3.0, 2.0, 6.0], "keras-jax"),
        _cell("keras-jax", "fit-spe16", [1.5, 1.5, 1.5], "keras-jax"),
        _cell("jax", "step-jit", [1.0, 1.0, 2.0], "keras-jax"),
        _cell("jax", "epoch-scan", [0.5, 1.0, 0.5], "keras-jax"),
        _cell("jax", "stock-jit", [0.1, 0.1, 0.1], "keras-jax"),  # other code: never the yardstick
        _cell("jax", "step-jit", [0.1, 0.1, 0.1], "main"),  # another process: never paired
        _cell("keras", "fit", [2.0, 2.0, 2.0], "main"),
        _cell("tensorflow", "function", [1.0, 1.0, 1.0], "main", status="failed"),
    ]
    rows = report.cell_rows(cells, SPEC, 60_000, numpy_peak=None)
    tf_cost, jax_cost = report.keras_costs(rows)  # KERAS_BACKENDS's order: keras, keras-jax
    assert {k: jax_cost[k] for k in ("keras", "backend", "group", "device", "strategy", "batch", "note")} == {
        "keras": "keras-jax",
        "backend": "jax",
        "group": "keras-jax",
        "device": "cpu",
        "strategy": "parallel",
        "batch": 64,
        "note": "",
    }
    # per round 3.0, 2.0, 3.0: the median of the ratios (the ratio of the medians would say 3.0 / 1.0)
    assert jax_cost["plain"] == {
        "keras_mode": "fit",
        "backend_mode": "step-jit",
        "median": 3.0,
        "min": 2.0,
        "max": 3.0,
        "rounds": 3,
    }
    fastest = jax_cost["fastest"]  # fit-spe16 (median 1.5) over epoch-scan (median 0.5): 3.0, 1.5, 3.0
    assert (fastest["keras_mode"], fastest["backend_mode"]) == ("fit-spe16", "epoch-scan")
    assert (fastest["median"], fastest["min"], fastest["max"]) == (3.0, 1.5, 3.0)
    assert tf_cost["keras"] == "keras" and tf_cost["group"] == "main"
    assert tf_cost["plain"] is None and tf_cost["fastest"] is None
    assert tf_cost["note"] == "tensorflow did not run in group main"


def test_the_keras_section_shows_each_pair():
    rows = report.cell_rows(
        [_cell("keras-torch", "fit", [2.0, 2.2], "keras-torch"), _cell("torch", "eager", [1.0, 1.0], "keras-torch")],
        SPEC,
        60_000,
        numpy_peak=None,
    )
    md = "\n".join(report._keras_section({"keras_costs": report.keras_costs(rows)}))
    assert "## What Keras costs over its own backend" in md
    assert "| keras-torch | torch | keras-torch | cpu | parallel | 64 | fit / eager | 2.10 (2.00-2.20) |" in md
    assert "No Keras framework benched." in "\n".join(report._keras_section({"keras_costs": []}))


def test_a_failed_group_is_reported_with_its_error():
    groups = [
        {"group": "main", "frameworks": ["numpy"], "ran": True, "rounds": 3, "error": None},
        {"group": "keras-jax", "frameworks": ["keras-jax", "jax"], "ran": True, "rounds": 0, "error": "exit 1\nE: x"},
        {"group": "keras-torch", "frameworks": ["keras-torch", "torch"], "ran": False, "rounds": 0, "error": None},
    ]
    md = "\n".join(report._groups_section({"groups": groups}))
    assert "- main (the bench's own process): numpy: 3 round(s)" in md
    assert "- keras-jax (a child process of its own): keras-jax, jax: **FAILED**" in md
    assert "  E: x" in md
    assert "- keras-torch (a child process of its own): keras-torch, torch: not run (the bench was interrupted" in md
    assert report._groups_section({"groups": groups[:1]}) == []  # one process: nothing to say


def test_plain_vs_numpy_pairs_each_plain_mode_with_numpys_in_the_main_group_only():
    cells = [
        _cell("numpy", "plain", [1.0, 1.0, 2.0], "main"),
        _cell("numpy", "fast", [0.1, 0.1, 0.1], "main"),  # not NumPy's plain mode
        _cell("jax", "step-jit", [2.0, 0.5, 1.0], "main"),
        _cell("jax", "epoch-scan", [0.1, 0.1, 0.1], "main"),
        _cell("jax", "step-jit", [0.1, 0.1, 0.1], "keras-jax"),
        _cell("tensorflow", "function", [1.0, 1.0, 1.0], "main", batch=256),
        _cell("tensorflow", "function", [1.0, 1.0, 1.0], "main", status="failed"),
    ]
    rows = report.cell_rows(cells, SPEC, 60_000, numpy_peak=None)
    (jax,) = report.plain_vs_numpy(rows, 64)
    assert jax == {"framework": "jax", "mode": "step-jit", "strategy": "parallel"} | {
        "speed": 2.0,
        "min": 0.5,
        "max": 2.0,
        "rounds": 3,
    }
    assert report.plain_vs_numpy(rows, 256) == []  # no NumPy cell at batch 256


def test_numpy_at_xlas_line_is_judged_paired_and_against_its_floor():
    def cell(framework, mode, batch, seconds, **extra):
        return _row(framework, mode, "parallel", batch, sorted(seconds)[1]) | {"epoch_seconds": seconds, **extra}

    rows = [
        # round by round NumPy is 0.95x, 0.98x and 1.10x XLA at 256: its median epoch is the slower one
        cell("numpy", "fast", 256, [0.19, 0.196, 0.22], ceiling_fraction=0.8),
        cell("tensorflow", "jit", 256, [0.20, 0.20, 0.20]),
        cell("numpy", "fast", 64, [0.36, 0.36, 0.36]),
        cell("tensorflow", "jit", 64, [0.30, 0.30, 0.30]),
    ]
    by_start = _by_start(report.evaluate_goals(rows))
    b256 = by_start("NumPy fast <= 1x TF XLA's epoch at batch 256")
    assert b256["met"] is True and "0.98x over 3 rounds (0.95-1.10)" in b256["detail"]
    b64 = by_start("NumPy fast <= 1.15x TF XLA's epoch at batch 64")
    assert b64["met"] is False and "1.20x" in b64["detail"]
    floor = by_start("NumPy fast <= 1.3x its own matmul floor")
    assert floor["met"] is True and "1.25x" in floor["detail"] and "0.157 s" in floor["detail"]
    elsewhere = [r | {"group": "keras-jax"} if r["framework"] == "tensorflow" else r for r in rows]
    unpaired = _by_start(report.evaluate_goals(elsewhere))("NumPy fast <= 1.15x")
    assert unpaired["met"] is None and "one process" in unpaired["detail"]  # two processes: no paired ratio
    assert _by_start(report.evaluate_goals(rows[2:]))("NumPy fast <= 1.3x")["met"] is None  # no b256 cell
