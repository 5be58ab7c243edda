"""numpy_gemm.py: NumPy's own BLAS GEMM, c -= a^T b in place, against numpy.matmul."""

import ctypes
import ctypes.util

import numpy as np
import pytest

from backprop_bench.backends import numpy_gemm
from backprop_bench.backends.numpy_gemm import Gemm

NUMPY_BLAS = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]


def gemm(dtype: str) -> Gemm:
    found = numpy_gemm.numpy_gemm(dtype)
    assert found is not None, f"no {dtype} GEMM found in NumPy's BLAS ({NUMPY_BLAS})"
    return found


@pytest.mark.skipif("openblas" not in NUMPY_BLAS, reason=f"NumPy's BLAS is {NUMPY_BLAS}, not OpenBLAS")
def test_numpy_wheels_openblas_has_it_for_both_float_types():
    # pip's NumPy links scipy-openblas: the fast path's SGD step must not silently fall back
    assert gemm("float32").dtype == np.float32 and gemm("float64").dtype == np.float64
    assert "sgemm" in gemm("float32").symbol and "dgemm" in gemm("float64").symbol


def test_no_gemm_for_other_types():
    assert numpy_gemm.numpy_gemm("float16") is None and numpy_gemm.numpy_gemm("int64") is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_minus_a_transposed_b_in_every_layout(dtype):
    rng = np.random.default_rng(0)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-13, "atol": 1e-13}
    a_big = rng.standard_normal((40, 30)).astype(dtype)  # views with a leading dimension past their width
    b_c = rng.standard_normal((33, 9)).astype(dtype)
    for a in (a_big[:33, :21], a_big[:33], np.ascontiguousarray(a_big[:33, :21].T).T):  # rows; a transposed view
        for b in (b_c, np.ascontiguousarray(b_c.T).T, b_c[:, :7]):
            c_big = rng.standard_normal((a.shape[1] + 2, 12)).astype(dtype)
            c = c_big[: a.shape[1], : b.shape[1]]  # a view: its rows are longer than its width
            expected, untouched = c - a.T @ b, c_big.copy()
            gemm(dtype).minus_at_b(a, b, c)()
            np.testing.assert_allclose(c, expected, **tol)
            mask = np.ones(c_big.shape, bool)
            mask[: a.shape[1], : b.shape[1]] = False
            np.testing.assert_array_equal(c_big[mask], untouched[mask])  # nothing outside the view


def test_the_call_is_exactly_matmul_then_subtract_on_one_k_block():
    # beta = 1 adds the same accumulated product that matmul writes (K within one GEMM block)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 785), dtype=np.float32), rng.standard_normal((64, 128), dtype=np.float32)
    c = rng.standard_normal((785, 128), dtype=np.float32)
    expected = c - a.T @ b
    gemm("float32").minus_at_b(a, b, c)()
    np.testing.assert_array_equal(c, expected)


def test_the_call_keeps_its_arrays_alive():
    c = np.zeros((3, 2))
    call = gemm("float64").minus_at_b(np.ones((4, 3)), np.ones((4, 2)), c)
    del c
    call()  # would write into freed memory if the call held only the pointers
    np.testing.assert_array_equal(call.keep[2], -4 * np.ones((3, 2)))


def test_bad_operands_name_what_was_expected():
    g = gemm("float64")
    with pytest.raises(ValueError, match=r"a \(n, m\), b \(n, k\), c \(m, k\)"):
        g.minus_at_b(np.ones((4, 3)), np.ones((5, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="b is float32, the GEMM is float64"):
        g.minus_at_b(np.ones((4, 3)), np.ones((4, 2), np.float32), np.ones((3, 2)))
    with pytest.raises(ValueError, match="c must have unit-strided rows"):
        g.minus_at_b(np.ones((4, 3)), np.ones((4, 2)), np.ones((2, 3)).T)
    with pytest.raises(ValueError, match="a must have unit stride along one axis"):
        g.minus_at_b(np.ones((8, 6))[::2, ::2], np.ones((4, 2)), np.ones((3, 2)))


def test_no_blas_symbol_means_none(monkeypatch, tmp_path):
    # a library without any CBLAS GEMM (the C library): the caller keeps its two passes
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no C library to stand in for a BLAS-less NumPy")
    monkeypatch.setattr(numpy_gemm, "_multiarray_path", lambda: libc)
    numpy_gemm.numpy_gemm.cache_clear()
    try:
        assert numpy_gemm.numpy_gemm("float32") is None
    finally:
        numpy_gemm.numpy_gemm.cache_clear()


def test_a_binding_that_disagrees_with_matmul_is_refused(monkeypatch):
    # the check on a small product catches a wrong binding (say, a wrong integer width)
    numpy_gemm.numpy_gemm.cache_clear()
    monkeypatch.setattr(numpy_gemm, "ROW_MAJOR", 102)  # column-major: another product
    try:
        assert numpy_gemm.numpy_gemm("float64") is None
    finally:
        monkeypatch.undo()
        numpy_gemm.numpy_gemm.cache_clear()
    assert numpy_gemm.numpy_gemm("float64") is not None
