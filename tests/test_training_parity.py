"""Every advanced-training feature keeps cross-backend parity in float64: each backend, under
both strategies, against the NumPy reference, step by step over 3 epochs (losses of every
step and the final weights, 1e-9 relative; they land near 1e-15). docs/training.md has the rules.

The TensorFlow-based backends and torch.compile are marked slow; NumPy's fast path joins the cases
it implements (rmsprop, schedules) and rejects the others with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from backend_cases import STRATEGIES, make_backend, params_rel_err, rel_err, train

from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, Regularization, init_params

TOL = 1e-9
SIZES, N, BATCH, EPOCHS = (30, 16, 12, 10), 100, 32, 3  # 4 steps an epoch, the last one short
LRS = [0.05, 0.02, 0.08]  # a changing lr, as a schedule or a plateau sets it
MOMENTUM = OptimizerSpec("momentum", lr=0.05, momentum=0.9)
# name -> (regularization, optimizer, lr per epoch or None)
FEATURES = {
    "dropout": (Regularization((0.3, 0.2)), MOMENTUM, None),
    "l1": (Regularization((), l1=0.005), MOMENTUM, None),
    "l2": (Regularization((), l2=0.01), MOMENTUM, None),
    "rmsprop": (Regularization(), OptimizerSpec("rmsprop", lr=0.003, rho=0.9), None),
    "adamw": (Regularization(), OptimizerSpec("adam", lr=0.003, weight_decay=0.1), None),
    "schedule": (Regularization(), MOMENTUM, LRS),
    "all": (Regularization((0.2, 0.1), l1=0.002, l2=0.005), OptimizerSpec("adam", lr=0.003, weight_decay=0.05), LRS),
}
FAST_PATH = ("rmsprop", "schedule")  # what numpy's compile=True path implements
OTHERS = [
    "torch",
    "jax",
    "numpy-fast",
    pytest.param("tensorflow", marks=pytest.mark.slow),
    pytest.param("keras", marks=pytest.mark.slow),
]


def data():
    rng = np.random.default_rng(4)
    return rng.normal(size=(N, SIZES[0])), rng.integers(0, SIZES[-1], N)


PLAIN = (Regularization(), MOMENTUM, None)


def run(backend: str, strategy: str, feature: str, hidden: str = "tanh"):
    """(step losses (12,), final params) of one backend on one feature ("plain": none)."""
    reg, optimizer, lrs = PLAIN if feature == "plain" else FEATURES[feature]
    spec = MLPSpec(SIZES, hidden_activation=hidden)
    params = init_params(spec, InitSpec("glorot_uniform", seed=3), "float64")
    b = make_backend(backend, spec, params, optimizer, strategy=strategy, regularization=reg)
    x, y = data()
    _, steps = train(b, x, y, EPOCHS, BATCH, seed=7, masks_seed=7 if reg.has_dropout else None, lrs=lrs)
    return steps, b.params()


_REFERENCE: dict = {}


def reference(strategy: str, feature: str):
    if (strategy, feature) not in _REFERENCE:
        _REFERENCE[(strategy, feature)] = run("numpy", strategy, feature)
    return _REFERENCE[(strategy, feature)]


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", OTHERS)
def test_feature_parity_float64(backend, strategy, feature):
    if backend == "numpy-fast" and feature not in FAST_PATH:
        with pytest.raises(ValueError, match=r"framework.compile=true .* does not implement .*compile=false"):
            run(backend, strategy, feature)
        return
    steps, params = run(backend, strategy, feature)
    ref_steps, ref_params = reference(strategy, feature)
    loss_err, weight_err = rel_err(steps, ref_steps), params_rel_err(params, ref_params)
    print(f"training parity {feature} {strategy} {backend}: losses {loss_err:.1e}, weights {weight_err:.1e}")
    assert len(steps) == EPOCHS * 4
    assert loss_err <= TOL and weight_err <= TOL


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_changes_the_trajectory(strategy, feature):
    """Not vacuous: each feature moves the reference away from the plain momentum run."""
    plain_steps, plain_params = reference(strategy, "plain")
    steps, params = reference(strategy, feature)
    assert rel_err(steps, plain_steps) > 1e-6 and params_rel_err(params, plain_params) > 1e-6


def test_the_strategies_differ_with_dropout():
    """The sequential rule is not the parallel one with masks either (the error passes the updated W)."""
    seq, par = reference("sequential", "dropout"), reference("parallel", "dropout")
    assert params_rel_err(seq[1], par[1]) > 1e-6


@pytest.mark.slow  # compiles: tens of seconds
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_torch_compile_runs_every_feature(strategy):
    """torch.compile(fullgraph=True) of the step with dropout, l1, l2, AdamW and a changing lr
    (the lr is a device tensor: no recompiles) matches eager torch, and so the reference."""
    reg, optimizer, lrs = FEATURES["all"]
    spec = MLPSpec(SIZES, hidden_activation="tanh")
    params = init_params(spec, InitSpec("glorot_uniform", seed=3), "float64")
    b = make_backend("torch", spec, params, optimizer, strategy=strategy, regularization=reg, compile=True)
    x, y = data()
    _, steps = train(b, x, y, EPOCHS, BATCH, seed=7, masks_seed=7, lrs=lrs)
    ref_steps, ref_params = reference(strategy, "all")
    assert b.info()["compile"].startswith("torch.compile")
    assert rel_err(steps, ref_steps) <= TOL and params_rel_err(b.params(), ref_params) <= TOL


def gpu_missing(backend: str) -> str:
    """Why `backend` cannot run on cuda here ("" when it can): torch's or jax's CUDA, or CuPy for numpy."""
    if backend == "jax":
        from backprop_bench.backends import DeviceUnavailable
        from backprop_bench.backends.jax_backend import resolve_device

        try:
            return "" if resolve_device("cuda") else "unreachable"
        except DeviceUnavailable as err:
            return str(err)
    if backend == "torch":
        import torch

        return "" if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA GPU"
    from backprop_bench.backends.numpy_backend import find_cupy

    return find_cupy()[1]


@pytest.mark.gpu
@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_feature_parity_float64_on_cuda(backend, strategy, feature):
    """The same features on the GPU (CuPy for numpy, torch and jax on cuda) against the CPU reference:
    float64 on both, so only the kernels' summation order differs. Skipped without a GPU."""
    why = gpu_missing(backend)
    if why:
        pytest.skip(f"no GPU for {backend}: {why}")
    reg, optimizer, lrs = FEATURES[feature]
    spec = MLPSpec(SIZES, hidden_activation="tanh")
    params = init_params(spec, InitSpec("glorot_uniform", seed=3), "float64")
    b = make_backend(backend, spec, params, optimizer, strategy=strategy, regularization=reg, device="cuda")
    assert b.device == "cuda"
    x, y = data()
    _, steps = train(b, x, y, EPOCHS, BATCH, seed=7, masks_seed=7 if reg.has_dropout else None, lrs=lrs)
    ref_steps, ref_params = reference(strategy, feature)
    loss_err, weight_err = rel_err(steps, ref_steps), params_rel_err(b.params(), ref_params)
    print(f"cuda parity {feature} {strategy} {backend}: losses {loss_err:.1e}, weights {weight_err:.1e}")
    assert loss_err <= TOL and weight_err <= TOL
