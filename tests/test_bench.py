"""The benchmark's plumbing and accounting, on tiny sizes. No timing is asserted here.

    .venv/bin/python -m pytest tests/test_bench.py -x -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from backprop_bench import bench
from backprop_bench.model import MLPSpec

# Tiny: 512 synthetic rows, one timed round, a 64^2 "peak". --keep-blas-env: tests never
# touch the OpenBLAS variables (nor re-exec the test process).
TINY = ["--data", "synthetic", "--samples", "512", "--rounds", "1", "--peak-size", "64",
        "--peak-repeats", "1", "--peak-seconds", "0.001", "--keep-blas-env"]


def test_gflop_accounting_matches_the_spec():
    spec = MLPSpec(bench.SIZES)
    assert spec.needed_flops(60_000) / 1e9 == pytest.approx(27.26, abs=0.01)
    # The products the peak measures are exactly one step's needed work.
    for batch in (64, 256):
        step = sum(2.0 * m * k * n for _, m, k, n, _, _ in bench.mlp_matmul_shapes(bench.SIZES, batch))
        assert step == spec.needed_flops(batch)
    cell = bench.Cell("numpy", "plain", False, 1, "parallel", 256, "cpu", status="ok", epoch_seconds=[0.5, 0.4, 0.6])
    (row,) = bench.cell_rows([cell], spec, 60_000, numpy_peak=100.0)
    assert row["median_epoch_seconds"] == 0.5 and row["min_epoch_seconds"] == 0.4
    assert row["samples_per_second"] == pytest.approx(120_000)
    assert row["gflops"] == pytest.approx(spec.needed_flops(60_000) / 1e9 / 0.5)
    assert row["peak_fraction"] == pytest.approx(row["gflops"] / 100.0)


def test_numpy_bench_writes_every_requested_cell(tmp_path):
    out = tmp_path / "reports"
    assert bench.main(TINY + ["--frameworks", "numpy", "--batches", "32,128", "--devices", "cpu",
                              "--out-dir", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    expected = {f"numpy-plain-{s}-b{b}-cpu" for s in ("parallel", "sequential") for b in (32, 128)}
    assert {r["cell"] for r in result["cells"]} == expected
    for r in result["cells"]:
        assert r["status"] == "ok", r
        assert len(r["epoch_seconds"]) == 1 and r["first_epoch_seconds"] > 0
        assert r["gflops"] == pytest.approx(result["gflop_per_epoch"] / r["median_epoch_seconds"])
        assert r["cell"] in md
    seq = next(r for r in result["cells"] if r["cell"] == "numpy-plain-sequential-b32-cpu")
    par = next(r for r in result["cells"] if r["cell"] == "numpy-plain-parallel-b32-cpu")
    assert seq["seq_over_par"] == pytest.approx(seq["epoch_seconds"][0] / par["epoch_seconds"][0])
    assert result["data"]["source"] == "synthetic" and result["data"]["n"] == 512
    assert result["gflop_per_epoch"] == pytest.approx(MLPSpec(bench.SIZES).needed_flops(512) / 1e9)
    assert result["peak"]["libraries"][0]["library"] == "numpy"
    assert set(result["peak"]["libraries"][0]) >= {"square", "square_after", "mlp_b32", "mlp_b128"}
    assert result["versions"]["numpy"] == np.__version__
    assert any(b["internal_api"] for b in result["blas"])
    assert result["blas_env"]["keep_blas_env"] is True
    assert "## Targets" in md and "torch peak not measured" in md
    assert not list(out.glob(".*.tmp")), "temp files left behind"


def test_a_mode_that_cannot_run_is_a_row_with_its_reason(tmp_path, monkeypatch):
    modes = bench.framework_modes([])
    modes["numpy"] = modes["numpy"] + [("compile", True, 1)]  # numpy has nothing to compile
    monkeypatch.setattr(bench, "framework_modes", lambda spe: modes)
    out = tmp_path / "r"
    bench.main(TINY + ["--frameworks", "numpy", "--batches", "64", "--strategies", "parallel",
                       "--devices", "cpu,cuda", "--out-dir", str(out)])
    result = json.loads((out / "bench.json").read_text())
    rows = {r["cell"]: r for r in result["cells"]}
    assert rows["numpy-plain-parallel-b64-cpu"]["status"] == "ok"
    failed = rows["numpy-compile-parallel-b64-cpu"]
    assert failed["status"] == "failed" and "compile" in failed["reason"] and "ValueError" in failed["reason"]
    md = (out / "bench.md").read_text()
    assert "numpy-compile-parallel-b64-cpu: build: ValueError" in md
    # No CuPy / GPU here: the cuda cells are skipped, said so, never run on the CPU instead.
    gpu = [r for r in result["cells"] if r["device"] == "cuda" and r["mode"] == "plain"]
    assert gpu and all(r["status"] in ("skipped", "ok") for r in gpu)
    if all(r["status"] == "skipped" for r in gpu):
        assert "no GPU available: GPU cells not run" in md
        assert all("DeviceUnavailable" in r["reason"] for r in gpu)


def test_numpy_only_bench_never_imports_torch_or_tensorflow(tmp_path):
    code = (
        "import sys; from backprop_bench import bench; "
        f"bench.main({TINY + ['--frameworks', 'numpy', '--batches', '64', '--devices', 'cpu', '--out-dir', str(tmp_path)]!r}); "
        "loaded = sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules); "
        "print('LOADED', loaded)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert (tmp_path / "bench.json").is_file()


class _LogBackend:
    """Records the order in which the bench runs epochs."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def synchronize(self):
        pass

    def train_epoch(self, order, batch_size):
        self.log.append(self.name)
        return 1.0


