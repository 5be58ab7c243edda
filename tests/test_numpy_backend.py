"""The NumPy backend's own behaviour, plain (numpy_backend.py) and fast (numpy_fast.py):
devices, dtypes, the contract's details, the optimizer rule. (Gradients: test_gradients.py;
cross-backend: test_parity.py & co.; plain == fast bit for bit: test_numpy_fast.py.)"""

import sys
import types

import numpy as np
import pytest
from conftest import frameworks_imported_by

from backprop_bench.backends import DeviceUnavailable, numpy_backend
from backprop_bench.backends.numpy_backend import NumpyBackend
from backprop_bench.backends.numpy_fast import NumpyFastBackend
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SPEC = MLPSpec((6, 5, 4, 3), "relu", "softmax", "cross_entropy")


@pytest.fixture(params=[NumpyBackend, NumpyFastBackend], ids=["plain", "fast"])
def cls(request):
    """Every contract test runs against both the plain and the fast path."""
    return request.param


def backend(spec=SPEC, optimizer=None, cls=NumpyBackend, **kwargs):
    params = init_params(spec, InitSpec("he_normal", seed=1, bias=0.05), kwargs.get("dtype", "float32"))
    if cls is NumpyFastBackend:
        kwargs["compile"] = True
    return cls(spec, params, optimizer or OptimizerSpec("momentum", lr=0.1), **kwargs)


def data(n=10, seed=0, n_in=6, n_out=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


# ---------------------------------------------------------------- devices


def test_cuda_without_cupy_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(DeviceUnavailable, match="device=cuda for framework=numpy.*cupy is not installed"):
        backend(device="cuda")


def test_cuda_with_cupy_but_no_gpu_raises(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.SimpleNamespace(
        __version__="13.0.0", cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    )
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(DeviceUnavailable, match="cupy 13.0.0 is installed but CUDA is not usable.*no CUDA-capable"):
        backend(device="cuda")


def test_auto_falls_to_cpu_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert backend(device="auto").device == "cpu"
    assert backend(device="cpu").device == "cpu"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"device": "tpu"}, "device='tpu' is not one of cpu, cuda, auto"),
        ({"strategy": "backwards"}, "strategy='backwards' is not one of parallel, sequential"),
        ({"dtype": "float16"}, "dtype='float16' is not one of float32, float64"),
        ({"compile": True}, "compile=True has no meaning for framework=numpy"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        backend(**kwargs)


def test_keras_only_option_is_not_a_numpy_argument():
    with pytest.raises(TypeError, match="steps_per_execution"):
        backend(steps_per_execution=4)


def test_init_must_match_the_spec():
    params = init_params(MLPSpec((6, 5, 3)), InitSpec(seed=0))
    with pytest.raises(ValueError, match=r"init has 2 layers, model.sizes \[6, 5, 4, 3\] needs 3"):
        NumpyBackend(SPEC, params, OptimizerSpec())
    params = init_params(MLPSpec((6, 4, 4, 3)), InitSpec(seed=0))
    with pytest.raises(ValueError, match=r"init layer 0: W must be \(6, 5\)"):
        NumpyBackend(SPEC, params, OptimizerSpec())


@pytest.mark.gpu
def test_cuda_matches_cpu(cls):
    cupy, why_not = numpy_backend.find_cupy()
    if cupy is None:
        pytest.skip(f"no GPU for CuPy: {why_not}")
    x, y = data(n=64)
    results = {}
    for device in ("cpu", "cuda"):
        b = backend(device=device, dtype="float64", record_steps=True, cls=cls)
        assert b.device == device
        b.load(x, y)
        b.train_epoch(np.arange(64), 16)
        b.synchronize()
        results[device] = (b.step_losses, b.params(), b.predict(x))
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-10)
    for (wc, bc), (w, b_) in zip(results["cuda"][1], results["cpu"][1]):
        np.testing.assert_allclose(wc, w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bc, b_, rtol=1e-9, atol=1e-12)
    assert isinstance(results["cuda"][2], np.ndarray)


# ---------------------------------------------------------------- imports


