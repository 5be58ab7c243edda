"""bench/npprofile.py: the profile times the fast backend's own step, op by op, and its table adds up.

.venv/bin/python -m pytest tests/test_bench_npprofile.py -x -q
"""

from __future__ import annotations

import numpy as np
import pytest

from backprop_bench.backends import make_backend
from backprop_bench.bench import __main__ as bench_main
from backprop_bench.bench import npprofile
from backprop_bench.bench.cells import SIZES
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params


def fast(strategy="parallel", sizes=(12, 9, 7, 5)):
    spec = MLPSpec(sizes)
    b = make_backend(
        "numpy", spec, init_params(spec, InitSpec(seed=1), "float32"), OptimizerSpec("sgd", lr=0.05),
        strategy=strategy, dtype="float32", compile=True,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    b.load(rng.random((50, sizes[0])), rng.integers(0, sizes[-1], 50))
    return b


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_the_instrumented_epoch_is_the_backends_epoch(strategy):
    order = np.random.default_rng(2).permutation(50)
    plain, timed = fast(strategy), fast(strategy)
    plain.train_epoch(order, 16)  # 16, 16, 16, 2: the short last batch runs the same ops
    labels, seconds = npprofile.instrumented_epoch(timed, order, 16, clock_s=0.0)
    for (w, b), (wt, bt) in zip(plain.params(), timed.params()):
        np.testing.assert_array_equal(w, wt)
        np.testing.assert_array_equal(b, bt)
    assert len(labels) == len(seconds) == len(set(labels)) and all(s > 0 for s in seconds)
    assert sum("matmul" in label for label in labels) == 3 + 3 + 2  # fwd and dW per layer, dx but the first


def test_every_op_of_the_bench_step_has_its_kind():
    labels, _ = npprofile.instrumented_epoch(fast(sizes=SIZES[:1] + (9, 7, 10)), np.arange(50), 16, 0.0)
    kinds = {label: npprofile.kind(label) for label in labels}
    # plain SGD's step runs inside each layer's weight-gradient GEMM (numpy_gemm.py): a matmul
    assert {label for label, k in kinds.items() if k == npprofile.UPDATE} == {"optimizer step count"}
    assert kinds["L0 relu"] == kinds["L1 relu mask multiply"] == "relu + mask"
    assert kinds["gather x"] == "gather" and kinds["delta * lr / n"] == "softmax + cross-entropy"
    assert kinds["L0 fwd matmul (+ bias)"] == kinds["L2 dW matmul (+ db), sgd step inside"] == "matmuls"


def test_the_table_adds_up():
    result = {
        "batch": 64,
        "steps": 10,
        "labels": ["gather x", "L0 fwd matmul", "L0 relu", "sgd p -= g"],
        "op_s": [0.1, 0.5, 0.1, 0.05],
        "epoch_s": 1.0,
        "floor_s": 0.4,
    }
    rows = {
        line.split(" | ")[0].strip("| *"): line.split(" | ")[1:] for line in npprofile.markdown(result).splitlines()[4:]
    }
    assert rows["L0 fwd matmul"] == ["50000.0", "0.500", "50 |"]  # µs a step, s an epoch, % of the epoch
    assert rows["all ops"][1] == "0.750" and rows["between the ops (Python loop)"][1] == "0.250"
    assert rows["matmuls"][1] == "0.500" and rows["update"][1] == "0.050"
    assert rows["matmul floor (the step's products alone)"][2] == "40 |"


def test_the_bench_option_prints_a_table_per_batch(monkeypatch, capsys):
    monkeypatch.setattr(npprofile, "matmul_floor", lambda batch, rows: 0.5)  # peak.py has its own tests
    argv = ["--numpy-profile", "--samples", "200", "--batches", "32,64", "--rounds", "1", "--data", "synthetic"]
    assert bench_main.main(argv) == 0
    out = capsys.readouterr().out
    assert "### Batch 32 (7 steps an epoch)" in out and "### Batch 64 (4 steps an epoch)" in out
