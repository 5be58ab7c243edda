"""bench/phases.py: where a step's time goes (forward, backward, update, rest), measured and reported.

.venv/bin/python -m pytest tests/test_bench_phases.py -x -q
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from backprop_bench.backends import make_backend
from backprop_bench.bench import __main__ as bench
from backprop_bench.bench import phases
from backprop_bench.bench.cells import SIZES
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SPEC = MLPSpec(SIZES)
# A small real run: 2048 synthetic rows, one batch size, one timed round, a tiny peak.
SMALL = [
    "--data",
    "synthetic",
    "--samples",
    "2048",
    "--rounds",
    "1",
    "--batches",
    "64",
    "--strategies",
    "parallel",
    "--devices",
    "cpu",
    "--peak-size",
    "64",
    "--peak-repeats",
    "1",
    "--peak-seconds",
    "0.001",
    "--keep-blas-env",
    "--no-tracking",
]


def _spread(median: float, low: float, high: float) -> dict:
    return {"median": median, "min": low, "max": high}


def _entry(framework: str, mode: str, batch: int, **fields) -> dict:
    base = {"framework": framework, "mode": mode, "batch": batch, "device": "cpu", "group": "main"}
    return base | {"cell": f"{framework}-{mode}-parallel-b{batch}-cpu", "reason": "", "note": ""} | fields


def _ok(framework: str, mode: str, batch: int, fwd: float, bwd: float, upd: float, rest: float) -> dict:
    parts = {"forward": fwd, "backward": bwd, "update": upd, "rest": rest, "step": fwd + bwd + upd}
    spreads = {k: _spread(v, *sorted((0.9 * v, 1.1 * v))) for k, v in parts.items()}
    return _entry(framework, mode, batch, status="ok", steps_per_epoch=32, floor_seconds=fwd / 2, **spreads)


def test_the_phases_of_a_small_numpy_run_add_up_to_the_step_within_their_spread(tmp_path):
    assert bench.main(SMALL + ["--frameworks", "numpy", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    got = {(e["framework"], e["mode"]): e for e in result["phases"]}
    assert set(got) == {("numpy", "plain"), ("numpy", "fast")}  # the plain and fastest modes
    cells = {r["cell"]: r for r in result["cells"]}
    for e in got.values():
        assert e["status"] == "ok", e
        parts = [e[p]["median"] for p in ("forward", "backward", "update")]
        width = sum(e[p]["max"] - e[p]["min"] for p in ("forward", "backward", "update", "step"))
        assert abs(sum(parts) - e["step"]["median"]) <= width
        assert e["forward"]["median"] > 0 and e["step"]["median"] > 0  # never a comparison of speeds here
        # rest: the cell's epoch over its steps, less the step (one round: exactly)
        epoch = statistics.median(cells[e["cell"]]["epoch_seconds"])
        assert e["steps_per_epoch"] == 2048 // 64
        assert e["step"]["median"] + e["rest"]["median"] == pytest.approx(epoch / 32)
        floor = SPEC.needed_flops(64) / (result["peak"]["ceiling"]["64"]["gflops"] * 1e9)
        assert e["floor_seconds"] == pytest.approx(floor)
    md = (tmp_path / "bench.md").read_text()
    assert "## Where the time goes" in md and "| numpy-fast b64 |" in md and "bench_phases.png" in md
    assert (tmp_path / "bench_phases.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp")), "temp files left behind"


def test_no_phases_measures_none_and_says_nothing(tmp_path):
    argv = SMALL + ["--frameworks", "numpy", "--samples", "256", "--no-phases", "--out-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["phases"] is None
    assert "Where the time goes" not in (tmp_path / "bench.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]


def test_a_framework_whose_phase_fails_is_reported_as_failed_not_dropped(tmp_path, monkeypatch):
    from backprop_bench.backends.numpy_fast import NumpyFastBackend

    def broken(self, rows):
        raise RuntimeError("no phases here")

    monkeypatch.setattr(NumpyFastBackend, "_phase_fns", broken)
    assert bench.main(SMALL + ["--frameworks", "numpy", "--samples", "256", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    got = {e["mode"]: e for e in result["phases"]}
    assert got["plain"]["status"] == "ok"
    assert got["fast"]["status"] == "failed" and got["fast"]["reason"] == "RuntimeError: no phases here"
    assert "| numpy-fast b64 | failed |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench_phases.png").is_file()  # drawn with the failed row labelled


def test_the_split_is_the_paired_differences_and_rest_the_epoch_left_over():
    samples = [[1.0, 3.0, 4.0], [2.0, 3.0, 5.0], [1.0, 4.0, 4.5]]  # [repeat][forward, fwd+bwd, step]
    got = phases.split(samples, epoch_seconds=[10.0, 12.0], steps=2)
    assert got["forward"] == _spread(1.0, 1.0, 2.0)
    assert got["backward"] == _spread(2.0, 1.0, 3.0)  # 2, 1, 3: per repeat, not a difference of medians
    assert got["update"] == _spread(1.0, 0.5, 2.0)
    assert got["step"] == _spread(4.5, 4.0, 5.0)
    assert got["rest"] == _spread(11 / 2 - 4.5, 5 - 4.5, 6 - 4.5)


def test_the_table_and_the_plot_render_from_a_constructed_result(tmp_path):
    entries = [
        _ok("numpy", "fast", 64, 40e-6, 80e-6, 10e-6, 30e-6),
        _ok("jax", "epoch-scan", 64, 20e-6, 30e-6, 5e-6, -15e-6),  # the scan saves more than the rest
        _ok("keras-torch", "fit", 256, 300e-6, 600e-6, 100e-6, 2000e-6) | {"group": "keras-torch"},
        _entry("torch", "compile", 256, status="failed", reason="RuntimeError: torch.compile failed"),
    ]
    lines = phases.markdown(entries, "bench_phases.png")
    table = "\n".join(lines)
    assert "## Where the time goes (microseconds per step)" in table
    assert (
        "| numpy-fast b64 | 40 (36 to 44) | 80 (72 to 88) | 10 (9 to 11) | 30 (27 to 33) | 130 (117 to 143) |" in table
    )
    assert "| 160 | 20 | 6.5 |" in table  # epoch / steps = step + rest; floor; step / floor
    assert "-15 (-16 to -14)" in table  # a negative rest is shown as measured
    assert "| keras-torch-fit b256 [keras-torch] |" in table
    assert "| torch-compile b256 | failed |" in table and "torch.compile failed" in table
    assert "stacked bars: bench_phases.png" in table
    path = phases.plot(entries, tmp_path / "bench_phases.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*.tmp"))
    assert phases.markdown([])[-1].startswith("No phases measured")


def test_only_the_plain_and_fastest_parallel_modes_are_measured_and_the_default_set_at_its_smallest_batch():
    from backprop_bench.bench.cells import plan_cells

    grid = plan_cells(["numpy", "keras", "jax"], ["parallel", "sequential"], [64, 256], ["cpu"], [16], cell_set="full")
    assert {c.batch for c in phases.phase_cells(grid, [16])} == {64, 256}
    default = plan_cells(["numpy", "keras", "jax"], ["parallel"], [64, 256], ["cpu"], [16], cell_set="default")
    picked = phases.phase_cells(default, [16], "default")
    assert {c.batch for c in picked} == {64}
    got = {(c.framework, c.mode) for c in picked}
    assert (
        got
        == {(c.framework, c.mode) for c in phases.phase_cells(grid, [16])}
        == {
            ("numpy", "plain"),
            ("numpy", "fast"),
            ("keras", "fit"),
            ("keras", "jit-spe16"),
            ("jax", "step-jit"),
            ("jax", "epoch-scan"),
        }
    )


@pytest.mark.parametrize("compile", [False, True])
def test_numpy_phase_functions_compute_the_step_they_time(compile):
    """forward is the batch loss, forward_backward leaves the weights, step is one step of train_epoch."""
    rng = np.random.default_rng(0)
    x, y = rng.random((256, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], 256)
    init = init_params(SPEC, InitSpec(seed=0), "float32")
    made = [make_backend("numpy", SPEC, init, OptimizerSpec("sgd", lr=0.1), compile=compile) for _ in range(2)]
    for b in made:
        b.load(x, y)
    forward, forward_backward, step = made[0].phase_fns(np.arange(32))
    loss = made[1].loss_and_gradients(x[:32], y[:32])[0]
    assert float(forward()) == pytest.approx(loss, rel=1e-6)
    assert float(forward_backward()) == pytest.approx(loss, rel=1e-6)
    before = made[0].params()
    assert all(np.array_equal(w, w0) for (w, _), (w0, _) in zip(made[0].params(), before))
    step()
    made[1].train_epoch(np.arange(32), 32)  # one step on the same rows
    for (w, b), (w1, b1) in zip(made[0].params(), made[1].params()):
        np.testing.assert_array_equal(w, w1)
        np.testing.assert_array_equal(b, b1)


@pytest.mark.parametrize("framework", ["torch", pytest.param("tensorflow", marks=pytest.mark.slow), "jax"])
def test_a_frameworks_phase_functions_compute_the_step_they_time(framework):
    """The same checks on one compiled framework (its plain mode): the loss, no update, then one step."""
    rng = np.random.default_rng(0)
    x, y = rng.random((256, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], 256)
    init = init_params(SPEC, InitSpec(seed=0), "float32")
    made = [make_backend(framework, SPEC, init, OptimizerSpec("sgd", lr=0.1)) for _ in range(2)]
    for b in made:
        b.load(x, y)
    forward, forward_backward, step = made[0].phase_fns(np.arange(32))
    reference = make_backend("numpy", SPEC, init, OptimizerSpec("sgd", lr=0.1))
    reference.load(x, y)
    loss = reference.loss_and_gradients(x[:32], y[:32])[0]
    assert float(np.asarray(forward())) == pytest.approx(loss, rel=1e-5)
    made[0].wait(forward_backward())
    assert all(np.array_equal(w, w0) for (w, _), (w0, _) in zip(made[0].params(), made[1].params()))
    made[0].wait(step())
    made[1].train_epoch(np.arange(32), 32)
    for (w, b), (w1, b1) in zip(made[0].params(), made[1].params()):
        np.testing.assert_allclose(w, w1, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b1, rtol=1e-5, atol=1e-7)


def test_a_sequential_backend_has_no_phases():
    init = init_params(SPEC, InitSpec(seed=0), "float32")
    backend = make_backend("numpy", SPEC, init, OptimizerSpec("sgd", lr=0.1), strategy="sequential")
    backend.load(np.zeros((8, SIZES[0]), np.float32), np.zeros(8, np.int64))
    with pytest.raises(ValueError, match="parallel only"):
        backend.phase_fns(np.arange(8))


@pytest.mark.slow  # a child bench builds Keras on torch: ~30 s on 2 cores
def test_a_child_group_measures_its_phases_in_its_own_process(tmp_path):
    argv = SMALL + ["--frameworks", "keras-torch", "--samples", "512", "--out-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    got = {(e["group"], e["framework"], e["mode"]): e for e in result["phases"]}
    assert set(got) == {
        ("keras-torch", "keras-torch", "fit"),
        ("keras-torch", "torch", "eager"),
        ("keras-torch", "torch", "compile"),
    }
    assert all(e["status"] == "ok" and e["floor_seconds"] > 0 for e in got.values())  # the floor: the parent's peak
    assert "| keras-torch-fit b64 [keras-torch] |" in (tmp_path / "bench.md").read_text()


def test_modes_whose_phases_are_not_the_epochs_pieces_say_so():
    assert "inside the weight-gradient GEMMs" in phases.note("numpy", "fast")  # update may read negative
    assert "lax.scan" in phases.note("jax", "epoch-scan") and "tf.function" in phases.note("tensorflow", "jit")
    assert phases.note("numpy", "plain") == phases.note("torch", "eager") == ""