def test_numpy_run_never_imports_a_framework():
    code = """
import sys
import numpy as np
from backprop_bench.backends import make_backend
from backprop_bench.core.specs import MLPSpec, InitSpec, OptimizerSpec, init_params
spec = MLPSpec((4, 3, 2))
b = make_backend("numpy", spec, init_params(spec, InitSpec()), OptimizerSpec(), device="auto")
b2 = make_backend("numpy", spec, init_params(spec, InitSpec()), OptimizerSpec(), compile=True)
b2.load(np.random.default_rng(0).random((8, 4)), np.arange(8) % 2); b2.train_epoch(np.arange(8), 4)
b.load(np.random.default_rng(0).random((8, 4)), np.arange(8) % 2)
b.train_epoch(np.arange(8), 4); b.evaluate(np.zeros((2, 4)), np.array([0, 1])); b.info()
"""
    assert frameworks_imported_by(code) == []


# ---------------------------------------------------------------- dtypes


def test_float32_stays_float32(cls):
    b = backend(dtype="float32", optimizer=OptimizerSpec("adam"), record_steps=True, cls=cls)
    x, y = data(n=20)
    b.load(x, y)  # float64 in, float32 inside
    with np.errstate(all="raise"):
        b.train_epoch(np.arange(20), 8)
    arrays = [a for layer in b.layers for a in (layer.W, layer.b)] + [b._x, b._t]
    if cls is NumpyFastBackend:  # its flat vectors and work buffers
        ws = b._train_ws
        arrays += [b.flat, b.grads, *b.optimizer.state, *ws.inp, ws.t, ws.p, ws.z_out, ws.logp, ws.col, *ws.d]
    else:
        arrays += [a for state in b.optimizer.state.values() for a in state]
    assert {a.dtype for a in arrays} == {np.dtype(np.float32)}
    assert all(w.dtype == np.float32 and bias.dtype == np.float32 for w, bias in b.params())
    assert b.predict(x).dtype == np.float32


def test_float32_close_to_float64(cls):
    x, y = data(n=20)
    out = {}
    for dtype in ("float32", "float64"):
        b = backend(cls=cls, dtype=dtype)
        b.load(x, y)
        out[dtype] = b.train_epoch(np.arange(20), 8), b.params()
    assert out["float32"][0] == pytest.approx(out["float64"][0], rel=1e-5)
    for (w32, _), (w64, _) in zip(out["float32"][1], out["float64"][1]):
        np.testing.assert_allclose(w32, w64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the contract


def test_step_losses_only_when_asked(cls):
    x, y = data(n=10)
    quiet = backend(cls=cls)
    quiet.load(x, y)
    quiet.train_epoch(np.arange(10), 4)
    assert quiet.step_losses is None
    loud = backend(cls=cls, record_steps=True)
    loud.load(x, y)
    mean = loud.train_epoch(np.arange(10), 4)
    assert loud.step_losses.dtype == np.float64 and loud.step_losses.shape == (3,)
    # the epoch loss is the sample-weighted mean: batches of 4, 4 and 2
    assert mean == pytest.approx(np.dot(loud.step_losses, [4, 4, 2]) / 10, rel=1e-12)


def test_short_last_batch_is_one_step_of_its_own(cls):
    x, y = data(n=10)
    order = np.random.default_rng(3).permutation(10)
    whole = backend(cls=cls, dtype="float64", record_steps=True)
    whole.load(x, y)
    whole.train_epoch(order, 4)
    sliced = backend(cls=cls, dtype="float64", record_steps=True)
    sliced.load(x, y)
    losses = []
    for part in (order[:4], order[4:8], order[8:]):  # the same three steps, one call each
        sliced.train_epoch(part, 4)
        losses.extend(sliced.step_losses)
    np.testing.assert_array_equal(whole.step_losses, losses)
    for (w1, b1), (w2, b2) in zip(whole.params(), sliced.params()):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)


def test_batch_larger_than_data_is_one_step(cls):
    x, y = data(n=5)
    b = backend(cls=cls, record_steps=True)
    b.load(x, y)
    b.train_epoch(np.arange(5), 64)
    assert b.step_losses.shape == (1,)


def test_loss_is_measured_before_the_update(cls):
    x, y = data(n=8)
    b = backend(cls=cls, dtype="float64", record_steps=True)
    before = b.evaluate(x, y)[0]
    b.load(x, y)
    b.train_epoch(np.arange(8), 8)
    assert b.step_losses[0] == pytest.approx(before, rel=1e-12)
    assert b.evaluate(x, y)[0] < before


