"""The torch backend's own contract: devices, dtypes, step losses, device reads, compile.

Cross-backend agreement (worked example, parity, strategies, learning, determinism) is in
the shared test modules, run for torch with ``-k torch``. Here: what only torch has.

    .venv/bin/python -m pytest tests/test_torch_backend.py -q            # quick ones
    .venv/bin/python -m pytest tests/test_torch_backend.py -q -m slow    # torch.compile
"""

import numpy as np
import pytest
import torch
from backend_cases import make_backend, params_rel_err, rel_err

from backprop_bench.backends import DeviceUnavailable
from backprop_bench.backends.torch_backend import TorchBackend, compiled
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SMALL = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")
HAS_CUDA = torch.cuda.is_available()


def data(n=10, seed=3, n_in=6, n_out=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


def small_backend(framework="torch", spec=SMALL, optimizer=None, dtype="float64", **kwargs):
    params = init_params(spec, InitSpec("glorot_normal", seed=11, bias=0.1), dtype)
    optimizer = optimizer or OptimizerSpec("momentum", lr=0.1)
    return make_backend(framework, spec, params, optimizer, dtype=dtype, **kwargs)


def run_epochs(backend, x, y, batch, epochs=2, seed=0):
    """Step losses of every epoch, concatenated, and the epoch means."""
    rng = np.random.default_rng(seed)
    backend.load(x, y)
    means, steps = [], []
    for _ in range(epochs):
        means.append(backend.train_epoch(rng.permutation(len(x)), batch))
        steps.append(backend.step_losses)
    return np.array(means), (np.concatenate(steps) if steps[0] is not None else None)


# ---------------------------------------------------------------- devices


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: cuda is available")
def test_cuda_without_gpu_raises_device_unavailable():
    with pytest.raises(DeviceUnavailable, match=r"device=cuda .*torch 2\.") as err:
        small_backend(device="cuda")
    assert torch.__version__ in str(err.value)  # says what was found
    assert "CPU-only build" in str(err.value) or "is_available() is False" in str(err.value)


def test_auto_takes_cuda_only_when_present():
    assert small_backend(device="auto").device == ("cuda" if HAS_CUDA else "cpu")


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="device='tpu'"):
        small_backend(device="tpu")
    with pytest.raises(ValueError, match="strategy='both'"):
        small_backend(strategy="both")
    with pytest.raises(TypeError, match="steps_per_execution"):  # a Keras option, not a torch argument
        small_backend(steps_per_execution=4)
    with pytest.raises(ValueError, match=r"init layer 1: W must be \(5, 4\)"):
        TorchBackend(
            SMALL,
            [(np.zeros((6, 5)), np.zeros(5)), (np.zeros((5, 5)), np.zeros(4)), (np.zeros((4, 3)), np.zeros(3))],
            OptimizerSpec(),
        )
    with pytest.raises(RuntimeError, match="load"):
        small_backend().train_epoch(np.arange(4), 2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_cuda_training_matches_cpu(strategy):
    x, y = data(n=64)
    results = {}
    for device in ("cpu", "cuda"):
        backend = small_backend(device=device, strategy=strategy, optimizer=OptimizerSpec("adam", lr=0.01))
        assert backend.device == device
        results[device] = run_epochs(backend, x, y, batch=16, epochs=3), backend.params()
        assert backend.info()["device_name"]
    (cpu_means, cpu_steps), cpu_params = results["cpu"]
    (gpu_means, gpu_steps), gpu_params = results["cuda"]
    # float64 on both; only the summation order of the kernels differs
    assert rel_err(gpu_steps, cpu_steps) <= 1e-9
    assert params_rel_err(gpu_params, cpu_params) <= 1e-9


# ---------------------------------------------------------------- dtypes, losses, batches


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_end_to_end(dtype):
    backend = small_backend(dtype=dtype, optimizer=OptimizerSpec("adam", lr=0.01))
    x, y = data()
    run_epochs(backend, x, y, batch=4)
    want = getattr(torch, dtype)
    assert all(t.dtype == want for t in backend.W + backend.b + [backend._x, backend._t])
    assert all(s.dtype == want for states in backend.optimizer.state.values() for s in states)
    assert all(w.dtype == np.dtype(dtype) and b.dtype == np.dtype(dtype) for w, b in backend.params())
    assert backend.predict(x).dtype == np.dtype(dtype)


def test_step_losses_only_when_asked():
    x, y = data(n=10)
    quiet = small_backend(record_steps=False)
    _, steps = run_epochs(quiet, x, y, batch=4)
    assert steps is None and quiet.step_losses is None
    loud = small_backend(record_steps=True)
    means, steps = run_epochs(loud, x, y, batch=4)
    assert loud.step_losses.dtype == np.float64 and loud.step_losses.shape == (3,)  # 4 + 4 + 2 rows
    assert steps.shape == (6,)
    np.testing.assert_array_equal(quiet.params()[0][0], loud.params()[0][0])  # recording changes nothing


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_short_last_batch_weighted_and_matches_numpy(strategy):
    """10 rows in batches of 4: steps of 4, 4 and 2 rows; the epoch loss weights them so."""
    x, y = data(n=10)
    torch_run = small_backend(strategy=strategy)
    numpy_run = small_backend("numpy", strategy=strategy)
    means, steps = run_epochs(torch_run, x, y, batch=4)
    ref_means, ref_steps = run_epochs(numpy_run, x, y, batch=4)
    last_epoch = steps[3:]
    assert means[-1] == pytest.approx(np.dot(last_epoch, [4, 4, 2]) / 10, rel=1e-14)
    assert rel_err(steps, ref_steps) <= 1e-12
    assert rel_err(means, ref_means) <= 1e-12
    assert params_rel_err(torch_run.params(), numpy_run.params()) <= 1e-12


# Every hidden activation, every output/loss pairing, both strategies, vs NumPy in float64.
HEADS = [("softmax", "cross_entropy"), ("softmax", "mse"), ("sigmoid", "mse"), ("identity", "half_sse")]


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
@pytest.mark.parametrize("head", HEADS, ids=["-".join(h) for h in HEADS])
@pytest.mark.parametrize("hidden", ["relu", "sigmoid", "tanh"])
def test_every_activation_and_loss_matches_numpy(hidden, head, strategy):
    spec = MLPSpec((6, 5, 4, 3), hidden, *head)
    x, y = data(n=10)
    results = []
    for framework in ("torch", "numpy"):
        backend = small_backend(framework, spec=spec, strategy=strategy, optimizer=OptimizerSpec("adam", lr=0.05))
        results.append((run_epochs(backend, x, y, batch=4, epochs=3)[1], backend.params()))
    (steps, params), (ref_steps, ref_params) = results
    assert rel_err(steps, ref_steps) <= 1e-12
    assert params_rel_err(params, ref_params) <= 1e-12
    assert params_rel_err(params, init_params(spec, InitSpec("glorot_normal", seed=11, bias=0.1))) > 1e-3


def test_evaluate_and_predict_match_numpy_without_updating():
    x, y = data(n=50)
    tb, nb = small_backend(), small_backend("numpy")
    for b in (tb, nb):
        run_epochs(b, x, y, batch=8)
    before = tb.params()
    loss, acc = tb.evaluate(x, y)
    ref_loss, ref_acc = nb.evaluate(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-12) and acc == ref_acc
    np.testing.assert_allclose(tb.predict(x), nb.predict(x), rtol=1e-12, atol=0)
    np.testing.assert_allclose(tb.predict(x).sum(axis=1), 1.0, rtol=1e-12)
    assert params_rel_err(tb.params(), before) == 0.0


# ---------------------------------------------------------------- device reads


SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def sync_calls(monkeypatch):
    """Counts calls of every Tensor method that reads a value back to the host."""
    calls = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_loss_read_back_once_per_epoch(sync_calls, strategy, optimizer):
    x, y = data(n=40)
    backend = small_backend(strategy=strategy, optimizer=OptimizerSpec(optimizer, lr=0.01), record_steps=False)
    backend.load(x, y)
    sync_calls.clear()
    backend.train_epoch(np.arange(40), 4)  # 10 steps
    assert sync_calls == ["cpu", "numpy"]  # the epoch's (n_steps,) losses, once


def test_record_steps_still_reads_once_per_epoch(sync_calls):
    x, y = data(n=40)
    backend = small_backend(record_steps=True)
    backend.load(x, y)
    sync_calls.clear()
    backend.train_epoch(np.arange(40), 4)
    assert sync_calls == ["cpu", "numpy"]  # the per-step losses come back in the same one read
    assert backend.step_losses.shape == (10,)


# ---------------------------------------------------------------- info, compile


def test_info_names_versions_and_mode():
    info = small_backend().info()
    assert info["framework"] == "torch" and info["framework_version"] == torch.__version__
    assert info["device_name"] and "threads" in info["blas"]
    assert info["compile"] == "off"


def test_compile_failure_is_loud_never_eager():
    """A graph break under fullgraph=True raises, naming the option to turn off."""

    def breaks(x, t, masks):
        torch._dynamo.graph_break()
        return x.sum() + t.sum()

    step = compiled(breaks, "parallel")
    with pytest.raises(RuntimeError, match="torch.compile of the parallel step failed.*compile=false"):
        step(torch.ones(2), torch.ones(2), None)


# float32 tolerance: the compiled kernels fuse and reorder the element-wise work (and the
# softmax reductions), which moves each op by ~1 ulp (6e-8); over 12 steps of adam on
# this tiny net that stays below 1e-5 relative. float64: the same reordering, 1e-12.
COMPILE_TOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, dtype, n_rows",
    # float64 with a short last batch, both strategies and every training feature:
    # test_training_parity.py::test_torch_compile_runs_every_feature
    [("sequential", "float32", 40)],
)
def test_compile_runs_and_matches_eager(strategy, dtype, n_rows):
    x, y = data(n=n_rows)
    optimizer = OptimizerSpec("adam", lr=0.01)  # adam: the step counter t lives on the device
    results = []
    for compile in (False, True):
        backend = small_backend(strategy=strategy, dtype=dtype, optimizer=optimizer, compile=compile)
        results.append((run_epochs(backend, x, y, batch=8, epochs=2)[1], backend.params(), backend.info()))
    (eager_steps, eager_params, _), (steps, params, info) = results
    assert info["compile"].startswith("torch.compile")
    assert rel_err(steps, eager_steps) <= COMPILE_TOL[dtype]
    assert params_rel_err(params, eager_params) <= COMPILE_TOL[dtype]
    assert params_rel_err(params, init_params(SMALL, InitSpec("glorot_normal", seed=11, bias=0.1))) > 1e-3
