"""Native mode's backend hooks: each framework's own default init and shuffling, seeded.

docs/native.md states the rules these tests hold every framework to. TensorFlow's import
(~8 s) dominates this module; the draws themselves are small.
"""

import itertools
import math
import pickle
import random
import sys

import numpy as np
import pytest
from backend_cases import IN_PROCESS as FRAMEWORKS  # keras-jax and keras-torch: tests/test_keras_on.py
from conftest import frameworks_imported_by

from backprop_bench.backends import backend_class
from backprop_bench.backends.base import Backend
from backprop_bench.core.specs import MLPSpec

SPEC = MLPSpec((784, 128, 10))  # one 784x128 layer: 100352 draws pin the distribution down
SMALL = MLPSpec((6, 5, 4, 3))


def native(framework: str) -> type[Backend]:
    if framework != "numpy":  # skipped where the framework is not installed
        pytest.importorskip(f"backprop_bench.backends.{framework}_backend")
    return backend_class(framework)


@pytest.fixture(params=FRAMEWORKS)
def cls(request) -> type[Backend]:
    return native(request.param)


def orders(cls, n=50, epochs=3, seed=0) -> list[np.ndarray]:
    return list(cls.native_orders(n, epochs, seed))


# ---------------------------------------------------------------- native_init


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_native_init_has_the_spec_shapes_and_dtype(cls, dtype):
    params = cls.native_init(SMALL, 0, dtype)
    assert [(w.shape, b.shape) for w, b in params] == [((i, o), (o,)) for i, o in SMALL.shapes()]
    for w, b in params:
        assert w.dtype == dtype and b.dtype == dtype
        assert isinstance(w, np.ndarray) and w.flags.c_contiguous


def test_native_init_is_deterministic_per_seed(cls):
    first, again, other = (cls.native_init(SMALL, seed, "float64") for seed in (3, 3, 4))
    for (w1, b1), (w2, b2), (w3, _) in zip(first, again, other):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
        assert not np.array_equal(w1, w3)


def test_native_init_dtype_only_casts(cls):
    """float32 and float64 runs start from the same weights, up to float32 rounding."""
    for (w32, b32), (w64, b64) in zip(cls.native_init(SMALL, 1, "float32"), cls.native_init(SMALL, 1, "float64")):
        np.testing.assert_array_equal(w32, w64.astype(np.float32))
        np.testing.assert_array_equal(b32, b64.astype(np.float32))


def test_native_init_rejects_a_bad_dtype(cls):
    with pytest.raises(ValueError, match="train.dtype='float16' is not one of float32, float64"):
        cls.native_init(SMALL, 0, "float16")


