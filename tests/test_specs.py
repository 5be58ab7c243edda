"""model.py: the spec's validation, the single source of initial weights, the FLOP count,
and the small target/accuracy helpers."""

import numpy as np
import pytest

from backprop_bench.core.specs import (
    InitSpec,
    MLPSpec,
    OptimizerSpec,
    accuracy,
    as_targets,
    init_params,
    labels_of,
    one_hot,
    predicted_labels,
)

SPEC = MLPSpec((784, 128, 64, 10))


# ---------------------------------------------------------------- the spec


def test_spec_shapes_and_counts():
    assert SPEC.n_layers == 3
    assert SPEC.shapes() == [(784, 128), (128, 64), (64, 10)]
    assert SPEC.n_params() == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_needed_flops_for_the_benchmark_net():
    # forward + weight gradients: 2 x 109,184 MACs; input gradients of layers 2-3: 8,832 MACs;
    # 2 FLOPs per MAC, 60,000 samples
    assert SPEC.needed_flops(60_000) == pytest.approx(27.264e9, rel=1e-12)
    assert round(SPEC.needed_flops(60_000) / 1e9, 2) == 27.26


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sizes": (784,)}, r"model.sizes must list at least 2 positive layer sizes, got \[784\]"),
        ({"sizes": (784, 0, 10)}, r"model.sizes must list at least 2 positive layer sizes, got \[784, 0, 10\]"),
        ({"sizes": (4, 2), "hidden_activation": "gelu"}, "model.hidden_activation='gelu' is not one of relu"),
        ({"sizes": (4, 2), "output_activation": "tanh"}, "model.output_activation='tanh' is not one of softmax"),
        ({"sizes": (4, 2), "loss": "hinge"}, "model.loss='hinge' is not one of cross_entropy"),
        (
            {"sizes": (4, 2), "output_activation": "sigmoid"},
            "model.loss=cross_entropy needs model.output_activation=softmax, got 'sigmoid'",
        ),
    ],
)
def test_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLPSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "adagrad"}, "optimizer.name='adagrad' is not one of sgd, momentum, adam, rmsprop"),
        ({"rho": 1.0}, r"optimizer.rho=1.0: must be in \[0, 1\)"),
        ({"weight_decay": -0.1, "name": "adam"}, "optimizer.weight_decay=-0.1: must be >= 0"),
        ({"weight_decay": 0.01, "name": "sgd"}, "optimizer.weight_decay=0.01: is decoupled decay for adam"),
        ({"lr": 0.0}, "optimizer.lr=0.0: must be > 0"),
        ({"lr": -1}, "optimizer.lr=-1: must be > 0"),
        ({"momentum": 1.0}, r"optimizer.momentum=1.0: must be in \[0, 1\)"),
        ({"momentum": -0.1}, r"optimizer.momentum=-0.1: must be in \[0, 1\)"),
    ],
)
def test_optimizer_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerSpec(**kwargs)


def test_unknown_init_scheme_and_dtype():
    with pytest.raises(ValueError, match="model.init.scheme='xavier' is not one of he_uniform"):
        InitSpec("xavier")
    with pytest.raises(ValueError, match="train.dtype='float16' is not one of float32, float64"):
        init_params(SPEC, InitSpec(), "float16")


# ---------------------------------------------------------------- initial weights


@pytest.mark.parametrize("scheme", ["he_uniform", "he_normal", "glorot_uniform", "glorot_normal"])
def test_init_is_deterministic_per_seed(scheme):
    a = init_params(SPEC, InitSpec(scheme, seed=3))
    b = init_params(SPEC, InitSpec(scheme, seed=3))
    c = init_params(SPEC, InitSpec(scheme, seed=4))
    for (wa, ba), (wb, bb), (wc, _) in zip(a, b, c):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
        assert not np.array_equal(wa, wc)


