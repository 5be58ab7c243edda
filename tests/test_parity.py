"""Cross-backend parity: every backend computes what the NumPy backend computes.

784-128-64-10 (relu / softmax / cross-entropy, he_uniform from the seed), 256 random
samples, 3 epochs of batch 32 (24 steps), each optimizer under each strategy. Compared:
the per-step losses of all 3 epochs and the final weights, with ``rel_err`` from
backend_cases: max|a - b| / max|b| per array, the worst array counting.

float64: agreement to 1e-9 relative. Only rounding differs between backends (~1e-16 per
op), and 24 steps do not amplify it anywhere near 1e-9.

float32: each backend's float32 run is compared with the NumPy *float64* run, i.e. with
the exact answer, so the tolerance bounds float32 rounding itself (two backends within it
are within twice it of each other). Backends sum in different orders (OpenBLAS,
oneDNN/MKL and Eigen tile their float32 dot products differently), so results differ at
~1e-7 per op and drift over the 24 steps.

The float32 case uses tanh hidden units, not relu. With relu, a pre-activation that sits
within float32 rounding (~1e-6) of 0 switches its unit on in one precision and off in the
other; with ~1.2M pre-activations per run about one such flip is expected, and adam, which
normalises every element's step to about lr whatever the gradient's size, turns it into an
lr-sized step on every weight the unit touches. Measured with relu: NumPy and torch
happened to stay within 1e-3 on weights, TensorFlow and Keras (sequential, adam) flipped
off in one jump at step 12 (before it: <= 6e-7) and ended 2.5e-3 off on losses and 0.12
on weights, while their float64 runs agree to 8e-13: the signature of such a flip, not of
a wrong rule. So the float32 comparison uses a smooth activation, where results are a
smooth function of rounding. (relu in float32 is exercised by test_learning.py.)

Measured with tanh (numpy 2.4 / OpenBLAS 0.3.31, torch 2.13, TF 2.21, Keras 3.15), the
worst over backends and strategies: step losses 2.7e-6 (TF/Keras adam; others <= 3.1e-7);
weights 3.1e-6 (sgd, momentum) and 7.4e-4 (adam sequential; adam scales each element's
step by 1/sqrt(v), which magnifies rounding in elements whose gradients are tiny). The
tolerances below leave a 7-20x margin.
"""

from functools import cache

import numpy as np
import pytest
from backend_cases import (
    BACKENDS_TF_SLOW,
    OPTIMIZERS,
    OTHER_BACKENDS,
    PARITY_OPTIMIZERS,
    STRATEGIES,
    make_backend,
    mlp_784,
    mnist_like,
    params_rel_err,
    rel_err,
    train,
)

EPOCHS, BATCH, N_SAMPLES, ORDER_SEED = 3, 32, 256, 7
FLOAT64_TOL = 1e-9
FLOAT32_LOSS_TOL = 5e-5
FLOAT32_WEIGHT_TOL = {"sgd": 5e-5, "momentum": 5e-5, "adam": 5e-3, "rmsprop": 5e-3}


def run(framework: str, optimizer: str, strategy: str, dtype: str, hidden: str = "relu"):
    """(step losses (24,), final params) of one backend's run of the parity case."""
    spec, params = mlp_784(hidden=hidden)
    x, y = mnist_like(N_SAMPLES, seed=1)
    backend = make_backend(framework, spec, params, PARITY_OPTIMIZERS[optimizer], strategy=strategy, dtype=dtype)
    _, steps = train(backend, x, y, EPOCHS, BATCH, seed=ORDER_SEED)
    assert steps is not None and steps.shape == (EPOCHS * N_SAMPLES // BATCH,)
    return steps, backend.params()


@cache
def numpy_reference(optimizer: str, strategy: str, hidden: str = "relu"):
    return run("numpy", optimizer, strategy, "float64", hidden)


@pytest.mark.parametrize("hidden", ["relu", "tanh"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reference_run_is_not_trivial(optimizer, strategy, hidden):
    """The parity cases are worth comparing: the weights move well past the tolerances."""
    steps, params = numpy_reference(optimizer, strategy, hidden)
    _, init = mlp_784(hidden=hidden)
    assert params_rel_err(params, init) > 1e-3
    assert np.all(np.isfinite(steps)) and steps[-1] < steps[0]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", OTHER_BACKENDS)
def test_float64_parity(framework, strategy, optimizer):
    steps, params = run(framework, optimizer, strategy, "float64")
    ref_steps, ref_params = numpy_reference(optimizer, strategy)
    loss_err, weight_err = rel_err(steps, ref_steps), params_rel_err(params, ref_params)
    print(f"parity {framework} {strategy} {optimizer} float64: losses {loss_err:.2e}, weights {weight_err:.2e}")
    assert loss_err <= FLOAT64_TOL
    assert weight_err <= FLOAT64_TOL


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", BACKENDS_TF_SLOW)
def test_float32_close_to_float64_reference(framework, strategy, optimizer):
    steps, params = run(framework, optimizer, strategy, "float32", hidden="tanh")
    assert all(w.dtype == np.float32 and b.dtype == np.float32 for w, b in params)
    ref_steps, ref_params = numpy_reference(optimizer, strategy, "tanh")
    loss_err, weight_err = rel_err(steps, ref_steps), params_rel_err(params, ref_params)
    print(f"parity {framework} {strategy} {optimizer} float32: losses {loss_err:.2e}, weights {weight_err:.2e}")
    assert loss_err <= FLOAT32_LOSS_TOL
    assert weight_err <= FLOAT32_WEIGHT_TOL[optimizer]