# framework -> (bound on |W| or None, expected std of W, bias bound: 0 means zeros)
FAN_IN, FAN_OUT = SPEC.shapes()[0]
GLOROT = math.sqrt(6 / (FAN_IN + FAN_OUT))
DISTRIBUTIONS = {
    "numpy": (None, math.sqrt(1 / FAN_IN), 0.0),  # randn * sqrt(1/fan_in)
    "torch": (1 / math.sqrt(FAN_IN), 1 / math.sqrt(FAN_IN) / math.sqrt(3), 1 / math.sqrt(FAN_IN)),  # U(+-1/sqrt(in))
    "tensorflow": (GLOROT, GLOROT / math.sqrt(3), 0.0),  # Glorot uniform
    "keras": (GLOROT, GLOROT / math.sqrt(3), 0.0),
    # lecun_normal: a normal truncated at 2 stds, rescaled to std sqrt(1/fan_in) (0.8796: the truncated std)
    "jax": (2 * math.sqrt(1 / FAN_IN) / 0.87962566103423978, math.sqrt(1 / FAN_IN), 0.0),
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_native_init_matches_the_documented_distribution(framework):
    bound, std, bias_bound = DISTRIBUTIONS[framework]
    w, b = native(framework).native_init(SPEC, 0, "float64")[0]
    assert w.std() == pytest.approx(std, rel=0.02)
    assert abs(w.mean()) < 0.02 * std  # ~6 standard errors of the mean
    if bound is not None:
        assert np.abs(w).max() <= bound * (1 + 1e-6)  # a float32 bound may round up by an ulp
        assert np.abs(w).max() > 0.99 * bound  # the whole range is used: not a narrower law
    if bias_bound == 0:
        np.testing.assert_array_equal(b, 0)
    else:
        assert np.abs(b).max() <= bias_bound * (1 + 1e-6) and np.unique(b).size == b.size


def test_torch_native_init_equals_nn_linear_after_manual_seed():
    torch = pytest.importorskip("torch")
    with torch.random.fork_rng(devices=[]):  # the global seed is set and restored only here
        torch.manual_seed(7)
        linears = [torch.nn.Linear(i, o) for i, o in SMALL.shapes()]
    for (w, b), linear in zip(native("torch").native_init(SMALL, 7, "float32"), linears):
        np.testing.assert_array_equal(w, linear.weight.detach().numpy().T)
        np.testing.assert_array_equal(b, linear.bias.detach().numpy())


def test_torch_native_init_is_kaiming_uniform_with_the_generator():
    torch = pytest.importorskip("torch")
    weight = torch.empty(5, 6)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(native("torch").native_init(SMALL, 2, "float32")[0][0], weight.numpy().T)


def test_keras_dense_defaults_are_glorot_uniform_and_zeros():
    kb = pytest.importorskip("backprop_bench.backends.keras_backend")  # first: it picks Keras's backend
    keras = kb.keras
    dense = keras.layers.Dense(3)
    assert isinstance(dense.kernel_initializer, keras.initializers.GlorotUniform)
    assert isinstance(dense.bias_initializer, keras.initializers.Zeros)
    seeded = keras.initializers.GlorotUniform(seed=kb.native_seed(5, 1))((5, 4), dtype="float32")
    np.testing.assert_array_equal(kb.KerasBackend.native_init(SMALL, 5, "float32")[1][0], seeded.numpy())


def test_native_inits_differ_between_frameworks():
    inits = {fw: native(fw).native_init(SMALL, 0, "float64") for fw in FRAMEWORKS}
    for a, b in itertools.combinations(FRAMEWORKS, 2):
        assert not np.allclose(inits[a][0][0], inits[b][0][0]), (a, b)


def test_numpy_fast_inherits_the_numpy_hooks():
    fast, plain = backend_class("numpy", compile=True), backend_class("numpy")
    assert fast is not plain
    for (w1, _), (w2, _) in zip(fast.native_init(SMALL, 0, "float32"), plain.native_init(SMALL, 0, "float32")):
        np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(np.stack(orders(fast)), np.stack(orders(plain)))


def test_base_declares_the_hooks_unimplemented():
    with pytest.raises(NotImplementedError):
        Backend.native_init(SMALL, 0, "float32")
    with pytest.raises(NotImplementedError):
        Backend.native_orders(5, 1, 0)


# ---------------------------------------------------------------- native_orders


def test_native_orders_are_one_permutation_per_epoch(cls):
    got = orders(cls, n=50, epochs=3)
    assert len(got) == 3
    for order in got:
        assert order.dtype == np.int64 and order.shape == (50,)
        np.testing.assert_array_equal(np.sort(order), np.arange(50))
    assert not np.array_equal(got[0], got[1]) and not np.array_equal(got[1], got[2])


def test_native_orders_are_deterministic_per_seed(cls):
    first, again, other = (np.stack(orders(cls, seed=seed)) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_native_orders_differ_between_frameworks():
    got = {fw: np.stack(orders(native(fw))) for fw in FRAMEWORKS}
    for a, b in itertools.combinations(FRAMEWORKS, 2):
        assert not np.array_equal(got[a], got[b]), (a, b)


def test_torch_native_orders_equal_a_shuffling_dataloader():
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(
        list(range(50)), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(11)
    )
    epochs = [np.concatenate([batch.numpy() for batch in loader]) for _ in range(3)]
    np.testing.assert_array_equal(np.stack(orders(native("torch"), seed=11)), np.stack(epochs))


def test_numpy_native_orders_replay_the_seeded_global_permutation():
    state = np.random.get_state()
    try:
        np.random.seed(9)
        expected = [np.random.permutation(50) for _ in range(3)]
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(np.stack(orders(native("numpy"), seed=9)), np.stack(expected))


# ---------------------------------------------------------------- no global state, no imports


def global_rng_states() -> list:
    """Every global RNG these frameworks keep: Python's, NumPy's legacy one, torch's, TF's."""
    states = [random.getstate(), pickle.dumps(np.random.get_state())]
    if "torch" in sys.modules:
        states.append(sys.modules["torch"].random.get_rng_state().numpy().tobytes())
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        # the global generator, and the global seed tf.random.set_seed would set: (None, None) while unset
        states += [tf.random.get_global_generator().state.numpy().tobytes(), tf.compat.v1.get_seed(None)]
    return states


def test_native_hooks_leave_global_rng_state_alone(cls):
    pytest.importorskip("torch")
    global_rng_states()  # first call creates TF's global generator, if TF is loaded
    before = global_rng_states()
    cls.native_init(SMALL, 0, "float32")
    orders(cls)
    assert global_rng_states() == before


def test_numpy_native_hooks_never_import_a_framework():
    code = """
import sys
from backprop_bench.backends import backend_class
from backprop_bench.core.specs import MLPSpec
for compile in (False, True):
    cls = backend_class("numpy", compile)
    cls.native_init(MLPSpec((4, 3, 2)), 0, "float32")
    list(cls.native_orders(8, 2, 0))
"""
    assert frameworks_imported_by(code) == []
