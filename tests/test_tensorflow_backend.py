"""The low-level TensorFlow backend: its own options and edges.

Parity with NumPy, the protocol's shared contract (test_backend_contract.py), the worked
example, the strategies and determinism are the shared tests' job (test_parity.py,
test_reference.py, test_strategies.py, test_determinism.py); the advanced training
features' parity, XLA runs and set_params are test_tf_common.py's, for both TF backends.
Data is tiny: TensorFlow's import (~10 s) dominates this module.
"""

import numpy as np
import pytest

tfb = pytest.importorskip("backprop_bench.backends.tensorflow_backend")
from backend_cases import fit, train  # noqa: E402

from backprop_bench.backends._tf_common import tf  # noqa: E402
from backprop_bench.backends.base import DeviceUnavailable  # noqa: E402
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, Regularization, init_params  # noqa: E402

Backend = tfb.TensorflowBackend
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))
SPEC = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")


def make(dtype="float64", **kwargs):
    params = init_params(SPEC, InitSpec("glorot_uniform", seed=2, bias=0.05), dtype)
    return Backend(SPEC, params, OptimizerSpec("adam", lr=0.01), dtype=dtype, **kwargs)


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_cuda_without_gpu_raises():
    with pytest.raises(DeviceUnavailable, match="device=cuda.*tensorflow.*no GPU"):
        make(device="cuda")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_end_to_end(dtype, data):
    backend = make(dtype=dtype)
    fit(backend, data, epochs=1)
    assert all(w.dtype == dtype and b.dtype == dtype for w, b in backend.params())
    assert backend.predict(data[0]).dtype == dtype


@pytest.mark.slow  # compiles (XLA): seconds each
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_xla_matches_plain_tf_function(strategy, data):
    """jit_compile=True fuses element-wise ops, so rounding differs: 1e-12 relative in float64."""
    plain, xla = make(strategy=strategy, record_steps=True), make(strategy=strategy, record_steps=True, compile=True)
    fit(plain, data)
    fit(xla, data)
    assert xla.info()["compile"] == "xla" and plain.info()["compile"] == "off"
    np.testing.assert_allclose(xla.step_losses, plain.step_losses, rtol=1e-12)
    for (w1, b1), (w2, b2) in zip(xla.params(), plain.params()):
        np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b1, b2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_masks_and_lr_changes_trace_the_epoch_once(strategy, data):
    """The masks enter the tf.function as tensors and the lr as a variable: a new epoch's
    masks or learning rate reuse the one trace of the epoch graph."""
    backend = make(strategy=strategy, regularization=Regularization((0.5, 0.2), l2=1e-3))
    train(backend, *data, epochs=3, batch=4, seed=3, masks_seed=1, lrs=(0.01, 0.1, 0.001))
    assert backend._epoch_fn.experimental_get_tracing_count() == 1
    assert float(backend.opt.lr.numpy()) == 0.001


def test_steps_per_execution_is_a_keras_option():
    with pytest.raises(TypeError, match="steps_per_execution"):  # the config names the rule
        make(steps_per_execution=4)


def test_info_names_versions_and_device():
    info = make().info()
    assert info["framework_version"] == tf.__version__
    assert info["device_name"] and info["blas"]
    make().synchronize()  # returns once queued work is done


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to TensorFlow")
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_gpu_matches_cpu(strategy, data):
    cpu, gpu = make(strategy=strategy, record_steps=True), make(strategy=strategy, record_steps=True, device="cuda")
    assert gpu.device == "cuda"
    fit(cpu, data)
    fit(gpu, data)
    np.testing.assert_allclose(gpu.step_losses, cpu.step_losses, rtol=1e-10)
    for (w1, _), (w2, _) in zip(gpu.params(), cpu.params()):
        np.testing.assert_allclose(w1, w2, rtol=1e-10, atol=1e-12)
