"""The TensorFlow math shared by the tensorflow and keras backends, checked piece by piece.

The optimizer rule and the losses are checked against OptimizerSpec's docstring and the
loss definitions in model.py, written out again here in NumPy (float64). The advanced
training features (dropout, l1/l2, rmsprop, AdamW, a changing lr) live in this shared code,
so their float64 parity with the NumPy backend, their XLA runs and set_params are checked
here for both TF backends at once.
"""

import numpy as np
import pytest

tfc = pytest.importorskip("backprop_bench.backends._tf_common")
tf = tfc.tf

from backend_cases import make_backend, params_rel_err, rel_err, train  # noqa: E402

from backprop_bench.backends.base import DeviceUnavailable  # noqa: E402
from backprop_bench.core.specs import (  # noqa: E402
    NO_REGULARIZATION,
    STRATEGIES,
    InitSpec,
    MLPSpec,
    OptimizerSpec,
    Regularization,
    init_params,
)

TF_BACKENDS = ("tensorflow", "keras")

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: cuda is available")
def test_cuda_without_gpu_raises_naming_device_and_findings():
    with pytest.raises(DeviceUnavailable, match=r"device=cuda.*no GPU.*found: .*CPU"):
        tfc.resolve_device("cuda", "tensorflow")


def test_auto_and_cpu_resolve():
    assert tfc.resolve_device("cpu", "tensorflow") == ("cpu", "/CPU:0")
    expected = ("cuda", "/GPU:0") if HAS_GPU else ("cpu", "/CPU:0")
    assert tfc.resolve_device("auto", "tensorflow") == expected


def test_intra_op_threads_reports_what_tf_was_told(monkeypatch):
    """tf.config's setting if any, else $TF_NUM_INTRAOP_THREADS (backends.limit_threads), else the usable CPUs."""
    from backprop_bench.backends.base import usable_cpus

    if tf.config.threading.get_intra_op_parallelism_threads():
        pytest.skip("this process set TF's intra-op threads through tf.config")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert tfc.intra_op_threads() == 3
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    assert tfc.intra_op_threads() == usable_cpus()


def test_unknown_device_is_rejected():
    import backprop_bench.backends.keras_backend as kb

    with pytest.raises(ValueError, match="device='tpu' is not one of cpu, cuda, auto"):
        kb.KerasBackend(MLPSpec((2, 2)), [(np.ones((2, 2)), np.zeros(2))], OptimizerSpec(), device="tpu")