def test_cells_are_interleaved_in_rounds_after_a_warm_up():
    cells = bench.plan_cells(["numpy"], ["parallel", "sequential"], [64, 256], ["cpu"], [])
    log: list[str] = []
    made = {c.name: _LogBackend(c.name, log) for c in cells}
    orders = [np.arange(8)] * 4  # warm-up + 3 rounds
    bench.run_cells(cells, made, orders)
    names = [c.name for c in cells]
    n = len(names)
    assert log[:n] == names  # the warm-up epoch of every cell comes first
    rounds = [log[n * (r + 1): n * (r + 2)] for r in range(3)]
    for r, got in enumerate(rounds):
        assert got == names[r:] + names[:r]  # every cell once per round, start rotated
    assert all(c.status == "ok" and len(c.epoch_seconds) == 3 for c in cells)


def test_a_cell_failing_mid_run_drops_out_and_says_why():
    cells = bench.plan_cells(["numpy"], ["parallel"], [64, 256], ["cpu"], [])
    log: list[str] = []
    good, bad = _LogBackend("good", log), _LogBackend("bad", log)
    bad.train_epoch = lambda order, batch_size: (_ for _ in ()).throw(RuntimeError("XLA is not available"))
    bench.run_cells(cells, {cells[0].name: good, cells[1].name: bad}, [np.arange(8)] * 3)
    assert cells[0].status == "ok" and len(cells[0].epoch_seconds) == 2
    assert cells[1].status == "failed" and "RuntimeError: XLA is not available" in cells[1].reason


def _row(framework, mode, strategy, batch, seconds, fraction=None):
    return {"framework": framework, "mode": mode, "strategy": strategy, "batch": batch, "device": "cpu",
            "median_epoch_seconds": seconds, "samples_per_second": 60_000 / seconds,
            "gflops": 27.26 / seconds, "peak_fraction": fraction}


