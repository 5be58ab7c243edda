"""The NumPy backend's hand-written gradients, checked two independent ways in float64:
central finite differences, and torch.autograd on the same expression (micrograd style).
Both NumPy paths are checked: the plain one and the preallocated fast one. The JAX backend's
step (autodiff) is checked against the same finite differences.

Every hidden activation x every (output activation, loss) pair the spec allows, with
trained and constant biases. Two hidden layers, so the error is propagated twice.
"""

import itertools

import numpy as np
import pytest

from backprop_bench.backends.numpy_backend import NumpyBackend
from backprop_bench.backends.numpy_fast import NumpyFastBackend
from backprop_bench.core.specs import (
    HIDDEN_ACTIVATIONS,
    NO_REGULARIZATION,
    InitSpec,
    MLPSpec,
    OptimizerSpec,
    Regularization,
    as_targets,
    dropout_masks,
    init_params,
)

OUTPUT_LOSS = [
    ("softmax", "cross_entropy"),
    ("softmax", "mse"),
    ("softmax", "half_sse"),
    ("sigmoid", "mse"),
    ("sigmoid", "half_sse"),
    ("identity", "mse"),
    ("identity", "half_sse"),
]
CASES = [(h, o, loss) for h, (o, loss) in itertools.product(HIDDEN_ACTIVATIONS, OUTPUT_LOSS)]
SIZES = (5, 4, 3, 3)
N = 6
PATHS = pytest.mark.parametrize("cls", [NumpyBackend, NumpyFastBackend], ids=["plain", "fast"])


def gradients(cls, spec, params, x, y):
    """(loss, [(dL/dW, dL/db or None)]) from one of the NumPy paths."""
    backend = cls(spec, params, OptimizerSpec("sgd"), dtype="float64", compile=cls is NumpyFastBackend)
    return backend.loss_and_gradients(x, y)


def case(hidden, output, loss, train_biases=True):
    spec = MLPSpec(SIZES, hidden, output, loss, train_biases=train_biases)
    params = init_params(spec, InitSpec("glorot_normal", seed=2, bias=0.1), "float64")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(N, SIZES[0]))
    y = rng.integers(0, SIZES[-1], N) if loss == "cross_entropy" else rng.random((N, SIZES[-1]))
    return spec, params, x, y


def smallest_hidden_preactivation(spec, params, x) -> float:
    """min |z| over hidden units: finite differences step over a relu kink if this is ~h."""
    act = {"relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh}
    a, smallest = x, np.inf
    for w, b in params[:-1]:
        z = a @ w + b
        smallest = min(smallest, np.abs(z).min())
        a = act[spec.hidden_activation](z)
    return smallest


def loss_at(spec, params, x, y, reg=NO_REGULARIZATION, masks=None) -> float:
    backend = NumpyBackend(spec, params, OptimizerSpec("sgd"), dtype="float64", regularization=reg)
    return backend.loss_and_gradients(x, y, masks)[0]


def torch_loss_and_grads(spec, params, x, y, reg=NO_REGULARIZATION, masks=None):
    """The same loss written in torch, differentiated by autograd (float64): dropout as a
    product with the given masks, the penalty as l1 sum |W| + l2 sum W^2."""
    import torch

    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda z: z}
    tensors = [(torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) for w, b in params]
    a = torch.tensor(x)
    for l, (w, b) in enumerate(tensors[:-1]):
        a = act[spec.hidden_activation](a @ w + b)
        if masks is not None:
            a = a * torch.tensor(masks[l])
    z = a @ tensors[-1][0] + tensors[-1][1]
    t = torch.tensor(as_targets(y, SIZES[-1], "float64"))
    if spec.loss == "cross_entropy":
        loss = -(t * torch.log_softmax(z, dim=1)).sum(dim=1).mean()
    else:
        p = torch.softmax(z, dim=1) if spec.output_activation == "softmax" else act[spec.output_activation](z)
        sq = (p - t) ** 2
        loss = sq.mean() if spec.loss == "mse" else 0.5 * sq.sum(dim=1).mean()
    loss = loss + sum(reg.l1 * w.abs().sum() + reg.l2 * (w**2).sum() for w, _ in tensors)
    loss.backward()
    return loss.item(), [(w.grad.numpy(), b.grad.numpy()) for w, b in tensors]


def finite_difference(spec, params, x, y, h=1e-6, reg=NO_REGULARIZATION, masks=None):
    """Central differences of the loss in every W and b entry."""
    grads = []
    for l, (w, b) in enumerate(params):
        layer_grads = []
        for arr_index, arr in enumerate((w, b)):
            g = np.zeros_like(arr)
            for i in np.ndindex(arr.shape):
                plus = [(pw.copy(), pb.copy()) for pw, pb in params]
                minus = [(pw.copy(), pb.copy()) for pw, pb in params]
                plus[l][arr_index][i] += h
                minus[l][arr_index][i] -= h
                g[i] = (loss_at(spec, plus, x, y, reg, masks) - loss_at(spec, minus, x, y, reg, masks)) / (2 * h)
            layer_grads.append(g)
        grads.append(tuple(layer_grads))
    return grads


