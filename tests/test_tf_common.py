"""The TensorFlow math shared by the tensorflow and keras backends, checked piece by piece.

The optimizer rule and the losses are checked against OptimizerSpec's docstring and the
loss definitions in model.py, written out again here in NumPy (float64).
"""

import numpy as np
import pytest

tfc = pytest.importorskip("backprop_bench.backends._tf_common")
tf = tfc.tf

from backprop_bench.backends.base import DeviceUnavailable  # noqa: E402
from backprop_bench.model import MLPSpec, OptimizerSpec  # noqa: E402

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: cuda is available")
def test_cuda_without_gpu_raises_naming_device_and_findings():
    with pytest.raises(DeviceUnavailable, match=r"device=cuda.*no GPU.*found: .*CPU"):
        tfc.resolve_device("cuda", "tensorflow")


def test_auto_and_cpu_resolve():
    assert tfc.resolve_device("cpu", "tensorflow") == ("cpu", "/CPU:0")
    expected = ("cuda", "/GPU:0") if HAS_GPU else ("cpu", "/CPU:0")
    assert tfc.resolve_device("auto", "tensorflow") == expected


def test_unknown_device_is_rejected():
    import backprop_bench.backends.keras_backend as kb

    with pytest.raises(ValueError, match="device='tpu' is not one of cpu, cuda, auto"):
        kb.KerasBackend(MLPSpec((2, 2)), [(np.ones((2, 2)), np.zeros(2))], OptimizerSpec(), device="tpu")


def reference_rule(spec: OptimizerSpec, p, grads):
    """OptimizerSpec's docstring in NumPy: p after each gradient in turn (t = 1, 2, ...)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if spec.name == "sgd":
            p = p - spec.lr * g
        elif spec.name == "momentum":
            v = spec.momentum * v + g
            p = p - spec.lr * v
        else:
            m = spec.beta1 * m + (1 - spec.beta1) * g
            v = spec.beta2 * v + (1 - spec.beta2) * g**2
            p = p - spec.lr * (m / (1 - spec.beta1**t)) / (np.sqrt(v / (1 - spec.beta2**t)) + spec.eps)
    return p


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_optimizer_rule_matches_the_docstring(name):
    spec = OptimizerSpec(name, lr=0.1, momentum=0.8, beta1=0.7, beta2=0.9, eps=1e-3)
    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=(3, 2)), rng.normal(size=(4, 3, 2))
    var = tf.Variable(p0)
    opt = tfc.Optimizer(spec, [var], tf.float64)
    for g in grads:
        opt.apply(var, tf.constant(g), opt.next_step())
    assert int(opt.t.numpy()) == len(grads)
    np.testing.assert_allclose(var.numpy(), reference_rule(spec, p0, grads), rtol=1e-13, atol=0)


def test_losses_match_their_definitions():
    rng = np.random.default_rng(1)
    z, t = rng.normal(size=(5, 3)), np.eye(3)[rng.integers(0, 3, 5)]
    p_soft = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_sig = 1 / (1 + np.exp(-z))
    cases = [
        (MLPSpec((4, 3)), -np.mean(np.sum(t * np.log(p_soft), axis=1))),
        (MLPSpec((4, 3), output_activation="sigmoid", loss="mse"), np.mean((p_sig - t) ** 2)),
        (MLPSpec((4, 3), output_activation="identity", loss="half_sse"), np.mean(0.5 * np.sum((z - t) ** 2, axis=1))),
    ]
    for spec, expected in cases:
        got = float(tfc.loss_from_logits(spec, tf.constant(z), tf.constant(t)))
        assert got == pytest.approx(expected, rel=1e-13), spec.loss


def test_cross_entropy_is_stable_for_large_logits():
    z = tf.constant([[1000.0, 0.0]], tf.float32)
    loss = tfc.loss_from_logits(MLPSpec((2, 2)), z, tf.constant([[0.0, 1.0]], tf.float32))
    assert float(loss) == pytest.approx(1000.0)


def test_frozen_biases_are_not_trainable():
    layers = tfc.make_variables([(np.ones((2, 2)), np.zeros(2))], "float64", "/CPU:0")
    assert len(tfc.Net(MLPSpec((2, 2), train_biases=False), layers).trainable()) == 1
    assert len(tfc.Net(MLPSpec((2, 2)), layers).trainable()) == 2