def test_targets_are_judged_from_the_rows():
    rows = [
        _row("numpy", "plain", "parallel", 256, 0.40, fraction=0.72),
        _row("numpy", "plain", "parallel", 64, 0.60, fraction=0.45) | {"vs_torch_eager": 1.40 / 0.60},
        _row("numpy", "plain", "sequential", 64, 0.72) | {"seq_over_par": 1.2},
        _row("torch", "eager", "parallel", 64, 1.40),
        _row("torch", "compile", "parallel", 64, 1.00),
    ]
    got = {t["target"]: t for t in bench.evaluate_targets(rows)}
    by_start = lambda s: next(t for k, t in got.items() if k.startswith(s))  # noqa: E731
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


def test_backends_are_judged_against_the_stock_idiom_and_numpy_against_its_ceiling():
    rows = [
        _row("numpy", "plain", "parallel", 256, 0.40, fraction=0.60),
        _row("torch", "eager", "parallel", 64, 1.40),
        _row("torch", "compile", "parallel", 64, 1.30),
        _row("torch", "stock-compile", "parallel", 64, 1.00),
        _row("keras", "fit", "parallel", 256, 1.0),
        _row("keras", "stock-fit", "parallel", 256, 1.1),
    ]
    got = {t["target"]: t for t in bench.evaluate_targets(rows, matmul_ceiling={256: 0.75})}
    by_start = lambda s: next(t for k, t in got.items() if k.startswith(s))  # noqa: E731
    torch_best = by_start("torch: backend's fastest")
    assert torch_best["met"] is False and "1.30x: compile against stock-compile (b64" in torch_best["detail"]
    assert by_start("keras: backend's fastest")["met"] is True and "1.00x: fit against fit" in by_start("keras: backend's fastest")["detail"]
    numpy256 = by_start("NumPy parallel >= 70%")
    assert numpy256["met"] is False and "reach 75.0% (80% of that ceiling)" in numpy256["detail"]


def test_compared_cells_run_next_to_each_other():
    cells = bench.plan_cells(["numpy", "torch"], ["parallel", "sequential"], [64], ["cpu"], [], stock=False)
    assert [c.name for c in cells] == [
        "numpy-plain-parallel-b64-cpu", "numpy-plain-sequential-b64-cpu",
        "torch-eager-parallel-b64-cpu", "torch-eager-sequential-b64-cpu",
        "torch-compile-parallel-b64-cpu", "torch-compile-sequential-b64-cpu",
    ]


def test_stock_cells_are_parallel_only_and_can_be_left_out():
    cells = bench.plan_cells(["torch", "keras"], ["parallel", "sequential"], [64], ["cpu"], [16])
    stock = [c for c in cells if bench.is_stock(c.mode)]
    assert {c.mode for c in stock} == {"stock-eager", "stock-compile", "stock-fit", "stock-jit-spe16"}
    assert all(c.strategy == "parallel" for c in stock)
    assert next(c for c in stock if c.mode == "stock-jit-spe16").steps_per_execution == 16
    assert not [c for c in bench.plan_cells(["torch"], ["parallel"], [64], ["cpu"], [], stock=False)
                if bench.is_stock(c.mode)]


def test_no_garbage_collection_inside_the_clock():
    import gc

    cells = bench.plan_cells(["numpy"], ["parallel"], [64, 256], ["cpu"], [])
    seen = []
    good, bad = _LogBackend("good", []), _LogBackend("bad", [])
    good.train_epoch = lambda order, batch_size: seen.append(gc.isenabled()) or 1.0
    bad.train_epoch = lambda order, batch_size: (_ for _ in ()).throw(RuntimeError("boom"))
    bench.run_cells(cells, {cells[0].name: good, cells[1].name: bad}, [np.arange(8)] * 3)
    assert seen == [False, False, False]
    assert gc.isenabled(), "the bench must give garbage collection back, also after a failed epoch"


def test_a_diverged_cell_stops_and_says_so():
    cells = bench.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])
    nan = _LogBackend("nan", [])
    nan.train_epoch = lambda order, batch_size: float("nan")
    bench.run_cells(cells, {cells[0].name: nan}, [np.arange(8)] * 3)
    assert cells[0].status == "failed" and "FloatingPointError" in cells[0].reason and "diverged" in cells[0].reason


