"""The JAX backend's own contract: devices, dtypes, compiled steps, native mode, imports.

Cross-backend agreement (worked example, parity, training features, gradients, determinism)
is in the shared test modules, run for jax with ``-k jax``. Here: what only jax has.
"""

import jax
import numpy as np
import pytest
from backend_cases import make_backend, params_rel_err, rel_err
from conftest import frameworks_imported_by

from backprop_bench.backends import DeviceUnavailable
from backprop_bench.backends.base import usable_cpus
from backprop_bench.backends.jax_backend import EPOCH_SCAN, STEP_AT, JaxBackend, intra_op_threads, resolve_device
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, Regularization, init_params

SMALL = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")


def has_cuda() -> bool:
    try:
        return resolve_device("cuda").platform == "gpu"
    except DeviceUnavailable:
        return False


HAS_CUDA = has_cuda()


def data(n=10, seed=3, n_in=6, n_out=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


def small_backend(framework="jax", spec=SMALL, optimizer=None, dtype="float64", params=None, **kwargs):
    params = params or init_params(spec, InitSpec("glorot_normal", seed=11, bias=0.1), dtype)
    optimizer = optimizer or OptimizerSpec("momentum", lr=0.1)
    return make_backend(framework, spec, params, optimizer, dtype=dtype, **kwargs)


def run_epochs(backend, x, y, batch, epochs=2, orders=None):
    """Step losses of every epoch, concatenated; orders: one per epoch (default_rng(0)'s otherwise)."""
    rng = np.random.default_rng(0)
    backend.load(x, y)
    steps = []
    for e in range(epochs):
        backend.train_epoch(rng.permutation(len(x)) if orders is None else orders[e], batch)
        steps.append(backend.step_losses)
    return np.concatenate(steps)


# ---------------------------------------------------------------- devices and options


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: cuda is available")
def test_cuda_without_a_cuda_jaxlib_raises_device_unavailable():
    with pytest.raises(DeviceUnavailable, match=r"device=cuda for framework=jax: jax \S+ here has no CUDA backend"):
        small_backend(device="cuda")
    assert small_backend(device="auto").device == "cpu"  # auto falls back; only cuda refuses


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA jaxlib and a GPU")
def test_cuda_runs_on_the_gpu():
    backend = small_backend(device="cuda")
    x, y = data()
    run_epochs(backend, x, y, batch=4, epochs=1)
    assert backend.device == "cuda" and backend._x.devices() == {resolve_device("cuda")}
    assert backend.info()["blas"] == "XLA:GPU (cuBLAS)"


def test_info_names_the_versions_the_threads_and_the_compiled_epoch():
    info = small_backend().info()
    assert info["framework"] == "jax" and info["compile"] == "off"
    assert info["framework_version"].startswith(f"jax {jax.__version__}, jaxlib ")
    assert info["blas"] == "XLA:CPU (Eigen)" and info["device_name"]
    assert int(info["intra_op_threads"]) >= 1
    assert small_backend(compile=True).info()["compile"] == "jit epoch (lax.scan)"


def test_intra_op_threads_reads_what_jaxlib_reads(monkeypatch):
    monkeypatch.setenv("PJRT_NPROC", "3")
    monkeypatch.setenv("NPROC", "5")
    assert intra_op_threads() == 3
    monkeypatch.setenv("PJRT_NPROC", "many")  # not a number: jaxlib skips it
    assert intra_op_threads() == 5
    monkeypatch.delenv("PJRT_NPROC")
    monkeypatch.delenv("NPROC")
    assert intra_op_threads() == usable_cpus()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_end_to_end(dtype):
    backend = small_backend(dtype=dtype, optimizer=OptimizerSpec("adam", lr=0.01))
    x, y = data()
    assert run_epochs(backend, x, y, batch=4).dtype == np.float64  # step losses always read as float64
    leaves = jax.tree.leaves((backend._params, backend._slots, backend._x, backend._t))
    assert leaves and all(a.dtype == np.dtype(dtype) for a in leaves)
    assert all(w.dtype == np.dtype(dtype) and b.dtype == np.dtype(dtype) for w, b in backend.params())
    assert backend.predict(x).dtype == np.dtype(dtype)


def epoch_then_new_lr_and_restart(backend, x, y, jitted) -> int:
    """An epoch (batch 4), then set_lr and a restart with an epoch each; jitted's cache size
    after the first epoch, for the caller to compare with the size now."""
    run_epochs(backend, x, y, batch=4, epochs=1)
    compiled = jitted._cache_size()
    backend.set_lr(0.02)
    run_epochs(backend, x, y, batch=4, epochs=1)
    backend.restart(init_params(backend.spec, InitSpec("glorot_normal", seed=2), "float64"))
    run_epochs(backend, x, y, batch=4, epochs=1)
    return compiled


def test_set_lr_and_restart_reuse_the_compiled_step():
    """The lr and t are traced arguments and the specs static: a new lr, a restart and a second
    backend of the same run compile nothing more (batch sizes 4 and 2: two entries)."""
    x, y = data()
    backend = small_backend(spec=MLPSpec((6, 5, 4, 3), "sigmoid", "softmax", "mse"))
    compiled = epoch_then_new_lr_and_restart(backend, x, y, STEP_AT)
    run_epochs(small_backend(spec=backend.spec), x, y, batch=4, epochs=1)
    assert STEP_AT._cache_size() == compiled


# Every hidden activation and every output head, each under both strategies, vs NumPy in float64.
CASES = [
    ("relu", "softmax", "cross_entropy"),
    ("sigmoid", "softmax", "mse"),
    ("tanh", "sigmoid", "mse"),
    ("relu", "identity", "half_sse"),
]


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_every_activation_and_head_matches_numpy(case, strategy):
    spec = MLPSpec((6, 5, 4, 3), *case)
    x, y = data(n=10)
    results = []
    for framework in ("jax", "numpy"):
        backend = small_backend(framework, spec=spec, strategy=strategy, optimizer=OptimizerSpec("adam", lr=0.05))
        results.append((run_epochs(backend, x, y, batch=4, epochs=3), backend.params()))
    (steps, params), (ref_steps, ref_params) = results
    assert rel_err(steps, ref_steps) <= 1e-12
    assert params_rel_err(params, ref_params) <= 1e-12
    assert params_rel_err(params, init_params(spec, InitSpec("glorot_normal", seed=11, bias=0.1))) > 1e-3


# ---------------------------------------------------------------- compile=True: the jitted epoch


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_the_scanned_epoch_matches_the_jitted_steps(strategy):
    """float64, dropout, an l2 penalty, adam, a new lr every epoch, a short last batch (26 rows =
    3 x 8 + 2) and then a batch that divides the set (2 x 13): the compiled epoch takes the
    step-jitted path's steps."""
    x, y = data(n=26)
    reg = Regularization(dropout=(0.3, 0.2), l2=1e-3)
    orders = [np.random.default_rng(e).permutation(26) for e in range(3)]
    rng = np.random.default_rng(7)
    masks = [[rng.integers(0, 2, (26, w)) / 0.75 for w in SMALL.sizes[1:-1]] for _ in range(3)]
    results = []
    for compile in (False, True):
        backend = small_backend(
            strategy=strategy,
            optimizer=OptimizerSpec("adam", lr=0.05),
            regularization=reg,
            compile=compile,
            record_steps=True,
        )
        backend.load(x, y)
        steps = []
        for epoch, (lr, batch) in enumerate(zip((0.05, 0.02, 0.01), (8, 8, 13))):
            backend.set_lr(lr)
            backend.train_epoch(orders[epoch], batch, masks[epoch])
            steps.append(backend.step_losses)
        results.append((np.concatenate(steps), backend.params()))
    (steps, params), (scan_steps, scan_params) = results
    assert len(scan_steps) == 4 + 4 + 2
    assert rel_err(scan_steps, steps) <= 1e-9
    assert params_rel_err(scan_params, params) <= 1e-9
    assert params_rel_err(params, init_params(SMALL, InitSpec("glorot_normal", seed=11, bias=0.1))) > 1e-3


def test_the_scanned_epoch_compiles_once_per_batch_size_and_set_size():
    """set_lr and a restart reuse the compiled epoch; batch 10 of 10 rows has no short batch."""
    x, y = data()
    backend = small_backend(compile=True)
    compiled = epoch_then_new_lr_and_restart(backend, x, y, EPOCH_SCAN)
    assert EPOCH_SCAN._cache_size() == compiled
    assert len(run_epochs(backend, x, y, batch=10, epochs=1)) == 1
    assert len(run_epochs(backend, x, y, batch=20, epochs=1)) == 1  # no full batch: one short step


# ---------------------------------------------------------------- native mode


def test_native_init_is_flax_dense_default_from_the_seed():
    """lecun_normal kernels (one key of split(PRNGKey(seed)) per layer, float32), zero biases."""
    keys = jax.random.split(jax.random.PRNGKey(5), SMALL.n_layers)
    for key, (i, o), (w, b) in zip(keys, SMALL.shapes(), JaxBackend.native_init(SMALL, 5, "float32")):
        np.testing.assert_array_equal(w, np.asarray(jax.nn.initializers.lecun_normal()(key, (i, o), np.float32)))
        np.testing.assert_array_equal(b, np.zeros(o, np.float32))


def test_native_orders_are_jax_permutations_of_the_folded_key():
    key = jax.random.PRNGKey(4)
    orders = list(JaxBackend.native_orders(20, 3, 4))
    for epoch, order in enumerate(orders):
        assert order.dtype == np.int64
        np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 20)))
    assert not np.array_equal(orders[0], orders[1])  # a fresh order each epoch


def test_native_run_differs_from_controlled_and_repeats_bit_for_bit():
    x, y = data(n=20)
    controlled = init_params(SMALL, InitSpec("glorot_normal", seed=3), "float64")
    native = JaxBackend.native_init(SMALL, 3, "float64")
    assert params_rel_err(native, controlled) > 0.1  # another law, another draw
    runs = []
    for _ in range(2):
        backend = small_backend(params=JaxBackend.native_init(SMALL, 3, "float64"))
        runs.append((run_epochs(backend, x, y, 8, 2, list(JaxBackend.native_orders(20, 2, 3))), backend.params()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for (w1, b1), (w2, b2) in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    controlled_steps = run_epochs(
        small_backend(params=controlled), x, y, 8, 2, list(JaxBackend.native_orders(20, 2, 3))
    )
    assert rel_err(runs[0][0], controlled_steps) > 1e-3


# ---------------------------------------------------------------- imports


def test_importing_the_jax_backend_imports_neither_torch_nor_tensorflow():
    assert frameworks_imported_by("import backprop_bench.backends.jax_backend") == ["jax"]
