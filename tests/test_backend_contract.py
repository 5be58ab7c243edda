"""The protocol's shared contract (backends/base.py), checked the same way in every backend:
loss averaging with a short last batch, record_steps, argument checks, evaluate/predict.

Each backend's own test module keeps only what is its own (devices, compile modes, dtype
details); parity with NumPy is test_parity.py's job.
"""

import os

import numpy as np
import pytest
from backend_cases import BACKENDS, fit, make_backend

from backprop_bench.backends.base import usable_cpus
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SPEC = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")


def make(framework: str, **kwargs):
    params = init_params(SPEC, InitSpec("glorot_uniform", seed=2, bias=0.05), "float64")
    kwargs.setdefault("record_steps", False)
    return make_backend(framework, SPEC, params, OptimizerSpec("adam", lr=0.01), **kwargs)


@pytest.mark.parametrize("framework", BACKENDS)
def test_step_losses_only_when_asked_and_short_last_batch(framework, data):
    quiet = make(framework)
    fit(quiet, data)
    assert quiet.step_losses is None
    backend = make(framework, record_steps=True)
    epoch_losses = fit(backend, data)
    # 10 samples, batch 4: steps of 4, 4 and 2 samples, the last weighted by 2/10
    assert backend.step_losses.shape == (3,) and backend.step_losses.dtype == np.float64
    weighted = (4 * backend.step_losses[0] + 4 * backend.step_losses[1] + 2 * backend.step_losses[2]) / 10
    assert epoch_losses[-1] == pytest.approx(weighted, rel=1e-12)
    # record_steps changes what is kept, not what is computed
    np.testing.assert_array_equal(quiet.params()[0][0], backend.params()[0][0])


