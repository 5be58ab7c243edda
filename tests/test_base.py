"""backends/base.py: the checks every backend shares."""

import numpy as np
import pytest

from backprop_bench.backends.base import check_args, check_batch, cpu_name
from backprop_bench.model import InitSpec, MLPSpec, init_params

SPEC = MLPSpec((6, 5, 3))
INIT = init_params(SPEC, InitSpec())


def test_check_batch_rejects_bad_orders():
    with pytest.raises(RuntimeError, match=r"train_epoch\(\) before load\(x, y\)"):
        check_batch(np.arange(3), None, 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        check_batch(np.arange(3), 3, 0)
    with pytest.raises(ValueError, match=r"order holds indices outside \[0, 3\): 0..3; .*indices into the 3 loaded samples"):
        check_batch(np.array([0, 3]), 3, 1)
    with pytest.raises(ValueError, match="non-empty 1-D integer array"):
        check_batch(np.array([], dtype=int), 3, 1)
    with pytest.raises(ValueError, match="non-empty 1-D integer array, got float64"):
        check_batch(np.array([0.0, 1.0]), 3, 1)


def test_check_batch_returns_int64():
    out = check_batch(np.array([2, 0, 1], dtype=np.int32), 3, 2)
    assert out.dtype == np.int64 and out.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    "framework,kwargs,message",
    [
        ("numpy", {"strategy": "diagonal"}, "strategy='diagonal' is not one of parallel, sequential"),
        ("torch", {"dtype": "float16"}, "train.dtype='float16' is not one of float32, float64"),
        ("torch", {"steps_per_execution": 4}, "steps_per_execution=4 is a Keras option"),
        ("keras", {"steps_per_execution": 0}, "steps_per_execution must be >= 1"),
        ("numpy", {"compile": True}, "compile=True has no meaning for framework=numpy"),
        ("numpy", {"init": INIT[:1]}, r"init has 1 layers, model.sizes \[6, 5, 3\] needs 2"),
        ("torch", {"init": [(np.zeros((5, 6)), np.zeros(5)), INIT[1]]}, r"init layer 0: W must be \(6, 5\)"),
    ],
)
def test_check_args_names_the_bad_option(framework, kwargs, message):
    args = {"spec": SPEC, "init": INIT, "strategy": "parallel", "dtype": "float32", "compile": False,
            "steps_per_execution": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        check_args(framework, **args)


def test_check_args_accepts_a_good_call():
    check_args("keras", SPEC, INIT, "sequential", "float64", True, 16)


def test_cpu_name_is_not_empty():
    assert cpu_name().strip()
