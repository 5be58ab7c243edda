"""Sequential is not a parallel step under another name, in every backend.

- On a multi-layer net, one step gives different weights under the two strategies, and
  the difference (sequential - parallel) is the NumPy backend's, to 1e-9 relative.
- The output layer's update is the same under both (its gradient never sees an updated
  weight); only the layers below it differ.
- On a single-layer net there is nothing below the output layer, so the two strategies
  are the same computation: results agree to rounding (1e-14 relative, in practice 0).
"""

import numpy as np
import pytest
from backend_cases import (
    BACKENDS,
    BACKENDS_TF_SLOW,
    OPTIMIZERS,
    PARITY_OPTIMIZERS,
    make_backend,
    params_rel_err,
    rel_err,
)

from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

# tanh everywhere but the output: no relu kinks, every unit passes gradient.
DEEP = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")
SHALLOW = MLPSpec((6, 3), "tanh", "softmax", "cross_entropy")


def data(n=8, seed=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, n)


def one_step(framework, spec, strategy, optimizer: OptimizerSpec, n_steps=1):
    x, y = data(n=8 * n_steps)
    params = init_params(spec, InitSpec("glorot_normal", seed=11, bias=0.1), "float64")
    backend = make_backend(framework, spec, params, optimizer, strategy=strategy)
    backend.load(x, y)
    backend.train_epoch(np.arange(len(x)), 8)
    return backend.params()


@pytest.mark.parametrize("framework", BACKENDS)
def test_strategies_differ_after_one_step(framework):
    optimizer = OptimizerSpec("sgd", lr=0.5)
    seq = one_step(framework, DEEP, "sequential", optimizer)
    par = one_step(framework, DEEP, "parallel", optimizer)
    # the output layer: same gradient, same update
    assert rel_err(seq[-1][0], par[-1][0]) <= 1e-14
    # every layer below it: a visibly different update
    for (ws, _), (wp, _) in zip(seq[:-1], par[:-1]):
        assert rel_err(ws, wp) > 1e-4


def strategy_difference(framework, optimizer):
    """Per layer (W_seq - W_par, b_seq - b_par) after two steps."""
    seq = one_step(framework, DEEP, "sequential", optimizer, n_steps=2)
    par = one_step(framework, DEEP, "parallel", optimizer, n_steps=2)
    return [(ws - wp, bs - bp) for (ws, bs), (wp, bp) in zip(seq, par)]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("framework", BACKENDS_TF_SLOW)
def test_strategy_difference_matches_reference(framework, optimizer):
    opt = PARITY_OPTIMIZERS[optimizer]
    diff, ref = strategy_difference(framework, opt), strategy_difference("numpy", opt)
    assert max(np.abs(w).max() for w, _ in ref[:-1]) > 1e-6  # the reference difference is real
    for (dw, db), (rw, rb) in zip(diff[:-1], ref[:-1]):
        assert rel_err(dw, rw) <= 1e-9
        assert rel_err(db, rb) <= 1e-9


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("framework", BACKENDS)
def test_single_layer_strategies_agree(framework, optimizer):
    opt = PARITY_OPTIMIZERS[optimizer]
    seq = one_step(framework, SHALLOW, "sequential", opt, n_steps=3)
    par = one_step(framework, SHALLOW, "parallel", opt, n_steps=3)
    assert params_rel_err(seq, par) <= 1e-14
