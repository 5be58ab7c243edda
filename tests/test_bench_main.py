"""bench/__main__.py: options, the OpenBLAS environment, and whole NumPy-only runs on tiny
sizes (the report's plumbing and accounting; no timing is asserted).

    .venv/bin/python -m pytest tests/test_bench_main.py -x -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from backprop_bench.backends import FRAMEWORKS
from backprop_bench.bench import __main__ as bench
from backprop_bench.bench import cells
from backprop_bench.bench.cells import SIZES
from backprop_bench.core.specs import MLPSpec

# Tiny: 512 synthetic rows, one timed round, a 64^2 "peak", every cell of the grid asked for.
# --keep-blas-env: tests never touch the OpenBLAS variables (nor re-exec the test process);
# --no-tracking: no mlflow.db (tests/test_tracking_bench.py records benches); --no-phases: the phases
# have their own tests (tests/test_bench_phases.py).
TINY = [
    "--cells",
    "full",
    "--data",
    "synthetic",
    "--samples",
    "512",
    "--rounds",
    "1",
    "--peak-size",
    "64",
    "--peak-repeats",
    "1",
    "--peak-seconds",
    "0.001",
    "--keep-blas-env",
    "--no-tracking",
    "--no-phases",
]
FRAMEWORK_MODULES = "sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)"


def _run_main_in_a_process(argv: list[str]) -> subprocess.CompletedProcess:
    """main(argv) in a fresh interpreter, which then prints LOADED and the frameworks it imported."""
    code = (
        f"import sys; from backprop_bench.bench.__main__ import main; rc = main({argv!r}); "
        f"print('LOADED', {FRAMEWORK_MODULES}); sys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_numpy_bench_writes_every_requested_cell(tmp_path):
    out = tmp_path / "reports"
    assert (
        bench.main(TINY + ["--frameworks", "numpy", "--batches", "32,128", "--devices", "cpu", "--out-dir", str(out)])
        == 0
    )
    result = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    expected = {
        f"numpy-{m}-{s}-b{b}-cpu" for m in ("plain", "fast") for s in ("parallel", "sequential") for b in (32, 128)
    }
    assert {r["cell"] for r in result["cells"]} == expected
    for r in result["cells"]:
        assert r["status"] == "ok", r
        assert len(r["epoch_seconds"]) == 1 and r["first_epoch_seconds"] > 0
        assert r["gflops"] == pytest.approx(result["gflop_per_epoch"] / r["median_epoch_seconds"])
        assert 0 < r["ceiling_fraction"] and r["vs_framework_best"] >= 1.0
        assert r["cell"] in md
    seq = next(r for r in result["cells"] if r["cell"] == "numpy-plain-sequential-b32-cpu")
    par = next(r for r in result["cells"] if r["cell"] == "numpy-plain-parallel-b32-cpu")
    assert seq["seq_over_par"] == pytest.approx(seq["epoch_seconds"][0] / par["epoch_seconds"][0])
    assert result["data"]["source"] == "synthetic" and result["data"]["n"] == 512
    assert result["gflop_per_epoch"] == pytest.approx(MLPSpec(SIZES).needed_flops(512) / 1e9)
    assert result["peak"]["libraries"][0]["library"] == "numpy"
    assert set(result["peak"]["libraries"][0]) >= {"square", "square_after", "mlp_b32", "mlp_b128"}
    assert set(result["peak"]["ceiling"]) == {"32", "128"}
    assert result["versions"]["numpy"] == np.__version__
    assert any(b["internal_api"] for b in result["blas"])
    assert result["blas_env"]["keep_blas_env"] is True
    assert {"numpy-plain", "numpy-fast"} <= set(result["backend_info"])
    assert result["backend_info"]["numpy-fast"]["compile"] != "off"
    assert "## The project's goals" in md and "torch peak not measured" in md and "Matmul floor" in md
    assert "numpy-fast" in md and "named numpy-plain before" in md  # the renamed cell is explained
    assert "issue" not in md.lower() and "target" not in md.lower()
    assert not list(out.glob(".*.tmp")), "temp files left behind"


def test_a_mode_that_cannot_run_is_a_row_with_its_reason(tmp_path, monkeypatch):
    modes = cells.framework_modes([])
    modes["numpy"] = modes["numpy"] + [("stock-fit", False, 1)]  # numpy has no stock idiom
    monkeypatch.setattr(cells, "framework_modes", lambda spe: modes)
    out = tmp_path / "r"
    bench.main(
        TINY
        + [
            "--frameworks",
            "numpy",
            "--batches",
            "64",
            "--strategies",
            "parallel",
            "--devices",
            "cpu,cuda",
            "--out-dir",
            str(out),
        ]
    )
    result = json.loads((out / "bench.json").read_text())
    rows = {r["cell"]: r for r in result["cells"]}
    assert rows["numpy-plain-parallel-b64-cpu"]["status"] == "ok"
    assert rows["numpy-fast-parallel-b64-cpu"]["status"] == "ok"
    failed = rows["numpy-stock-fit-parallel-b64-cpu"]
    assert failed["status"] == "failed" and "no stock model for framework='numpy'" in failed["reason"]
    assert "ValueError" in failed["reason"]
    md = (out / "bench.md").read_text()
    assert "numpy-stock-fit-parallel-b64-cpu: build: ValueError" in md
    # No CuPy / GPU here: the cuda cells are skipped, said so, never run on the CPU instead.
    gpu = [r for r in result["cells"] if r["device"] == "cuda" and r["mode"] == "plain"]
    assert gpu and all(r["status"] in ("skipped", "ok") for r in gpu)
    if all(r["status"] == "skipped" for r in gpu):
        assert "no GPU available: GPU cells not run" in md
        assert all("DeviceUnavailable" in r["reason"] for r in gpu)


def test_numpy_only_bench_never_imports_torch_or_tensorflow(tmp_path):
    argv = TINY + ["--frameworks", "numpy", "--batches", "64", "--devices", "cpu", "--out-dir", str(tmp_path)]
    done = _run_main_in_a_process(argv)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert (tmp_path / "bench.json").is_file()


def test_a_jax_bench_runs_its_three_modes_without_torch_or_tensorflow(tmp_path):
    argv = TINY + ["--frameworks", "jax", "--batches", "64", "--devices", "cpu", "--out-dir", str(tmp_path)]
    done = _run_main_in_a_process(argv)
    assert done.returncode == 0, done.stderr
    assert "LOADED ['jax']" in done.stdout
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {r["cell"]: r["status"] for r in result["cells"]} == {
        f"jax-{mode}-b64-cpu": "ok"
        for mode in ("step-jit-parallel", "step-jit-sequential", "epoch-scan-parallel", "epoch-scan-sequential")
        + ("stock-jit-parallel",)
    }
    assert result["backend_info"]["jax-epoch-scan"]["compile"] == "jit epoch (lax.scan)"
    assert "flax" in result["backend_info"]["jax-stock-jit"]["stock"]
    assert result["versions"]["flax"] and result["versions"]["optax"]
    goals = {g["goal"]: g["met"] for g in result["goals"]}
    assert any(goal.startswith("jax: backend's fastest mode") and met is not None for goal, met in goals.items())


def test_importing_any_bench_module_imports_no_framework():
    modules = ", ".join(f"backprop_bench.bench.{m}" for m in ("__main__", "cells", "peak", "report", "stock"))
    code = f"import sys, {modules}; print({FRAMEWORK_MODULES})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_runs_the_bench(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backprop_bench.bench",
            *TINY,
            "--frameworks",
            "numpy",
            "--batches",
            "64",
            "--strategies",
            "parallel",
            "--devices",
            "cpu",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "# Backprop bench" in done.stdout and (tmp_path / "bench.md").is_file()


def test_blas_env_is_removed_from_a_copy_only():
    environ = {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    env, removed = bench.without_blas_env(environ)
    assert removed == {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    assert env == {"PATH": "/bin"}
    assert "OPENBLAS_CORETYPE" in environ  # the caller's mapping is untouched
    assert bench.without_blas_env({"PATH": "/bin"}) == ({"PATH": "/bin"}, {})


def test_the_re_executed_bench_reports_what_it_unset(monkeypatch):
    monkeypatch.setenv(bench._UNSET_MARK, json.dumps({"OPENBLAS_CORETYPE": "Haswell"}))
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    got = bench.blas_env_report(kept=False)
    assert got["unset_by_bench"] == {"OPENBLAS_CORETYPE": "Haswell"}
    assert got["in_effect"]["OPENBLAS_CORETYPE"] is None and got["keep_blas_env"] is False


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--frameworks", "numpy,mxnet"], "--frameworks: mxnet"),
        (["--batches", "64,big"], "--batches"),
        (["--keras-spe", "16,x"], "--keras-spe"),
        (["--devices", "tpu"], "--devices: tpu"),
        (["--samples", "32", "--batches", "64"], "--samples"),
        (["--data", "mnist"], "--data"),
        (["--child", "keras"], "--child"),
        (["--cells", "all"], "--cells"),  # Keras on TensorFlow is the main group's
    ],
)
def test_bad_options_name_the_option(argv, says, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert says in capsys.readouterr().err


def test_default_options_are_the_default_cells_of_the_whole_grid():
    args = bench.parse_args([])
    assert args.frameworks == list(FRAMEWORKS) and "jax" in args.frameworks
    assert args.strategies == ["parallel", "sequential"] and args.batches == [64, 256]
    assert args.keras_spe == [16] and args.stock is True and args.cells == "default" and args.rounds == 3
    assert bench.parse_args(["--cells", "full"]).rounds == 5
    assert bench.parse_args(["--cells", "full", "--rounds", "2"]).rounds == 2
    assert str(args.params) == "params.yaml" and args.data_dir is None and args.data == "auto"


@pytest.mark.slow  # a child bench compiles Keras's and JAX's steps: ~30 s on 2 cores
def test_keras_jax_runs_beside_jax_in_a_child_and_is_merged_into_one_report(tmp_path):
    argv = TINY + ["--rounds", "2", "--frameworks", "keras-jax,jax,numpy", "--batches", "64"]
    argv += ["--strategies", "parallel", "--devices", "cpu", "--out-dir", str(tmp_path)]
    done = _run_main_in_a_process(argv)
    assert done.returncode == 0, done.stderr
    assert "LOADED ['jax']" in done.stdout  # Keras ran in the child only: the parent never loaded it
    assert "bench: group keras-jax (keras-jax, jax) in a child process" in done.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert [(g["group"], g["frameworks"], g["ran"], g["rounds"], g["error"]) for g in result["groups"]] == [
        ("main", ["jax", "numpy"], True, 2, None),
        ("keras-jax", ["keras-jax", "jax"], True, 2, None),
    ]
    got = {(r["group"], r["cell"]): r for r in result["cells"]}
    assert all(r["status"] == "ok" and len(r["epoch_seconds"]) == 2 for r in got.values())
    jax = {f"jax-{m}-parallel-b64-cpu" for m in ("step-jit", "epoch-scan", "stock-jit")}
    numpy = {f"numpy-{m}-parallel-b64-cpu" for m in ("plain", "fast")}
    keras = {f"keras-jax-{m}-parallel-b64-cpu" for m in ("fit", "fit-spe16")}
    assert set(got) == {("main", c) for c in jax | numpy} | {("keras-jax", c) for c in jax | keras}
    child_jax = got[("keras-jax", "jax-step-jit-parallel-b64-cpu")]
    assert child_jax["peak_fraction"] > 0 and child_jax["framework_best"].startswith("jax-")  # the parent's peak
    assert result["backend_info"]["keras-jax-fit-spe16"]["steps_per_execution"] == "16"
    (cost,) = result["keras_costs"]
    assert (cost["keras"], cost["backend"], cost["group"]) == ("keras-jax", "jax", "keras-jax")
    fit = got[("keras-jax", "keras-jax-fit-parallel-b64-cpu")]["epoch_seconds"]
    ratios = [a / b for a, b in zip(fit, child_jax["epoch_seconds"])]
    assert cost["plain"]["median"] == pytest.approx(sum(ratios) / 2)  # the median of two rounds' ratios
    assert (cost["plain"]["min"], cost["plain"]["max"]) == pytest.approx((min(ratios), max(ratios)))
    md = (tmp_path / "bench.md").read_text()
    assert "## Process groups" in md and "### Group keras-jax: keras-jax, jax (a child process of its own)" in md
    assert "## What Keras costs over its own backend" in md and "| keras-jax | jax | keras-jax | cpu |" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]  # the child wrote elsewhere


def test_a_failed_child_is_reported_and_the_bench_exits_non_zero(tmp_path, monkeypatch, capsys):
    made = bench.child_argv
    monkeypatch.setattr(bench, "child_argv", lambda *a: made(*a) + ["--rounds", "0"])  # the child refuses it
    argv = TINY + ["--frameworks", "numpy,keras-torch", "--batches", "64", "--strategies", "parallel"]
    assert bench.main(argv + ["--devices", "cpu", "--out-dir", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "bench.json").read_text())
    main, child = result["groups"]
    assert main["group"] == "main" and main["error"] is None
    assert child["group"] == "keras-torch" and child["frameworks"] == ["keras-torch", "torch"]
    assert "status 2" in child["error"] and "need --rounds >= 1" in child["error"]
    assert {r["group"] for r in result["cells"]} == {"main"}  # what the parent measured is kept
    assert result["rounds"] == 1  # the groups that ran
    md = (tmp_path / "bench.md").read_text()
    assert "- keras-torch (a child process of its own): keras-torch, torch: **FAILED**" in md
    assert "need --rounds >= 1" in md
    assert "bench: group keras-torch failed" in capsys.readouterr().err


def test_a_child_gets_the_parents_options_and_its_own_group(tmp_path):
    args = bench.parse_args(["--batches", "32", "--frameworks", "numpy", "--samples", "1000"])
    child = bench.parse_args(bench.child_argv(args, "keras-jax", ["keras-jax", "jax"], tmp_path))
    assert child.frameworks == ["keras-jax", "jax"] and child.out_dir == tmp_path and child.child == "keras-jax"
    assert child.batches == [32] and child.samples == 1000 and args.child is None