def reference_rule(spec: OptimizerSpec, p, grads, lrs=None, weight=False):
    """OptimizerSpec's docstring in NumPy: p after each gradient in turn (t = 1, 2, ...),
    with lrs[t - 1] as the learning rate of step t (default spec.lr); weight: p is a W (AdamW)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        lr = spec.lr if lrs is None else lrs[t - 1]
        if spec.name == "sgd":
            p = p - lr * g
        elif spec.name == "momentum":
            v = spec.momentum * v + g
            p = p - lr * v
        elif spec.name == "rmsprop":
            v = spec.rho * v + (1 - spec.rho) * g**2
            p = p - lr * g / (np.sqrt(v) + spec.eps)
        else:
            if weight:
                p = p - lr * spec.weight_decay * p
            m = spec.beta1 * m + (1 - spec.beta1) * g
            v = spec.beta2 * v + (1 - spec.beta2) * g**2
            p = p - lr * (m / (1 - spec.beta1**t)) / (np.sqrt(v / (1 - spec.beta2**t)) + spec.eps)
    return p


RULES = {
    "sgd": OptimizerSpec("sgd", lr=0.1),
    "momentum": OptimizerSpec("momentum", lr=0.1, momentum=0.8),
    "adam": OptimizerSpec("adam", lr=0.1, beta1=0.7, beta2=0.9, eps=1e-3),
    "rmsprop": OptimizerSpec("rmsprop", lr=0.1, rho=0.8, eps=1e-3),
    "adamw": OptimizerSpec("adam", lr=0.1, beta1=0.7, beta2=0.9, eps=1e-3, weight_decay=0.3),
}


@pytest.mark.parametrize("weight", [True, False])  # AdamW decays a W, never a b
@pytest.mark.parametrize("name", RULES)
def test_optimizer_rule_matches_the_docstring(name, weight):
    spec = RULES[name]
    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=(3, 2)), rng.normal(size=(4, 3, 2))
    var = tf.Variable(p0)
    opt = tfc.Optimizer(spec, [var], tf.float64)
    for g in grads:
        opt.apply(var, tf.constant(g), opt.next_step(), weight=weight)
    assert int(opt.t.numpy()) == len(grads)
    expected = reference_rule(spec, p0, grads, weight=weight)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-13, atol=0)


def test_set_lr_takes_effect_without_a_retrace():
    """The lr is a variable the traced step reads: a new value needs no new trace."""
    spec = RULES["momentum"]
    rng = np.random.default_rng(1)
    p0, grads = rng.normal(size=(3, 2)), rng.normal(size=(3, 3, 2))
    var = tf.Variable(p0)
    opt = tfc.Optimizer(spec, [var], tf.float64)
    step = tf.function(lambda g: opt.apply(var, g, opt.next_step()))
    for g, lr in zip(grads, (0.1, 0.5, 0.02)):
        opt.set_lr(lr)
        step(tf.constant(g))
    assert step.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(var.numpy(), reference_rule(spec, p0, grads, lrs=(0.1, 0.5, 0.02)), rtol=1e-13)


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


# --- regularization in the shared steps ------------------------------------------------------

SPEC = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")


def test_penalty_gradient_is_l1_sign_plus_2_l2_w_with_sign_0_0():
    """Parallel's penalty sits on the tape: autograd's gradient must be the rule's, tf.abs's 0 at 0."""
    w = tf.Variable([[0.0, -2.0], [0.5, 0.0]], dtype=tf.float64)
    net = tfc.Net(MLPSpec((2, 2)), [(w, tf.Variable(tf.zeros(2, tf.float64)))], reg=Regularization(l1=0.3, l2=0.2))
    with tf.GradientTape() as tape:
        penalty = net.penalty()
    grad = tape.gradient(penalty, w).numpy()
    w0 = w.numpy()
    assert float(penalty) == pytest.approx(net.reg.penalty([w0]), rel=1e-15)
    np.testing.assert_array_equal(grad, 0.3 * np.sign(w0) + 0.4 * w0)  # entries at 0: exactly 0
    np.testing.assert_array_equal(net.penalty_grad(w).numpy(), grad)  # the sequential step's own term


def test_masked_activation_gradient_carries_the_mask():
    """The sequential step's tape.gradient(acts[l + 1], zs[l], upstream) is upstream * mask * f'(z)."""
    rng = np.random.default_rng(2)
    params = init_params(SPEC, InitSpec("glorot_uniform", seed=1), "float64")
    net = tfc.Net(SPEC, tfc.make_variables(params, "float64", "/CPU:0"))
    x = tf.constant(rng.normal(size=(7, 6)))
    masks = [tf.constant((rng.random((7, h)) > 0.4) / 0.6) for h in (5, 4)]
    upstream = tf.constant(rng.normal(size=(7, 5)))
    with tf.GradientTape() as tape:
        zs, acts = net.forward(x, masks)
    got = tape.gradient(acts[1], zs[0], output_gradients=upstream).numpy()
    h, mask = tf.tanh(zs[0]).numpy(), masks[0].numpy()
    np.testing.assert_array_equal(acts[1].numpy(), h * mask)
    assert rel_err(got, upstream.numpy() * mask * (1 - h**2)) <= 1e-15  # TF's tanh' rounds in its own order
    assert np.all(got[mask == 0] == 0) and np.all(got[mask != 0] != 0)


# --- the features end to end (cross-backend parity of each: tests/test_training_parity.py) -----

N, EPOCHS, BATCH = 40, 3, 12  # 4 steps an epoch, the last one short (4 rows): mask slicing at the edge
PARITY_TOL = 1e-9
DROPOUT = Regularization((0.3, 0.2))
# feature -> (optimizer, regularization, learning rate per epoch or None)
FEATURES = {
    "dropout": (OptimizerSpec("momentum", lr=0.05), DROPOUT, None),
    "l1_l2": (OptimizerSpec("sgd", lr=0.1), Regularization(l1=1e-2, l2=1e-2), None),
    "rmsprop": (OptimizerSpec("rmsprop", lr=1e-2), NO_REGULARIZATION, None),
    "adamw": (OptimizerSpec("adam", lr=1e-2, weight_decay=0.1), NO_REGULARIZATION, None),
    "lr_change": (OptimizerSpec("momentum", lr=0.05), NO_REGULARIZATION, (0.05, 0.2, 0.01)),
}


def feature_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 6)), rng.integers(0, 3, N)


def run(framework, strategy, optimizer, reg, lrs, **kwargs):
    """(step losses (EPOCHS * 4,), final params, backend) of one 3-epoch run."""
    params = init_params(SPEC, InitSpec("glorot_uniform", seed=2, bias=0.05), "float64")
    backend = make_backend(framework, SPEC, params, optimizer, strategy=strategy, regularization=reg, **kwargs)
    x, y = feature_data()
    _, steps = train(backend, x, y, EPOCHS, BATCH, seed=7, masks_seed=5 if reg.has_dropout else None, lrs=lrs)
    return steps, backend.params(), backend


# Each XLA compile costs seconds: one new rule per strategy, each with every other feature on.
XLA_CASES = {
    "parallel": OptimizerSpec("rmsprop", lr=1e-2),
    "sequential": OptimizerSpec("adam", lr=1e-2, weight_decay=0.1),
}


@pytest.mark.slow  # compiles (XLA): seconds each
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", TF_BACKENDS)
def test_xla_runs_the_features(framework, strategy):
    """compile=True with dropout, l1/l2, a changing lr and rmsprop or AdamW at once gives the
    plain run's numbers (XLA fuses element-wise ops, so rounding differs: 1e-12 relative in float64)."""
    case = (XLA_CASES[strategy], Regularization((0.3, 0.2), l1=1e-2, l2=1e-2), (0.01, 0.03, 0.005))
    plain_steps, plain_params, _ = run(framework, strategy, *case)
    xla_steps, xla_params, xla = run(framework, strategy, *case, compile=True)
    assert xla.info()["compile"].startswith("xla")
    loss_err, weight_err = rel_err(xla_steps, plain_steps), params_rel_err(xla_params, plain_params)
    print(f"xla {framework} {strategy} {case[0].name}: losses {loss_err:.2e}, weights {weight_err:.2e}")
    assert loss_err <= 1e-12
    assert weight_err <= 1e-12


