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


__all__ = [
    "Backend",
    "DeviceUnavailable",
    "FRAMEWORKS",
    "KERAS_BACKENDS",
    "backend_class",
    "limit_threads",
    "make_backend",
]