def test_evaluate_and_predict(monkeypatch, cls):
    x, y = data(n=30)
    b = backend(cls=cls, dtype="float64")
    b.load(x, y)
    b.train_epoch(np.arange(30), 8)
    probs = b.predict(x)
    assert probs.shape == (30, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    loss, acc = b.evaluate(x, y)
    assert isinstance(loss, float) and isinstance(acc, float)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(30), y])), rel=1e-12)
    assert acc == np.mean(probs.argmax(axis=1) == y)
    # chunked evaluation (7 rows at a time) gives the same answers
    monkeypatch.setattr(cls, "EVAL_CHUNK", 7)
    np.testing.assert_allclose(b.predict(x), probs, rtol=1e-14)
    assert b.evaluate(x, y) == pytest.approx((loss, acc), rel=1e-12)


def test_constant_biases_stay_constant(cls):
    spec = MLPSpec((6, 5, 3), "sigmoid", "sigmoid", "half_sse", train_biases=False)
    x, y = data(n=12)
    b = backend(cls=cls, spec=spec, optimizer=OptimizerSpec("adam", lr=0.05))
    b.load(x, y)
    b.train_epoch(np.arange(12), 4)
    initial = init_params(spec, InitSpec("he_normal", seed=1, bias=0.05), "float32")
    for (w, bias), (w0, b0) in zip(b.params(), initial):
        np.testing.assert_array_equal(bias, b0)
        assert not np.array_equal(w, w0)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda b: b.train_epoch(np.arange(4), 2), r"train_epoch\(\) before load\(x, y\)"),
        (lambda b: b.load(np.zeros((4, 5)), np.zeros(4, int)), r"x must have shape \(N, 6\), got \(4, 5\)"),
        (lambda b: b.load(np.zeros((4, 6)), np.zeros(3, int)), "x has 4 rows but y has 3"),
        (lambda b: b.load(np.zeros((4, 6)), np.zeros((4, 2))), "targets have 2 columns, the model has 3 outputs"),
    ],
)
def test_bad_input_is_rejected(call, message, cls):
    with pytest.raises((ValueError, RuntimeError), match=message):
        call(backend(cls=cls))


def test_order_out_of_range_is_rejected(cls):
    b = backend(cls=cls)
    b.load(*data(n=4))
    with pytest.raises(ValueError, match=r"order holds indices outside \[0, 4\)"):
        b.train_epoch(np.array([0, 1, 4]), 2)


def test_info_names_versions_and_hardware(cls):
    info = backend(cls=cls).info()
    assert info["framework"] == "numpy" and info["framework_version"] == np.__version__
    assert info["device_name"] and info["blas"]


# ---------------------------------------------------------------- the optimizer rule


def rule(name, p, g, state, t, lr=0.1, mu=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """OptimizerSpec's docstring, written out plainly."""
    if name == "sgd":
        return p - lr * g
    if name == "momentum":
        state["v"] = mu * state.get("v", 0) + g
        return p - lr * state["v"]
    state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
    state["v"] = b2 * state.get("v", 0) + (1 - b2) * g**2
    return p - lr * (state["m"] / (1 - b1**t)) / (np.sqrt(state["v"] / (1 - b2**t)) + eps)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_optimizer_follows_the_written_rule(name, cls):
    spec = MLPSpec((6, 3), "relu", "identity", "mse")
    x, y = np.random.default_rng(4).normal(size=(9, 6)), np.random.default_rng(5).normal(size=(9, 3))
    optimizer = OptimizerSpec(name, lr=0.1)
    b = backend(cls=cls, spec=spec, optimizer=optimizer, dtype="float64")
    b.load(x, y)
    b.train_epoch(np.arange(9), 3)  # 3 steps, t = 1, 2, 3

    ((w, bias),) = init_params(spec, InitSpec("he_normal", seed=1, bias=0.05), "float64")
    sw, sb = {}, {}
    for t, rows in enumerate((slice(0, 3), slice(3, 6), slice(6, 9)), start=1):
        probe = NumpyBackend(spec, [(w, bias)], OptimizerSpec(), dtype="float64")
        ((gw, gb),) = probe.loss_and_gradients(x[rows], y[rows])[1]
        w, bias = rule(name, w, gw, sw, t), rule(name, bias, gb, sb, t)
    ((got_w, got_b),) = b.params()
    np.testing.assert_allclose(got_w, w, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(got_b, bias, rtol=1e-13, atol=1e-15)
