"""The stock framework idioms (bench/stock.py) do the backends' arithmetic, so the bench
compares like with like: after one epoch of plain SGD from the same initial weights, each
ends at the NumPy backend's weights and loss (float32 rounding apart); the JAX idiom also
at the JAX backend's, in float64.

    .venv/bin/python -m pytest tests/test_bench_stock.py -x -q
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frameworks_imported_by

from backprop_bench.backends import make_backend
from backprop_bench.bench.stock import make_stock
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SPEC = MLPSpec((784, 32, 16, 10))
LR = 0.05


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.random((200, 784), dtype=np.float32)
    y = rng.integers(0, 10, 200)
    init = init_params(SPEC, InitSpec(seed=0), "float32")
    order = rng.permutation(200)
    ref = make_backend(
        "numpy", SPEC, init, OptimizerSpec("sgd", lr=LR), strategy="parallel", device="cpu", dtype="float32"
    )
    ref.load(x, y)
    loss = ref.train_epoch(order, 64)  # 4 steps, the last one short (8 rows)
    return x, y, init, order, loss, ref.params()


@pytest.mark.parametrize(
    "framework, compile, spe",
    [
        ("torch", False, 1),
        pytest.param("torch", True, 1, marks=pytest.mark.slow),  # torch.compile: tens of seconds
        ("tensorflow", False, 1),
        ("tensorflow", True, 1),
        ("keras", False, 1),
        ("keras", True, 2),
        ("jax", False, 1),
    ],
)
def test_stock_model_matches_the_numpy_backend(problem, framework, compile, spe):
    x, y, init, order, ref_loss, ref_params = problem
    extra = {"steps_per_execution": spe} if framework == "keras" else {}
    model = make_stock(framework, SPEC, init, LR, compile=compile, **extra)
    model.load(x, y)
    loss = model.train_epoch(order, 64)
    model.synchronize()
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for (w, b), (rw, rb) in zip(model.params(), ref_params):
        np.testing.assert_allclose(w, rw, atol=1e-6)
        np.testing.assert_allclose(b, rb, atol=1e-6)
    info = model.info()
    assert info["framework_version"] and info["framework"] == framework
    assert (info["compile"] != "off") == compile


def test_stock_needs_the_bench_kind_of_mlp():
    spec = MLPSpec((4, 3, 2), hidden_activation="sigmoid")
    with pytest.raises(ValueError, match="hidden_activation=relu"):
        make_stock("torch", spec, init_params(spec, InitSpec()), LR)


def test_unknown_framework_and_spe_are_named():
    init = init_params(SPEC, InitSpec(), "float32")
    with pytest.raises(ValueError, match="no stock model for framework='numpy'"):
        make_stock("numpy", SPEC, init, LR)
    with pytest.raises(TypeError, match="steps_per_execution"):  # a Keras option only
        make_stock("torch", SPEC, init, LR, steps_per_execution=4)


def test_train_epoch_before_load_says_so():
    model = make_stock("torch", SPEC, init_params(SPEC, InitSpec(), "float32"), LR)
    with pytest.raises(RuntimeError, match="before load"):
        model.train_epoch(np.arange(4), 2)


def test_importing_the_module_imports_no_framework():
    assert frameworks_imported_by("import backprop_bench.bench.stock") == []


def test_the_bench_clock_times_a_stock_model():
    """timed_epoch (the trainer's and the bench's clock) passes masks=None: the stock models take it."""
    from backprop_bench.backends.base import timed_epoch

    init = init_params(SPEC, InitSpec(seed=1), "float32")
    model = make_stock("torch", SPEC, init, LR)
    rng = np.random.default_rng(0)
    model.load(rng.random((40, SPEC.sizes[0]), dtype=np.float32), rng.integers(0, SPEC.sizes[-1], 40))
    loss, seconds = timed_epoch(model, np.arange(40), 16)
    assert np.isfinite(loss) and seconds > 0
    with pytest.raises(ValueError, match="masks must be None"):
        model.train_epoch(np.arange(40), 16, [np.ones((40, 4))])


# ---------------------------------------------------------------- the JAX idiom (Flax + optax)


def test_stock_jax_matches_the_jax_backend_in_float64():
    """Flax + optax's jitted train_step against the JAX backend (parallel, plain SGD), from the
    same float64 weights over the same order, two epochs with a short last batch each."""
    rng = np.random.default_rng(1)
    x, y = rng.random((200, 784)), rng.integers(0, 10, 200)
    init = init_params(SPEC, InitSpec(seed=2), "float64")
    orders = [rng.permutation(200) for _ in range(2)]
    ref = make_backend("jax", SPEC, init, OptimizerSpec("sgd", lr=LR), strategy="parallel", dtype="float64")
    model = make_stock("jax", SPEC, init, LR)
    losses = []
    for m in (ref, model):
        m.load(x, y)
        losses.append([m.train_epoch(order, 64) for order in orders])
    model.synchronize()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)
    for (w, b), (rw, rb), (w0, _) in zip(model.params(), ref.params(), init):
        assert w.dtype == b.dtype == np.float64
        np.testing.assert_allclose(w, rw, rtol=0, atol=1e-12 * np.abs(rw).max())
        np.testing.assert_allclose(b, rb, rtol=0, atol=1e-12 * np.abs(rb).max())
        assert np.abs(w - w0).max() > 1e-3  # two epochs moved the weights
    info = model.info()
    assert info["framework"] == "jax" and info["compile"] == "off"
    assert "flax" in info["framework_version"] and "optax" in info["framework_version"]


def test_stock_jax_has_no_compile_option_and_imports_neither_torch_nor_tensorflow():
    init = init_params(SPEC, InitSpec(), "float32")
    with pytest.raises(ValueError, match="stock jax: compile=True has no meaning"):
        make_stock("jax", SPEC, init, LR, compile=True)
    code = (
        "import numpy as np\n"
        "from backprop_bench.bench.stock import make_stock\n"
        "from backprop_bench.core.specs import InitSpec, MLPSpec, init_params\n"
        "spec = MLPSpec((4, 3, 2))\n"
        "m = make_stock('jax', spec, init_params(spec, InitSpec(), 'float32'), 0.1)\n"
        "m.load(np.ones((6, 4), np.float32), np.arange(6) % 2)\n"
        "m.train_epoch(np.arange(6), 4)"
    )
    assert frameworks_imported_by(code) == ["jax"]
