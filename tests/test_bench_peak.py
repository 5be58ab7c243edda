"""bench/peak.py: the matmul peak measures the MLP's own products, with NumPy and torch.

.venv/bin/python -m pytest tests/test_bench_peak.py -x -q
"""

from __future__ import annotations

import numpy as np
import pytest

from backprop_bench.bench import peak
from backprop_bench.bench.cells import SIZES
from backprop_bench.core.specs import MLPSpec


def test_peak_shapes_are_one_step_of_needed_work():
    spec = MLPSpec(SIZES)
    assert spec.needed_flops(60_000) / 1e9 == pytest.approx(27.26, abs=0.01)
    for batch in (64, 256):
        step = sum(2.0 * m * k * n for _, m, k, n, _, _ in peak.mlp_matmul_shapes(SIZES, batch))
        assert step == spec.needed_flops(batch)


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True)])
def test_peak_products_compute_the_mlp_products(ta, tb):
    rng = np.random.default_rng(1)
    a, b, out = peak.operands(5, 7, 3, ta, tb, rng)
    assert a.shape == (5, 7) and b.shape == (7, 3) and out.shape == (5, 3)
    assert a.flags.c_contiguous != ta and b.flags.c_contiguous != tb  # transposed = a .T view
    peak.numpy_mm(a, b, out)()
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    if peak.versions()["torch"] is not None:  # torch's product on the same (transposed) views
        out[:] = 0
        peak.torch_mm(a, b, out)()
        np.testing.assert_allclose(out, a @ b, rtol=1e-5)


def test_peak_report_has_every_mlp_shape():
    got = peak.measure_peak("numpy", SIZES, [16], square=32, repeats=2, min_seconds=0.001)
    assert [s["name"] for s in got["shapes"]] == [n for n, *_ in peak.mlp_matmul_shapes(SIZES, 16)]
    assert all(s["median"] > 0 for s in got["shapes"]) and got["mlp_b16"] > 0 and got["square"]["n"] == 32
    assert "threads" not in got  # torch's thread count only when torch is measured


def test_the_ceiling_is_the_fastest_library_per_batch():
    peaks = [
        {"library": "numpy", "mlp_b64": 30.0, "mlp_b256": 50.0},
        {"library": "torch", "mlp_b64": 40.0, "mlp_b256": 45.0},
    ]
    assert peak.ceiling(peaks, [64, 256]) == {
        64: {"gflops": 40.0, "library": "torch"},
        256: {"gflops": 50.0, "library": "numpy"},
    }


def test_time_gflops_loops_until_the_clock_resolves():
    calls = []
    samples = peak.time_gflops(lambda: calls.append(1), flops=1e6, repeats=3, min_seconds=0.001)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert len(calls) > 4  # one untimed call, the calibration loops, then 3 samples


def test_machine_description_names_cpu_cores_and_blas():
    m = peak.machine()
    assert m["cpu"] and m["cores_usable"] >= 1
    assert peak.versions()["numpy"] == np.__version__
    assert any(b["internal_api"] for b in peak.blas_info())