@pytest.mark.parametrize("framework", BACKENDS)
def test_train_before_load_and_bad_order(framework):
    backend = make(framework)
    with pytest.raises(RuntimeError, match="before load"):
        backend.train_epoch(np.arange(4), 2)
    backend.load(np.zeros((4, 6)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="4 loaded samples"):
        backend.train_epoch(np.arange(5), 2)


@pytest.mark.parametrize("framework", BACKENDS)
def test_evaluate_and_predict(framework, data):
    backend = make(framework)
    fit(backend, data)
    probs = backend.predict(data[0])
    assert probs.shape == (10, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    loss, acc = backend.evaluate(*data)
    onehot = np.eye(3)[data[1]]
    assert loss == pytest.approx(-np.mean(np.log(np.sum(probs * onehot, axis=1))), rel=1e-10)
    assert acc == pytest.approx(np.mean(probs.argmax(axis=1) == data[1]))


@pytest.mark.parametrize("framework", BACKENDS)
def test_restart_is_a_new_backend(framework, data):
    """restart(init) after training gives exactly a new backend's numbers: weights, adam's step
    and moments, and the lr (set_lr'd away before) all start over; the study relies on it."""
    fresh = fit(make(framework, dtype="float64"), data)
    reused = make(framework, dtype="float64")
    fit(reused, data, epochs=3)
    reused.set_lr(0.5)
    reused.restart(init_params(SPEC, InitSpec("glorot_uniform", seed=2, bias=0.05), "float64"))
    assert reused.lr == 0.01
    assert fit(reused, data) == fresh  # bit for bit


# ---------------------------------------------------------------- limit_threads (backends/__init__.py)

THREADS_CODE = """
import json, os, sys
from threadpoolctl import threadpool_info
from backprop_bench.backends import limit_threads, make_backend
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params
limit_threads({n})
spec = MLPSpec((4, 3, 2))
infos = {{}}
for name in sys.argv[1:]:
    b = make_backend(name, spec, init_params(spec, InitSpec()), OptimizerSpec())
    infos[name] = b.info()
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
# XLA:CPU's pool (jaxlib names its threads ...XLAEigen), made as the jax backend started (Linux)
tasks = [open(f"/proc/self/task/{{t}}/comm").read() for t in os.listdir("/proc/self/task")]
xla = sum("XLAEigen" in comm for comm in tasks)
print(json.dumps({{"blas": blas, "infos": infos, "xla_pool": xla, "xla_flags": os.environ.get("XLA_FLAGS")}}))
"""


def run_threads(n: int, *frameworks: str, env: dict | None = None) -> dict:
    """THREADS_CODE in a fresh process, with env added and without jaxlib's NPROC variables."""
    import json
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
    out = subprocess.run(
        [sys.executable, "-c", THREADS_CODE.format(n=n), *frameworks],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean | (env or {}),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_limit_threads_caps_numpy_blas_and_torch():
    """NumPy's BLAS (loaded before the call) and torch (imported after it) compute on 1 thread,
    and each backend's info() says so; what the study's make run relies on to run stages side by side."""
    got = run_threads(1, "numpy", "torch")
    assert got["blas"] and set(got["blas"]) == {1}
    assert "1 threads" in got["infos"]["numpy"]["blas"]
    assert got["infos"]["torch"]["blas"].endswith(", 1 threads")


@pytest.mark.slow  # imports TensorFlow and Keras in a fresh process
def test_limit_threads_caps_tensorflow_and_keras():
    got = run_threads(1, "tensorflow", "keras")
    assert got["infos"]["tensorflow"]["intra_op_threads"] == "1"
    assert got["infos"]["keras"]["intra_op_threads"] == "1"


def test_limit_threads_caps_jax():
    """jaxlib sizes XLA:CPU's pool from PJRT_NPROC as its backend starts: one thread, as info()
    says; the user's XLA_FLAGS are left as they were."""
    flags = "--xla_cpu_enable_fast_math=false"
    got = run_threads(1, "jax", env={"XLA_FLAGS": flags})
    assert got["infos"]["jax"]["intra_op_threads"] == "1"
    assert got["xla_pool"] == 1
    assert got["xla_flags"] == flags


@pytest.mark.skipif(usable_cpus() < 2, reason="one usable CPU: XLA's default pool has one thread too")
def test_without_limit_threads_jax_takes_every_cpu():
    got = run_threads(0, "jax")
    assert got["infos"]["jax"]["intra_op_threads"] == str(usable_cpus())
    assert got["xla_pool"] == usable_cpus()


def test_limit_threads_zero_keeps_the_defaults_and_a_negative_is_refused(monkeypatch):
    from backprop_bench.backends import THREAD_ENV, limit_threads

    for key in THREAD_ENV:
        monkeypatch.delenv(key, raising=False)
    limit_threads(0)
    assert not any(key in os.environ for key in THREAD_ENV)
    with pytest.raises(ValueError, match=r"threads must be >= 0 \(0: each framework's default\), got -1"):
        limit_threads(-1)


# ---------------------------------------------------------------- pin_threads, thread_counts (backends/__init__.py)

PIN_CODE = """
import json
from backprop_bench.backends import pin_threads, thread_counts
pin_threads(1, ["numpy", "torch"])
import torch
torch.ones(64, 64) @ torch.ones(64, 64)
print(json.dumps(thread_counts()))
"""


def test_pin_threads_sets_torchs_own_pools_and_thread_counts_reads_them():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PIN_CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == {"intra": 1, "interop": 1}
    assert got["blas"] and set(got["blas"].values()) == {1}
    assert "tensorflow" not in got  # not loaded: left out, never imported to be asked


def test_thread_counts_names_this_processes_threads_and_pin_threads_needs_one_or_more():
    from backprop_bench.backends import pin_threads, thread_counts

    got = thread_counts()
    assert all(isinstance(n, int) for n in got["blas"].values())
    if os.path.isdir("/proc/self/task"):
        assert sum(got["os_threads"].values()) >= 1
    with pytest.raises(ValueError, match="pin_threads needs n >= 1, got 0"):
        pin_threads(0, ["numpy"])