@pytest.mark.parametrize("scheme", ["he_uniform", "he_normal", "glorot_uniform", "glorot_normal"])
def test_init_has_the_documented_variance(scheme):
    spec = MLPSpec((1000, 400, 10))
    for (w, b), (fan_in, fan_out) in zip(init_params(spec, InitSpec(scheme, seed=0, bias=0.25)), spec.shapes()):
        var = 2.0 / fan_in if scheme.startswith("he") else 2.0 / (fan_in + fan_out)
        # 400,000 or 4,000 draws: the sample variance is within 3.5 % / 10 % (many sigma)
        assert w.var() == pytest.approx(var, rel=0.035 if w.size > 10_000 else 0.10)
        assert abs(w.mean()) < 0.05 * np.sqrt(var)
        if scheme.endswith("uniform"):
            assert np.abs(w).max() <= np.sqrt(3 * var)  # U(-a, a) with a^2 / 3 = var
        np.testing.assert_array_equal(b, 0.25)


def test_init_dtype():
    for dtype in ("float32", "float64"):
        params = init_params(SPEC, InitSpec(seed=0), dtype)
        assert all(w.dtype == dtype and b.dtype == dtype for w, b in params)
    # float32 is the float64 draw rounded: the same weights in both precisions
    w32, w64 = init_params(SPEC, InitSpec(seed=0), "float32")[0][0], init_params(SPEC, InitSpec(seed=0))[0][0]
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_explicit_init():
    spec = MLPSpec((2, 2, 1), "sigmoid", "sigmoid", "mse")
    params = init_params(spec, InitSpec("explicit", weights=[[[1, 2], [3, 4]], [[5], [6]]], biases=[[0.5, -0.5], 0.25]))
    np.testing.assert_array_equal(params[0][0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(params[0][1], [0.5, -0.5])
    np.testing.assert_array_equal(params[1][1], [0.25])  # a scalar bias fills the layer


@pytest.mark.parametrize(
    "weights,biases,message",
    [
        (None, [0, 0], "model.init.scheme=explicit needs both model.init.weights and model.init.biases"),
        ([[[1, 2], [3, 4]]], [0], r"need 2 layers for sizes \[2, 2, 1\], got 1 weights and 1 biases"),
        ([[[1, 2], [3, 4]], [[5, 6]]], [0, 0], r"model.init.weights\[1\] must have shape \(2, 1\), got \(1, 2\)"),
        (
            [[[1, 2, 3], [3, 4, 5]], [[5], [6]]],
            [0, 0],
            r"model.init.weights\[0\] must have shape \(2, 2\), got \(2, 3\)",
        ),
    ],
)
def test_explicit_init_shape_errors(weights, biases, message):
    spec = MLPSpec((2, 2, 1), "sigmoid", "sigmoid", "mse")
    with pytest.raises(ValueError, match=message):
        init_params(spec, InitSpec("explicit", weights=weights, biases=biases))


# ---------------------------------------------------------------- targets and accuracy


def test_one_hot_and_as_targets():
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    assert as_targets(np.array([1, 0]), 2, "float32").dtype == np.float32
    targets = np.array([[0.1, 0.9]])
    np.testing.assert_array_equal(as_targets(targets, 2, "float64"), targets)
    with pytest.raises(ValueError, match="targets have 2 columns, the model has 3 outputs"):
        as_targets(targets, 3, "float64")


def test_accuracy():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(probs, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(probs, one_hot(np.array([1, 1, 1]), 2)) == pytest.approx(2 / 3)
    single = np.array([[0.2], [0.7]])  # one sigmoid unit: the class is output > 0.5
    assert accuracy(single, np.array([0, 0])) == 0.5
    assert accuracy(single, np.array([[0.1], [0.9]])) == 1.0


def test_predicted_labels_follow_the_accuracy_rule():
    assert predicted_labels(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])).tolist() == [1, 0]
    assert predicted_labels(np.array([[0.2], [0.9]])).tolist() == [0, 1]
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    y = np.array([1, 0, 0])
    assert np.mean(predicted_labels(probs) == labels_of(y)) == accuracy(probs, y)


def test_labels_of_labels_or_targets():
    assert labels_of(np.array([2, 0])).dtype == np.int64
    assert labels_of(np.array([[0.1, 0.9], [0.7, 0.3]])).tolist() == [1, 0]
    assert labels_of(np.array([[0.01], [0.99]])).tolist() == [0, 1]


def test_scale_pixels_maps_0_255_to_float32_0_1():
    from backprop_bench.core.specs import scale_pixels

    out = scale_pixels(np.array([[0, 51, 255]], dtype=np.uint8))
    assert out.dtype == np.float32 and out.tolist() == np.array([[0, 0.2, 1]], np.float32).tolist()
