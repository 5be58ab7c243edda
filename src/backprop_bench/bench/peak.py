"""The machine's limit: float32 matmul GFLOP/s, and what the machine and its BLAS are.

Two figures per library (NumPy, and torch when torch is benchmarked): an (n, n) @ (n, n)
product (2048 by default: the BLAS's best case), and the products one training step of
the MLP does, each at its own shape (``mlp_b{B}``: the step's matmul work over its matmul
time at batch B, the ceiling of any implementation that uses this library's matmul).

torch is imported inside the functions that need it, only when torch is measured.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from backprop_bench.backends.base import cpu_name

Shape = tuple[str, int, int, int, bool, bool]  # (name, m, k, n, a transposed, b transposed)
MatmulFactory = Callable[[np.ndarray, np.ndarray, np.ndarray], Callable[[], object]]


def mlp_matmul_shapes(sizes: tuple[int, ...], batch: int) -> list[Shape]:
    """The products one training step does, as (name, m, k, n, a transposed, b transposed).

    forward  a (B, in) @ W (in, out); weight gradient a.T (in, B) @ delta (B, out);
    input gradient delta (B, out) @ W.T (out, in), for every layer but the first.
    """
    shapes = []
    for layer, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes.append((f"fwd {batch}x{i}@{i}x{o}", batch, i, o, False, False))
        shapes.append((f"dW {i}x{batch}@{batch}x{o}", i, batch, o, True, False))
        if layer > 0:
            shapes.append((f"dx {batch}x{o}@{o}x{i}", batch, o, i, False, True))
    return shapes


def operands(
    m: int, k: int, n: int, ta: bool, tb: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 a (m, k), b (k, n) and an output buffer (m, n).

    A transposed operand is the .T view of a C-ordered array, as in the backends (x.T, W.T).
    """
    a = rng.random((k, m), dtype=np.float32).T if ta else rng.random((m, k), dtype=np.float32)
    b = rng.random((n, k), dtype=np.float32).T if tb else rng.random((k, n), dtype=np.float32)
    return a, b, np.empty((m, n), dtype=np.float32)


def numpy_mm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> Callable[[], object]:
    """A zero-argument call computing out = a @ b with NumPy's BLAS."""
    return lambda: np.matmul(a, b, out=out)


def torch_mm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> Callable[[], object]:
    """A zero-argument call computing out = a @ b with torch.mm on the NumPy buffers (no copy).

    A transposed NumPy view (a.T of a C-ordered array) stays a transposed view in torch, so
    torch's BLAS sees the same layout as NumPy's.
    """
    import torch  # only when torch is benchmarked

    def view(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(arr) if arr.flags.c_contiguous else torch.from_numpy(arr.T).T

    ta, tb, tout = view(a), view(b), torch.from_numpy(out)
    return lambda: torch.mm(ta, tb, out=tout)


def torch_threads() -> int:
    """Threads torch's intra-op pool uses."""
    import torch

    return torch.get_num_threads()


MATMULS: dict[str, MatmulFactory] = {"numpy": numpy_mm, "torch": torch_mm}


def time_gflops(call: Callable[[], object], flops: float, repeats: int, min_seconds: float) -> list[float]:
    """GFLOP/s of `repeats` samples; each sample loops `call` long enough (>= min_seconds)
    for the clock to resolve it. One untimed call first: page faults, thread-pool start."""
    call()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            call()
        if time.perf_counter() - t0 >= min_seconds or loops >= 1 << 16:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append(flops * loops / (time.perf_counter() - t0) / 1e9)
    return samples


def square_gflops(library: str, n: int, repeats: int, min_seconds: float) -> dict:
    """{n, median, max}: GFLOP/s of an (n, n) @ (n, n) float32 product."""
    a, b, c = operands(n, n, n, False, False, np.random.default_rng(0))
    s = time_gflops(MATMULS[library](a, b, c), 2.0 * n**3, repeats, min_seconds)
    return {"n": n, "median": statistics.median(s), "max": max(s)}


def measure_peak(
    library: str, sizes: tuple[int, ...], batches: list[int], square: int, repeats: int, min_seconds: float
) -> dict:
    """One library's float32 GFLOP/s (medians) at square^2 and at the MLP's shapes.

    Returns {library, square, shapes: [{batch, name, median, max}], mlp_b{B}: GFLOP/s,
    threads (torch only)}.
    """
    make, rng = MATMULS[library], np.random.default_rng(0)
    out: dict = {"library": library, "shapes": []}
    if library == "torch":
        out["threads"] = torch_threads()
    out["square"] = square_gflops(library, square, repeats, min_seconds)
    for batch in batches:
        total_flops = total_seconds = 0.0
        for name, m, k, n, ta, tb in mlp_matmul_shapes(sizes, batch):
            flops = 2.0 * m * k * n
            s = time_gflops(make(*operands(m, k, n, ta, tb, rng)), flops, repeats, min_seconds)
            med = statistics.median(s)
            out["shapes"].append({"batch": batch, "name": name, "median": med, "max": max(s)})
            total_flops += flops
            total_seconds += flops / (med * 1e9)
        out[f"mlp_b{batch}"] = total_flops / total_seconds / 1e9
    return out


def ceiling(peaks: list[dict], batches: list[int]) -> dict[int, dict]:
    """{batch: {gflops, library}}: the fastest library's rate on the MLP's own products.

    No CPU cell can run its matmuls faster than this (unless its framework's BLAS beats
    both measured here); an epoch's matmul work at this rate is the epoch's floor.
    """
    out = {}
    for batch in batches:
        best = max(peaks, key=lambda p: p[f"mlp_b{batch}"])
        out[batch] = {"gflops": best[f"mlp_b{batch}"], "library": best["library"]}
    return out


# ----------------------------------------------------------------------------- the machine


def blas_info() -> list[dict]:
    """Every BLAS / OpenMP pool loaded in this process (NumPy's, and torch's once imported).

    `architecture` is the kernel OpenBLAS actually picked (e.g. Haswell, SkylakeX).
    """
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: pool.get(k) for k in keys} | {"file": Path(pool["filepath"]).name} for pool in threadpool_info()]


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata: this imports none of them."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "threadpoolctl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    """{cpu, cores_usable, platform}."""
    return {"cpu": cpu_name(), "cores_usable": len(os.sched_getaffinity(0)), "platform": platform.platform()}
