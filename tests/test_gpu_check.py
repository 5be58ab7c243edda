"""scripts/gpu_check.sh (make gpu-check) on a machine without a GPU: it says so and exits 2
before running anything else; the GPU tests it runs are the ones `pytest -m gpu` selects;
its list of cuda-path tests names real tests; its last look at the results flags what failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # the CUDA runtime of every framework then sees no device


def gpu_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script as `make gpu-check` runs it, with this Python and PYTHONPATH=src, no install."""
    full = {**os.environ, "BB_PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_without_a_gpu_it_says_so_and_exits_2_having_run_nothing_else(tmp_path):
    out = tmp_path / "check"
    proc = gpu_check(tmp_path, str(out), **NO_GPU)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no framework here sees a CUDA GPU" in proc.stdout
    for framework in ("numpy", "torch", "tensorflow", "keras", "jax"):  # each one listed, installed or not
        assert re.search(rf"^{framework}: (not installed|no cuda)", proc.stdout, re.M), proc.stdout
    summary = (out / "summary.md").read_text()
    assert "no framework here sees a CUDA GPU" in summary and "| probe | ok |" in summary
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.log", "summary.md", "work"]  # no tests, study, bench


def test_an_unknown_device_is_named(tmp_path):
    proc = gpu_check(tmp_path, str(tmp_path / "check"), BB_GPU_CHECK_DEVICE="tpu")
    assert proc.returncode == 2
    assert "BB_GPU_CHECK_DEVICE=tpu: expected cuda or cpu" in proc.stderr


def gpu_modules() -> set[str]:
    """The test modules the script hands to `pytest -m gpu` (grep for the decorator line)."""
    found = subprocess.run(
        ["grep", "-lx", "@pytest.mark.gpu", *sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
    )
    return set(found.stdout.split())


@pytest.mark.slow
def test_the_gpu_marker_collects_the_gpu_tests_all_in_the_modules_the_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    for expected in (
        "tests/test_numpy_backend.py::test_cuda_matches_cpu[plain]",
        "tests/test_torch_backend.py::test_cuda_training_matches_cpu[parallel]",
        "tests/test_jax_backend.py::test_cuda_runs_on_the_gpu",
        "tests/test_training_parity.py::test_feature_parity_float64_on_cuda[torch-sequential-all]",
    ):
        assert expected in ids
    assert {i.split("::")[0].removeprefix("tests/") for i in ids} <= gpu_modules()


def test_every_cuda_test_the_script_names_exists():
    listed = re.search(r"^CUDA_TESTS=\((.*?)^\)", SCRIPT.read_text(), re.S | re.M).group(1).split()
    assert len(listed) >= 5
    for node in listed:
        module, name = node.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / module).read_text(), re.M), node


def results(tmp_path: Path, device: str = "cuda") -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check_results.py"), str(tmp_path), str(tmp_path), device],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_the_results_check_flags_unfinished_study_rows_and_bench_cells_that_did_not_run(tmp_path):
    (tmp_path / "junit-gpu.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "comparison.csv").write_text(
        "framework,strategy,device,mode,status,note\n"
        "torch,parallel,cuda,controlled,finished,\n"
        "jax,sequential,cuda,native,failed,seed 1: Diverged\n"
    )
    cells = [
        {"cell": "torch-eager-parallel-b64-cuda", "device": "cuda", "status": "ok"},
        {"cell": "torch-compile-parallel-b64-cuda", "device": "cuda", "status": "failed", "reason": "run: boom"},
        {"cell": "torch-eager-parallel-b64-cpu", "device": "cpu", "status": "skipped"},
    ]
    (tmp_path / "bench.json").write_text(json.dumps({"cells": cells}))
    assert (lines := results(tmp_path)) == [
        "INFO junit-gpu.xml: 5 tests, 1 failed, 0 errors, 2 skipped",
        "FAIL study jax-sequential-cuda-native: failed seed 1: Diverged",
        "INFO bench: 1 of 2 cuda cells ran",
        "FAIL bench torch-compile-parallel-b64-cuda: failed: run: boom",
    ]
    assert results(tmp_path / "reports") == []  # nothing there yet: nothing to say
    assert results(tmp_path, "cpu")[:2] == ["INFO junit-gpu.xml: 5 tests, 1 failed, 0 errors, 2 skipped", lines[1]]


def test_on_cuda_every_gpu_test_skipped_is_a_failure(tmp_path):
    (tmp_path / "junit-gpu.xml").write_text('<testsuite name="pytest" tests="3" failures="0" errors="0" skipped="3"/>')
    assert results(tmp_path)[1] == "FAIL tests-gpu: all 3 GPU tests skipped on a machine with a GPU"
    assert len(results(tmp_path, "cpu")) == 1  # a rehearsal on the CPU skips them all, rightly
