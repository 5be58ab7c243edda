"""Backends, imported lazily: asking for "numpy" must never import torch, TensorFlow or JAX.

The three Keras frameworks run Keras 3 on TensorFlow (keras), JAX (keras-jax) or PyTorch
(keras-torch). Keras picks its backend once per process, at its first import: each Keras
module selects its own (backends/_keras_common.py) in its first lines, before `import keras`,
so backend_class never lets Keras load on the wrong backend, and a process asking for a
second Keras backend gets an ImportError that says so."""

from __future__ import annotations

import importlib
import os
import sys

from backprop_bench.backends.base import Backend, DeviceUnavailable

FRAMEWORKS = ("numpy", "torch", "tensorflow", "keras", "jax", "keras-jax", "keras-torch")

# (framework, compile) -> (module, class). compile=True means each framework's fast path:
# numpy's preallocated buffers, torch.compile, XLA; the backend records which in info().
CLASSES = {
    ("numpy", False): ("numpy_backend", "NumpyBackend"),
    ("numpy", True): ("numpy_fast", "NumpyFastBackend"),
    ("torch", False): ("torch_backend", "TorchBackend"),
    ("tensorflow", False): ("tensorflow_backend", "TensorflowBackend"),
    ("keras", False): ("keras_backend", "KerasBackend"),
    ("jax", False): ("jax_backend", "JaxBackend"),
    ("keras-jax", False): ("keras_jax_backend", "KerasJaxBackend"),
    ("keras-torch", False): ("keras_torch_backend", "KerasTorchBackend"),
}
# The Keras frameworks -> the backend Keras runs on (steps_per_execution is their option)
KERAS_BACKENDS = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}


def backend_class(framework: str, compile: bool = False) -> type[Backend]:
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {', '.join(FRAMEWORKS)}")
    module, name = CLASSES.get((framework, compile), CLASSES[(framework, False)])
    return getattr(importlib.import_module(f"backprop_bench.backends.{module}"), name)


def make_backend(framework: str, *args, compile: bool = False, **kwargs) -> Backend:
    """backend_class(framework, compile)(spec, init, optimizer, strategy=..., device=..., ...)."""
    return backend_class(framework, compile)(*args, compile=compile, **kwargs)


# What torch (OpenMP, MKL), TensorFlow (its intra- and inter-op pools) and jaxlib (PJRT_NPROC:
# the size of its CPU client's XLAEigen pool) read, once, as they start. jaxlib 0.10's XLA:CPU
# has no XLA_FLAGS flag that caps its threads: --xla_cpu_multi_thread_eigen=false leaves the
# XLAEigen pool at one thread per CPU and its work spread over them (measured), and
# intra_op_parallelism_threads is no XLA flag at all (alone in XLA_FLAGS it aborts the process).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "PJRT_NPROC")


def limit_threads(n: int) -> None:
    """Let every framework of this process compute on at most n CPU threads (0: their defaults).

    Call it before torch or TensorFlow is imported, and before JAX's first computation (they read
    THREAD_ENV as they start; JAX as its CPU backend starts, not on import); NumPy's
    BLAS, loaded already, is capped through threadpoolctl, and torch, if already loaded, by
    set_num_threads. Each backend's info() reports the threads it got."""
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0: each framework's default), got {n}")
    if n == 0:
        return
    from threadpoolctl import threadpool_limits

    for key in THREAD_ENV:
        os.environ[key] = str(n)
    threadpool_limits(n)  # every BLAS / OpenMP library loaded so far, for the rest of the process
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


# The frameworks whose own thread settings pin_threads makes: torch's (torch, Keras on torch) and
# TensorFlow's (tensorflow, Keras on TensorFlow)
TORCH_USERS = ("torch", "keras-torch")
TF_USERS = ("tensorflow", "keras")


def pin_threads(n: int, frameworks: list[str]) -> None:
    """limit_threads(n), then each framework's own setting too, for the frameworks asked for: torch's
    intra- and inter-op pools (set_num_threads, set_num_interop_threads) and TensorFlow's
    (tf.config.threading). Imports those frameworks: call it first thing in a process, before anything
    computes (the inter-op and tf.config settings are refused once the pools exist). n >= 1."""
    if n < 1:
        raise ValueError(f"pin_threads needs n >= 1, got {n}")
    limit_threads(n)
    if any(fw in TORCH_USERS for fw in frameworks):
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(n)
    if any(fw in TF_USERS for fw in frameworks):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def thread_counts() -> dict:
    """The threads this process's pools have now, as each library reports them, and the OS threads
    it runs (by name, Linux; {} elsewhere); imports nothing: a library not loaded is left out.

    blas: every BLAS / OpenMP pool threadpoolctl sees, "internal_api file": threads; torch:
    {intra, interop}; tensorflow: {intra, inter} as set through tf.config (0: not set there);
    os_threads: {thread name: count}: XLA:CPU's pool runs as tf_XLAEigen, TF's intra-op pool as
    tf_Compute, OpenMP's workers under the process's own name."""
    from threadpoolctl import threadpool_info

    out: dict = {
        "blas": {f"{p['internal_api']} {os.path.basename(p['filepath'])}": p["num_threads"] for p in threadpool_info()}
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out["torch"] = {"intra": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}
    if "tensorflow" in sys.modules:
        threading = sys.modules["tensorflow"].config.threading
        out["tensorflow"] = {
            "intra": threading.get_intra_op_parallelism_threads(),
            "inter": threading.get_inter_op_parallelism_threads(),
        }
    out["os_threads"] = _os_thread_names()
    return out


def _os_thread_names() -> dict[str, int]:
    """{name: count} of this process's threads, from /proc/self/task (Linux; {} elsewhere)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return {}
    names: dict[str, int] = {}
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


__all__ = [
    "Backend",
    "DeviceUnavailable",
    "FRAMEWORKS",
    "KERAS_BACKENDS",
    "backend_class",
    "limit_threads",
    "make_backend",
    "pin_threads",
    "thread_counts",
]
