"""backends/base.py: the checks, the epoch loss, the clock rule and the shared plumbing."""

import gc
import os

import numpy as np
import pytest

from backprop_bench.backends import backend_class
from backprop_bench.backends.base import (
    Backend,
    check_args,
    check_batch,
    cpu_name,
    epoch_loss,
    n_steps,
    timed_epoch,
    usable_cpus,
)
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SPEC = MLPSpec((6, 5, 3))
INIT = init_params(SPEC, InitSpec())


def test_check_batch_rejects_bad_orders():
    with pytest.raises(RuntimeError, match=r"train_epoch\(\) before load\(x, y\)"):
        check_batch(np.arange(3), None, 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        check_batch(np.arange(3), 3, 0)
    with pytest.raises(
        ValueError, match=r"order holds indices outside \[0, 3\): 0..3; .*indices into the 3 loaded samples"
    ):
        check_batch(np.array([0, 3]), 3, 1)
    with pytest.raises(ValueError, match="non-empty 1-D integer array"):
        check_batch(np.array([], dtype=int), 3, 1)
    with pytest.raises(ValueError, match="non-empty 1-D integer array, got float64"):
        check_batch(np.array([0.0, 1.0]), 3, 1)


def test_check_batch_returns_int64():
    out = check_batch(np.array([2, 0, 1], dtype=np.int32), 3, 2)
    assert out.dtype == np.int64 and out.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strategy": "diagonal"}, "strategy='diagonal' is not one of parallel, sequential"),
        ({"dtype": "float16"}, "train.dtype='float16' is not one of float32, float64"),
        ({"device": "tpu"}, "device='tpu' is not one of cpu, cuda, auto"),
        ({"init": INIT[:1]}, r"init has 1 layers, model.sizes \[6, 5, 3\] needs 2"),
        ({"init": [(np.zeros((5, 6)), np.zeros(5)), INIT[1]]}, r"init layer 0: W must be \(6, 5\)"),
    ],
)
def test_check_args_names_the_bad_option(kwargs, message):
    args = {
        "framework": "numpy",
        "spec": SPEC,
        "init": INIT,
        "strategy": "parallel",
        "dtype": "float32",
        "device": "cpu",
    } | kwargs
    with pytest.raises(ValueError, match=message):
        check_args(**args)


def test_check_args_accepts_a_good_call():
    check_args("keras", SPEC, INIT, "sequential", "float64", "auto")


@pytest.mark.parametrize(
    "framework,kwargs,error,message",
    [
        ("numpy", {"compile": True}, ValueError, "compile=True has no meaning for framework=numpy"),
        ("torch", {"steps_per_execution": 4}, TypeError, "steps_per_execution"),
        ("keras", {"steps_per_execution": 0}, ValueError, "steps_per_execution must be >= 1"),
    ],
)
def test_constructor_rejects_options_a_backend_does_not_have(framework, kwargs, error, message):
    with pytest.raises(error, match=message):
        backend_class(framework)(SPEC, INIT, OptimizerSpec(), **kwargs)


def test_epoch_loss_weights_the_short_last_batch():
    # 10 samples in batches of 4: steps of 4, 4 and 2 samples
    assert epoch_loss(np.array([1.0, 2.0, 4.0]), 10, 4) == pytest.approx((4 * 1 + 4 * 2 + 2 * 4) / 10)
    assert epoch_loss(np.array([3.0]), 5, 64) == 3.0
    assert n_steps(10, 4) == 3 and n_steps(8, 4) == 2 and n_steps(5, 64) == 1


class Recorder(Backend):
    """A backend with no framework: records what the base class asks of it."""

    framework = "recorder"

    def _resolve_device(self, device):
        return "cpu"

    def _setup(self, init):
        self.calls, self.gc_enabled = [], None

    def _load(self, x, t):
        self.calls.append(("load", x.dtype, t.shape))

    def _epoch(self, order, batch_size, masks):
        self.gc_enabled = gc.isenabled()
        self.calls.append(("epoch", order.tolist(), batch_size))
        return np.arange(1, n_steps(len(order), batch_size) + 1, dtype=np.float32)

    def _outputs(self, x, t):
        self.calls.append(("outputs", len(x)))
        p = np.full((len(x), 3), 1 / 3)
        p[:, 0] += 0.01
        return p, float("nan") if t is None else 2.0 * len(x)

    def synchronize(self):
        self.calls.append(("sync",))

    def _info(self):
        return {"framework_version": "0"}


def test_the_base_owns_loading_epoch_loss_chunks_and_info(monkeypatch):
    b = Recorder(SPEC, INIT, OptimizerSpec(), dtype="float64", record_steps=True)
    b.load(np.zeros((10, 6), np.float32), np.zeros(10, int))
    assert b.calls[0] == ("load", np.dtype("float64"), (10, 3)) and b.n_loaded == 10
    assert b.train_epoch(np.arange(10), 4) == pytest.approx((4 * 1 + 4 * 2 + 2 * 3) / 10)
    assert b.step_losses.dtype == np.float64 and b.step_losses.tolist() == [1, 2, 3]
    monkeypatch.setattr(Recorder, "EVAL_CHUNK", 4)
    b.calls.clear()
    loss, acc = b.evaluate(np.zeros((10, 6)), np.zeros(10, int))
    assert [c for c in b.calls if c[0] == "outputs"] == [("outputs", 4), ("outputs", 4), ("outputs", 2)]
    assert loss == pytest.approx(2.0) and acc == 1.0
    assert b.predict(np.zeros((5, 6))).shape == (5, 3)
    assert b.info() == {"framework": "recorder", "compile": "off", "framework_version": "0"}


def test_timed_epoch_synchronizes_around_the_epoch_with_gc_off():
    b = Recorder(SPEC, INIT, OptimizerSpec())
    b.load(np.zeros((4, 6)), np.zeros(4, int))
    b.calls.clear()
    loss, seconds = timed_epoch(b, np.arange(4), 2)
    assert [c[0] for c in b.calls] == ["sync", "epoch", "sync"]
    assert b.gc_enabled is False and gc.isenabled()  # off inside the clock, back on after
    assert loss == pytest.approx(1.5) and seconds > 0


def test_cpu_name_is_not_empty():
    assert cpu_name().strip()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity masks on this OS")
def test_usable_cpus_follows_the_affinity_mask():
    import subprocess
    import sys

    assert usable_cpus() == len(os.sched_getaffinity(0)) >= 1
    one = min(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {{{one}}})\n"
    code += "from backprop_bench.backends.base import usable_cpus; print(usable_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stderr
