"""The Keras 3 backend: fit() with its own options (jit_compile, steps_per_execution).

Parity with NumPy, the worked example, the strategies and determinism are the shared
tests' job; the advanced training features' parity, XLA runs and set_params are
test_tf_common.py's, for both TF backends. Data is tiny: TensorFlow's import (~10 s)
dominates this module.
"""

import os

import numpy as np
import pytest

kb = pytest.importorskip("backprop_bench.backends.keras_backend")
from backend_cases import fit, train  # noqa: E402

from backprop_bench.backends._tf_common import tf  # noqa: E402
from backprop_bench.backends.base import DeviceUnavailable  # noqa: E402
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, Regularization, init_params  # noqa: E402

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))
SPEC = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")


def make(dtype="float64", **kwargs):
    params = init_params(SPEC, InitSpec("glorot_uniform", seed=2, bias=0.05), dtype)
    return kb.KerasBackend(SPEC, params, OptimizerSpec("momentum", lr=0.05), dtype=dtype, **kwargs)


def assert_same_run(a, b, rtol):
    np.testing.assert_allclose(a.step_losses, b.step_losses, rtol=rtol)
    for (w1, b1), (w2, b2) in zip(a.params(), b.params()):
        np.testing.assert_allclose(w1, w2, rtol=rtol, atol=rtol * 1e-2)
        np.testing.assert_allclose(b1, b2, rtol=rtol, atol=rtol * 1e-2)


def test_keras_runs_on_tensorflow():
    import keras

    assert keras.backend.backend() == "tensorflow"
    assert os.environ["KERAS_BACKEND"] == "tensorflow"


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_cuda_without_gpu_raises():
    with pytest.raises(DeviceUnavailable, match="device=cuda.*keras.*no GPU"):
        make(device="cuda")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_end_to_end(dtype, data):
    backend = make(dtype=dtype)
    fit(backend, data, epochs=1)
    assert all(w.dtype == dtype and b.dtype == dtype for w, b in backend.params())
    assert backend.predict(data[0]).dtype == dtype
    assert all(layer.dtype == dtype for layer in backend.model.dense)


def test_float64_data_is_not_cast_to_floatx(data):
    """fit() casts float inputs to floatx (float32); the float64 run must not lose digits."""
    import keras

    backend = make(record_steps=True)
    fit(backend, data, epochs=1)
    assert keras.config.floatx() == "float32"  # restored after fit
    assert backend.step_losses[0] != np.float32(backend.step_losses[0])


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_steps_per_execution_gives_the_same_run(strategy, data):
    """Several steps per call to the device, each still its own update and loss: exact."""
    one, three = (
        make(strategy=strategy, record_steps=True),
        make(strategy=strategy, record_steps=True, steps_per_execution=3),
    )
    fit(one, data, epochs=2, batch=2)  # 5 steps per epoch: 3 + 2 per execution
    fit(three, data, epochs=2, batch=2)
    assert three.step_losses.shape == (5,)
    assert three.info()["steps_per_execution"] == "3"
    assert_same_run(three, one, rtol=1e-14)


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_masks_reach_each_step_through_fit(strategy, data):
    """fit((x, *masks), t): with several steps per execution each step still gets its own mask
    rows (the same run, exactly); one train function serves every epoch, new masks and lr included;
    call() still takes plain x, without masks."""
    dropout = Regularization((0.5, 0.2))
    one = make(strategy=strategy, record_steps=True, regularization=dropout)
    three = make(strategy=strategy, record_steps=True, regularization=dropout, steps_per_execution=3)
    for backend in (one, three):
        train(backend, *data, epochs=1, batch=2, seed=3, masks_seed=1)
    train_function = one.model.train_function
    for backend in (one, three):
        train(backend, *data, epochs=2, batch=2, seed=4, masks_seed=2, lrs=(0.05, 0.01))  # 5 steps: 3 + 2
    assert one.model.train_function is train_function
    assert_same_run(three, one, rtol=1e-14)
    np.testing.assert_array_equal(one.model(tf.constant(data[0])).numpy(), one.predict(data[0]))


@pytest.mark.slow  # compiles (XLA): seconds each
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_jit_compile_matches_plain_fit(strategy, data):
    """XLA fuses element-wise ops, so rounding differs: 1e-12 relative in float64."""
    plain, xla = make(strategy=strategy, record_steps=True), make(strategy=strategy, record_steps=True, compile=True)
    fit(plain, data)
    fit(xla, data)
    assert xla.model.jit_compile is True  # Keras did not quietly turn XLA off
    assert_same_run(xla, plain, rtol=1e-12)


def test_info_names_versions():
    import keras

    info = make().info()
    assert keras.__version__ in info["framework_version"] and tf.__version__ in info["framework_version"]
    assert info["device_name"] and info["blas"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to TensorFlow")
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_gpu_matches_cpu(strategy, data):
    cpu, gpu = make(strategy=strategy, record_steps=True), make(strategy=strategy, record_steps=True, device="cuda")
    assert gpu.device == "cuda"
    fit(cpu, data)
    fit(gpu, data)
    assert_same_run(gpu, cpu, rtol=1e-10)