@pytest.mark.parametrize("framework", TF_BACKENDS)
def test_set_params_round_trip_keeps_optimizer_state(framework):
    """set_params overwrites every W and b (read back exactly) and leaves the optimizer alone:
    an epoch after restoring the initial weights is NumPy's epoch after the same restore."""
    start = init_params(SPEC, InitSpec("glorot_uniform", seed=2, bias=0.05), "float64")
    after = []
    for name in ("numpy", framework):
        steps, params, backend = run(name, "parallel", *FEATURES["adamw"])
        backend.set_params(params)
        assert params_rel_err(backend.params(), params) == 0.0
        backend.set_params(start)
        assert params_rel_err(backend.params(), start) == 0.0
        backend.train_epoch(np.random.default_rng(9).permutation(N), BATCH)  # adam's t, m, v go on from step 12
        after.append((backend.step_losses, backend.params()))
    (ref_steps, ref_params), (got_steps, got_params) = after
    assert rel_err(got_steps, ref_steps) <= PARITY_TOL and params_rel_err(got_params, ref_params) <= PARITY_TOL
    assert int(backend.opt.t.numpy()) == len(steps) + len(got_steps)


def test_masks_are_checked_by_the_base():
    """Missing or misshapen masks stop at Backend._check_masks' message (shared by every backend)."""
    params = init_params(SPEC, InitSpec("glorot_uniform", seed=2), "float64")
    x, y = feature_data()
    backend, plain = (
        make_backend("tensorflow", SPEC, params, OptimizerSpec(), regularization=r)
        for r in (DROPOUT, NO_REGULARIZATION)
    )
    backend.load(x, y)
    plain.load(x, y)
    order = np.arange(N)
    with pytest.raises(ValueError, match="needs the epoch's masks"):
        backend.train_epoch(order, BATCH)
    for wrong in ([np.ones((N, 5))], [np.ones((N, 5)), np.ones((N, 3))], [np.ones((N - 1, 5)), np.ones((N - 1, 4))]):
        with pytest.raises(ValueError, match=r"one \(N=40, hidden\) array per hidden layer \(5, 4\)"):
            backend.train_epoch(order, BATCH, wrong)  # a layer missing, a wrong width, another epoch's length
    with pytest.raises(ValueError, match="no dropout"):
        plain.train_epoch(order, BATCH, [np.ones((N, 5)), np.ones((N, 4))])