def test_ratios_pair_the_epochs_of_each_round():
    """One lucky parallel epoch must not make sequential look slow: ratios are per round."""
    spec = MLPSpec(bench.SIZES)
    cells = [
        bench.Cell("torch", "eager", False, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[1.0, 1.0, 0.6]),
        bench.Cell("torch", "eager", False, 1, "sequential", 64, "cpu", status="ok", epoch_seconds=[1.0, 1.1, 1.0]),
        bench.Cell("numpy", "plain", False, 1, "parallel", 64, "cpu", status="ok", epoch_seconds=[0.5, 0.4, 0.3]),
    ]
    rows = {r["cell"]: r for r in bench.cell_rows(cells, spec, 60_000, numpy_peak=100.0)}
    seq = rows["torch-eager-sequential-b64-cpu"]
    assert seq["seq_over_par"] == pytest.approx(1.1)  # median of 1.0, 1.1, 1.667; min/min would say 1.67
    assert rows["numpy-plain-parallel-b64-cpu"]["vs_torch_eager"] == pytest.approx(2.0)  # 2.0, 2.5, 2.0
    assert bench.paired_ratio([2.0, 4.0], [1.0, 1.0]) == pytest.approx(3.0)


def test_blas_env_is_removed_from_a_copy_only():
    environ = {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    env, removed = bench.without_blas_env(environ)
    assert removed == {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    assert env == {"PATH": "/bin"}
    assert "OPENBLAS_CORETYPE" in environ  # the caller's mapping is untouched
    assert bench.without_blas_env({"PATH": "/bin"}) == ({"PATH": "/bin"}, {})


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--frameworks", "numpy,jax"], "--frameworks: jax"),
        (["--batches", "64,big"], "--batches"),
        (["--keras-spe", "16,x"], "--keras-spe"),
        (["--devices", "tpu"], "--devices: tpu"),
        (["--samples", "32", "--batches", "64"], "--samples"),
    ],
)
def test_bad_options_name_the_option(argv, says, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert says in capsys.readouterr().err


def test_fashion_mnist_required_but_missing_says_where(tmp_path):
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte.gz"):
        bench.load_train_set("fashion-mnist", 100, 0, data_dir=tmp_path)


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True)])
def test_peak_products_compute_the_mlp_products(ta, tb):
    rng = np.random.default_rng(1)
    a, b, out = bench._operands(5, 7, 3, ta, tb, rng)
    bench.numpy_mm(a, b, out)()
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    if bench.versions()["torch"] is not None:  # torch's product on the same (transposed) views
        out[:] = 0
        bench.torch_mm(a, b, out)()
        np.testing.assert_allclose(out, a @ b, rtol=1e-5)


def test_peak_report_has_every_mlp_shape():
    peak = bench.measure_peak("numpy", bench.SIZES, [16], square=32, repeats=2, min_seconds=0.001)
    assert [s["name"] for s in peak["shapes"]] == [n for n, *_ in bench.mlp_matmul_shapes(bench.SIZES, 16)]
    assert all(s["median"] > 0 for s in peak["shapes"]) and peak["mlp_b16"] > 0 and peak["square"]["n"] == 32


def test_an_interrupted_run_keeps_the_rounds_it_finished():
    cells = bench.plan_cells(["numpy"], ["parallel"], [64, 256], ["cpu"], [])
    log: list[str] = []
    first, second = _LogBackend("a", log), _LogBackend("b", log)

    def stop_in_round_two(order, batch_size):
        log.append("b")
        if log.count("b") == 3:  # warm-up, round 1, then Ctrl-C inside round 2
            raise KeyboardInterrupt
        return 1.0

    second.train_epoch = stop_in_round_two
    done = bench.run_cells(cells, {cells[0].name: first, cells[1].name: second}, [np.arange(8)] * 4)
    assert done == 1
    assert [c.status for c in cells] == ["ok", "ok"]
    assert len(cells[1].epoch_seconds) == 1
