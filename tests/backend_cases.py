"""Shared helpers for the cross-backend tests: the cases, a tiny trainer, error measures.

Every backend is driven the same way the real trainer drives it: initial weights from
``init_params`` (NumPy, from the seed), one permutation per epoch from
``np.random.default_rng(seed)``, and ``train_epoch(order, batch_size, masks)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from backprop_bench.backends import FRAMEWORKS, backend_class
from backprop_bench.core.specs import (  # noqa: F401 (OPTIMIZERS, STRATEGIES: re-exported)
    OPTIMIZERS,
    STRATEGIES,
    InitSpec,
    MLPSpec,
    OptimizerSpec,
    dropout_masks,
    dropout_rng,
    init_params,
)

# Keras on JAX or on torch needs a process of its own (Keras picks its backend once per process,
# and these tests load Keras on TensorFlow): tests/test_keras_on.py runs them in subprocesses.
IN_PROCESS = tuple(f for f in FRAMEWORKS if f not in ("keras-jax", "keras-torch"))
# Every implementation the cross-backend tests hold to the same numbers: the frameworks of
# this process, plus NumPy's fast path (numpy_fast.py, compile=True).
BACKENDS = ("numpy", "numpy-fast", *IN_PROCESS[1:])
OTHER_BACKENDS = tuple(b for b in BACKENDS if b != "numpy")
# BACKENDS with the two TensorFlow-based ones and jax (its compilations) marked slow, for the
# tests that only repeat, in another form, what test_parity's float64 test (every backend,
# never slow) already holds them to: `make test-fast` stays under 3 minutes, `make test` runs them all.
SLOW_BACKENDS = ("tensorflow", "keras", "jax")
BACKENDS_TF_SLOW = [pytest.param(b, marks=pytest.mark.slow) if b in SLOW_BACKENDS else b for b in BACKENDS]

# Learning rates for the parity runs: large enough that 3 epochs move the weights well
# away from their start, small enough that nothing diverges.
PARITY_OPTIMIZERS = {
    "sgd": OptimizerSpec("sgd", lr=0.05),
    "momentum": OptimizerSpec("momentum", lr=0.01, momentum=0.9),
    "adam": OptimizerSpec("adam", lr=1e-3),
    "rmsprop": OptimizerSpec("rmsprop", lr=1e-3, rho=0.9),
}


def make_backend(backend: str, spec: MLPSpec, params, optimizer: OptimizerSpec, **kwargs):
    """One of BACKENDS on the CPU, float64 unless told otherwise, with record_steps on."""
    kwargs.setdefault("dtype", "float64")
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("record_steps", True)
    if backend == "numpy-fast":
        backend, kwargs["compile"] = "numpy", True
    return backend_class(backend, kwargs.get("compile", False))(spec, params, optimizer, **kwargs)


def train(backend, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, seed: int, masks_seed=None, lrs=None):
    """Load x, y and train; one permutation per epoch from default_rng(seed), as the trainer.

    masks_seed: each epoch's dropout masks from model.dropout_masks(dropout_rng(masks_seed), ...)
    for the backend's regularization (one stream over the epochs). lrs: set_lr(lrs[e]) before epoch e.
    Returns (epoch mean losses (epochs,), step losses of all epochs concatenated, or None
    when the backend does not record them).
    """
    rng = np.random.default_rng(seed)
    mask_rng = None if masks_seed is None else dropout_rng(masks_seed)
    backend.load(x, y)
    epoch_losses, steps = [], []
    for epoch in range(epochs):
        if lrs is not None:
            backend.set_lr(lrs[epoch])
        masks = None
        if mask_rng is not None:
            masks = dropout_masks(mask_rng, len(x), backend.spec, backend.reg, backend.dtype)
        epoch_losses.append(backend.train_epoch(rng.permutation(len(x)), batch, masks))
        if backend.step_losses is not None:
            steps.append(np.asarray(backend.step_losses, dtype=np.float64))
    return np.array(epoch_losses), (np.concatenate(steps) if steps else None)


def fit(backend, data, epochs: int = 2, batch: int = 4) -> list[float]:
    """Load data (x, y; conftest's `data` fixture) and train: the epoch mean losses, as a list so that
    two runs compare bit for bit with ==. Permutations from default_rng(3), one per epoch."""
    x, y = data
    backend.load(x, y)
    rng = np.random.default_rng(3)
    return [backend.train_epoch(rng.permutation(len(x)), batch) for _ in range(epochs)]


def rel_err(a, b) -> float:
    """max|a - b| / max|b|: the error relative to the array's scale (b is the reference).

    Per array rather than per element, so that an element that happens to be near zero
    does not blow the measure up; ``tiny`` guards an all-zero reference.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def params_rel_err(params, reference) -> float:
    """The worst rel_err over every W and b of two Params lists."""
    assert len(params) == len(reference)
    return max(max(rel_err(w, rw), rel_err(b, rb)) for (w, b), (rw, rb) in zip(params, reference))


# ---------------------------------------------------------------- the cases


def worked_example():
    """The 2-2-2 network of the worked example (docs/reference.md).

    Returns (spec, float64 params, optimizer, x (1, 2), targets (1, 2)).
    W is (in, out): h1 = w1 i1 + w2 i2, h2 = w3 i1 + w4 i2, so column j feeds unit j.
    """
    spec = MLPSpec((2, 2, 2), "sigmoid", "sigmoid", "half_sse", train_biases=False)
    w1, w2, w3, w4, w5, w6, w7, w8 = 0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55
    init = InitSpec(
        "explicit",
        weights=[[[w1, w3], [w2, w4]], [[w5, w7], [w6, w8]]],
        biases=[0.35, 0.60],
    )
    x = np.array([[0.05, 0.10]])
    t = np.array([[0.01, 0.99]])
    return spec, init_params(spec, init, "float64"), OptimizerSpec("sgd", lr=0.5), x, t


def mnist_like(n: int, seed: int = 0, n_in: int = 784, n_classes: int = 10):
    """n random 'images' in [0, 1) and labels that every class appears in."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_in))
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    return x, y


def mlp_784(init_seed: int = 4, hidden: str = "relu") -> tuple[MLPSpec, list]:
    """784-128-64-10, relu (or ``hidden``) / softmax / cross-entropy, he_uniform, float64."""
    spec = MLPSpec((784, 128, 64, 10), hidden_activation=hidden)
    return spec, init_params(spec, InitSpec("he_uniform", seed=init_seed), "float64")