@PATHS
@pytest.mark.parametrize("hidden,output,loss", CASES)
def test_gradients_match_torch_autograd(hidden, output, loss, cls):
    spec, params, x, y = case(hidden, output, loss)
    ours_loss, ours = gradients(cls, spec, params, x, y)
    torch_loss, theirs = torch_loss_and_grads(spec, params, x, y)
    assert ours_loss == pytest.approx(torch_loss, rel=1e-12)
    for (gw, gb), (tw, tb) in zip(ours, theirs):
        np.testing.assert_allclose(gw, tw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, tb, rtol=1e-10, atol=1e-14)
    assert max(np.abs(gw).max() for gw, _ in ours) > 1e-4  # not vacuously zero


@PATHS
@pytest.mark.parametrize("hidden,output,loss", CASES)
def test_gradients_match_finite_differences(hidden, output, loss, cls):
    spec, params, x, y = case(hidden, output, loss)
    assert smallest_hidden_preactivation(spec, params, x) > 1e-4  # no kink within reach of h
    _, ours = gradients(cls, spec, params, x, y)
    numeric = finite_difference(spec, params, x, y)
    for (gw, gb), (nw, nb) in zip(ours, numeric):
        np.testing.assert_allclose(gw, nw, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gb, nb, rtol=1e-6, atol=1e-9)


@PATHS
def test_constant_biases_have_no_gradient(cls):
    spec, params, x, y = case("tanh", "softmax", "cross_entropy", train_biases=False)
    _, grads = gradients(cls, spec, params, x, y)
    _, theirs = torch_loss_and_grads(spec, params, x, y)
    for (gw, gb), (tw, _) in zip(grads, theirs):
        assert gb is None
        np.testing.assert_allclose(gw, tw, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- penalties and dropout

REGULARIZED = {
    "l1": Regularization((), l1=0.01),
    "l2": Regularization((), l2=0.02),
    "dropout": Regularization((0.5, 0.25)),
    "all": Regularization((0.3, 0.3), l1=0.01, l2=0.02),
}


def regularized_case(hidden: str, name: str):
    spec, params, x, y = case(hidden, "softmax", "cross_entropy")
    reg = REGULARIZED[name]
    masks = dropout_masks(np.random.default_rng(5), N, spec, reg, "float64")  # fixed for the check
    return spec, params, x, y, reg, masks


@pytest.mark.parametrize("name", REGULARIZED)
@pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
def test_regularized_gradients_match_autograd_and_finite_differences(hidden, name):
    spec, params, x, y, reg, masks = regularized_case(hidden, name)
    if masks is not None:
        assert any((m == 0).any() for m in masks) and any((m > 1).any() for m in masks)  # units really dropped
    assert min(np.abs(w).min() for w, _ in params) > 1e-4  # |W|'s kink out of reach of h
    backend = NumpyBackend(spec, params, OptimizerSpec("sgd"), dtype="float64", regularization=reg)
    loss, ours = backend.loss_and_gradients(x, y, masks)
    torch_loss, theirs = torch_loss_and_grads(spec, params, x, y, reg, masks)
    assert loss == pytest.approx(torch_loss, rel=1e-12)
    for (gw, gb), (tw, tb) in zip(ours, theirs):
        np.testing.assert_allclose(gw, tw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, tb, rtol=1e-10, atol=1e-14)
    assert smallest_hidden_preactivation(spec, params, x) > 1e-4  # no relu kink within reach of h
    numeric = finite_difference(spec, params, x, y, reg=reg, masks=masks)
    for (gw, gb), (nw, nb) in zip(ours, numeric):
        np.testing.assert_allclose(gw, nw, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gb, nb, rtol=1e-6, atol=1e-9)
    if masks is None:  # the penalty is in the loss, at these weights
        plain = loss_at(spec, params, x, y)
        assert loss == pytest.approx(plain + reg.penalty([w for w, _ in params]), rel=1e-12) and loss > plain


# ---------------------------------------------------------------- the JAX backend's step


def jax_step_gradients(spec, params, x, y, reg=NO_REGULARIZATION, masks=None):
    """[(dL/dW, dL/db)] that one parallel sgd step of the JAX backend applies, read back as
    (before - after) / lr with lr = 1 over one batch of every row: the gradients its jitted
    step (value_and_grad) really uses, not a separate code path."""
    from backprop_bench.backends.jax_backend import JaxBackend

    backend = JaxBackend(spec, params, OptimizerSpec("sgd", lr=1.0), dtype="float64", regularization=reg)
    backend.load(x, y)
    backend.train_epoch(np.arange(len(x)), len(x), masks)
    return [(w0 - w1, b0 - b1) for (w0, b0), (w1, b1) in zip(params, backend.params())]


@pytest.mark.parametrize("hidden,output,loss", CASES)
def test_jax_step_gradients_match_finite_differences(hidden, output, loss):
    spec, params, x, y = case(hidden, output, loss)
    ours = jax_step_gradients(spec, params, x, y)
    for (gw, gb), (nw, nb) in zip(ours, finite_difference(spec, params, x, y)):
        np.testing.assert_allclose(gw, nw, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gb, nb, rtol=1e-6, atol=1e-9)
    assert max(np.abs(gw).max() for gw, _ in ours) > 1e-4  # not vacuously zero


@pytest.mark.parametrize("name", REGULARIZED)
def test_jax_regularized_step_gradients_match_finite_differences(name):
    spec, params, x, y, reg, masks = regularized_case("tanh", name)
    ours = jax_step_gradients(spec, params, x, y, reg, masks)
    for (gw, gb), (nw, nb) in zip(ours, finite_difference(spec, params, x, y, reg=reg, masks=masks)):
        np.testing.assert_allclose(gw, nw, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gb, nb, rtol=1e-6, atol=1e-9)
