"""NumPy's own BLAS GEMM with beta = 1: a layer's plain SGD step, W -= a^T d, in one call.

``numpy.matmul`` always overwrites its output (BLAS's beta = 0), so a plain SGD step on a layer
is two passes: the weight gradient a^T d into a buffer, then W -= buffer over every weight.
BLAS's GEMM computes C = alpha op(A) op(B) + beta C; with alpha = -1 and beta = 1 it is the step
itself, with no gradient buffer and no second pass. On two BLAS threads it also keeps each half
of W on the core that computes it: the separate pass had to pull the half the other thread
wrote across the cores (docs/benchmark.md, "NumPy at XLA's line").

NumPy does not expose GEMM, so ``numpy_gemm`` finds ``cblas_sgemm`` / ``cblas_dgemm`` in the
BLAS NumPy itself is linked against (looked up from NumPy's extension module, so SciPy's or any
other BLAS loaded in the process is never the one called: their thread pools would compete for
the cores) and calls it through ctypes. It checks the binding on a small product against
``numpy.matmul`` once; where the BLAS has no CBLAS GEMM under a known name, or the check fails,
it returns None and the caller keeps its two passes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache, partial

import numpy as np

# (symbol pattern, integer type): NumPy >= 2 wheels (scipy-openblas64: prefix and ILP64 suffix),
# NumPy 1.2x wheels (openblas64_), then a plain LP64 CBLAS (distribution builds)
SYMBOLS = (
    ("scipy_cblas_{}gemm64_", ctypes.c_int64),
    ("cblas_{}gemm64_", ctypes.c_int64),
    ("cblas_{}gemm", ctypes.c_int),
)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enum values
TYPES = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}


class Gemm:
    """One CBLAS GEMM (float32 or float64) of NumPy's BLAS, bound through ctypes."""

    def __init__(self, fn, dtype: np.dtype, symbol: str):
        self.fn, self.dtype, self.symbol = fn, np.dtype(dtype), symbol

    def minus_at_b(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> Callable[[], None]:
        """A zero-argument call computing c -= a^T b in place, on these arrays (views are fine).

        a (n, m), b (n, k), c (m, k), all of this dtype, each with unit stride along one axis
        (C-ordered rows or transposed views: both are what BLAS takes without a copy); c's
        rows unit-strided. The call keeps the three arrays alive."""
        item = self.dtype.itemsize
        (n, m), (n_b, k) = a.shape, b.shape
        if n_b != n or c.shape != (m, k):
            raise ValueError(f"c -= a^T b needs a (n, m), b (n, k), c (m, k); got {a.shape}, {b.shape}, {c.shape}")
        for name, arr in (("a", a), ("b", b), ("c", c)):
            if arr.dtype != self.dtype:
                raise ValueError(f"{name} is {arr.dtype}, the GEMM is {self.dtype}")
        if c.strides[1] != item or c.strides[0] % item:
            raise ValueError(f"c must have unit-strided rows, got strides {c.strides}")
        trans_a, lda = _operand(a, item, "a", transposed=True)
        trans_b, ldb = _operand(b, item, "b", transposed=False)
        call = partial(
            self.fn, ROW_MAJOR, trans_a, trans_b, m, k, n, -1.0,
            a.ctypes.data, lda, b.ctypes.data, ldb, 1.0, c.ctypes.data, c.strides[0] // item,
        )  # fmt: skip
        call.keep = (a, b, c)  # the pointers above stay valid while the call lives
        return call


def _operand(arr: np.ndarray, item: int, name: str, transposed: bool) -> tuple[int, int]:
    """(CBLAS transpose flag, leading dimension) for arr (n, cols) used as arr^T (transposed) or arr."""
    s0, s1 = arr.strides
    if s1 == item and s0 % item == 0 and s0 >= item * arr.shape[1]:  # rows contiguous: as stored
        return (TRANS if transposed else NO_TRANS), s0 // item
    if s0 == item and s1 % item == 0 and s1 >= item * arr.shape[0]:  # a transposed C-ordered array
        return (NO_TRANS if transposed else TRANS), s1 // item
    raise ValueError(f"{name} must have unit stride along one axis for BLAS, got strides {arr.strides}")


@cache
def numpy_gemm(dtype: str | np.dtype) -> Gemm | None:
    """NumPy's BLAS GEMM for dtype (float32 or float64), checked once; None where there is none."""
    dtype = np.dtype(dtype)
    if dtype not in TYPES:
        return None
    letter, scalar = TYPES[dtype]
    library = ctypes.CDLL(_multiarray_path())  # its symbol search covers the libraries it links: NumPy's BLAS
    for pattern, integer in SYMBOLS:
        symbol = pattern.format(letter)
        fn = getattr(library, symbol, None)
        if fn is None:
            continue
        fn.restype = None
        # order, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc
        pointer = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [scalar, pointer, integer, pointer, integer]
        fn.argtypes += [scalar, pointer, integer]
        gemm = Gemm(fn, dtype, symbol)
        return gemm if _agrees(gemm) else None
    return None


def _multiarray_path() -> str:
    try:
        from numpy._core import _multiarray_umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath
    return _multiarray_umath.__file__


def _agrees(gemm: Gemm) -> bool:
    """The bound call gives numpy.matmul's numbers on small products, both layouts of b."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(shape).astype(gemm.dtype) for shape in ((7, 5), (7, 3), (5, 3)))
    expected = c - a.T @ b
    ok = True
    for b_view in (b, np.ascontiguousarray(b.T).T):
        got = c.copy()
        gemm.minus_at_b(a, b_view, got)()
        ok &= bool(np.allclose(got, expected, rtol=1e-5, atol=1e-5))
    return ok
