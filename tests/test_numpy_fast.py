"""numpy_fast.py: the preallocated path computes what the plain NumPy backend does.

The two differ in where results are stored (``out=`` buffers, one flat parameter vector)
and in the order of a few roundings: the bias is added inside the matmul (a ones column)
and plain SGD scales dL/dz by the lr before the weight gradients instead of after. So they
agree within float rounding (relative 1e-5 in float32, 1e-12 in float64, after three
epochs): losses, weights and evaluation, in every activation, loss, optimizer, strategy and
dtype, trained biases or not.
"""

import itertools

import numpy as np
import pytest

from backprop_bench.backends import backend_class, make_backend, numpy_fast
from backprop_bench.backends.numpy_backend import NumpyBackend
from backprop_bench.backends.numpy_fast import ONE_THREAD_ROWS, NumpyFastBackend
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

HEADS = [("softmax", "cross_entropy"), ("softmax", "mse"), ("sigmoid", "half_sse"), ("identity", "mse")]


def run(compile: bool, spec: MLPSpec, optimizer: str, strategy: str, dtype: str):
    rng = np.random.default_rng(0)
    x, y = rng.random((150, 12)), rng.integers(0, 5, 150)
    init = init_params(spec, InitSpec(seed=1), dtype)
    b = make_backend(
        "numpy",
        spec,
        init,
        OptimizerSpec(optimizer, lr=0.01),
        strategy=strategy,
        dtype=dtype,
        compile=compile,
        record_steps=True,
    )
    b.load(x, y)
    order = np.random.default_rng(3)
    losses = [b.train_epoch(order.permutation(150), 32) for _ in range(3)]
    return losses, b.step_losses, b.params(), b.evaluate(x, y), b.predict(x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_fast_path_is_the_plain_path_within_rounding(optimizer, strategy, dtype):
    close = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}
    for hidden, (output, loss) in itertools.product(["relu", "sigmoid", "tanh"], HEADS):
        spec = MLPSpec((12, 9, 7, 5), hidden, output, loss, train_biases=(optimizer != "momentum"))
        plain, fast = run(False, spec, optimizer, strategy, dtype), run(True, spec, optimizer, strategy, dtype)
        why = f"{hidden} {output} {loss}"
        np.testing.assert_allclose(fast[0], plain[0], **close, err_msg=why)  # epoch losses
        np.testing.assert_allclose(fast[3], plain[3], **close, err_msg=why)  # evaluation
        np.testing.assert_allclose(fast[1], plain[1], **close, err_msg=why)  # every step's loss
        np.testing.assert_allclose(fast[4], plain[4], **close, err_msg=why)  # predictions
        for (w, b), (wf, bf) in zip(plain[2], fast[2]):
            np.testing.assert_allclose(wf, w, **close, err_msg=why)
            np.testing.assert_allclose(bf, b, **close, err_msg=why)


def test_compile_selects_the_fast_class():
    assert backend_class("numpy") is NumpyBackend
    assert backend_class("numpy", compile=True) is NumpyFastBackend
    spec = MLPSpec((4, 3))
    fast = make_backend("numpy", spec, init_params(spec, InitSpec()), OptimizerSpec(), compile=True)
    assert fast.info()["compile"].startswith("preallocated")
    assert make_backend("numpy", spec, init_params(spec, InitSpec()), OptimizerSpec()).info()["compile"] == "off"


def test_work_buffers_are_reused_across_epochs():
    spec = MLPSpec((6, 4, 3))
    b = make_backend("numpy", spec, init_params(spec, InitSpec()), OptimizerSpec(), compile=True)
    b.load(np.random.default_rng(0).random((20, 6)), np.arange(20) % 3)
    b.train_epoch(np.arange(20), 8)
    ws = b._train_ws
    b.train_epoch(np.arange(20), 8)
    assert b._train_ws is ws  # same batch size: no new allocation
    b.train_epoch(np.arange(20), 5)
    assert b._train_ws is not ws and b._train_ws.rows == 5


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize(("batch", "inside"), [(ONE_THREAD_ROWS, 1), (ONE_THREAD_ROWS + 1, 2)])
def test_small_batches_train_on_one_blas_thread_and_the_pool_comes_back(batch, inside):
    from threadpoolctl import threadpool_limits

    spec = MLPSpec((6, 4, 3))
    b = make_backend("numpy", spec, init_params(spec, InitSpec()), OptimizerSpec(), compile=True)
    b.load(np.random.default_rng(0).random((200, 6)), np.arange(200) % 3)
    losses = np.empty(-(-200 // batch), np.float32)
    with threadpool_limits(2, user_api="blas"):  # two threads before, whatever the machine's default
        steps = b.epoch_steps(np.arange(200), batch, losses)
        for _, call in next(steps):
            call()
        assert set(_blas_threads()) == {inside}  # while the epoch's steps run
        for ops in steps:
            for _, call in ops:
                call()
        assert set(_blas_threads()) == {2}  # restored when the epoch ends
        fns = b.phase_fns(np.arange(batch))
        assert all(np.isfinite(float(fn())) for fn in fns)
        assert set(_blas_threads()) == {2}  # a phase call restores them too
        with pytest.raises(ZeroDivisionError):  # an epoch that stops at an error restores them too
            for _ops in b.epoch_steps(np.arange(200), batch, losses):
                raise ZeroDivisionError
        assert set(_blas_threads()) == {2}


def test_one_blas_thread_changes_no_number():
    spec = MLPSpec((12, 9, 7, 5))
    got = []
    for batch in (ONE_THREAD_ROWS, ONE_THREAD_ROWS + 1):
        runs = []
        for cls in (NumpyBackend, NumpyFastBackend):
            b = make_backend(
                "numpy",
                spec,
                init_params(spec, InitSpec(seed=1), "float64"),
                OptimizerSpec(lr=0.05),
                dtype="float64",
                compile=cls is NumpyFastBackend,
            )
            b.load(np.random.default_rng(0).random((300, 12)), np.arange(300) % 5)
            runs.append([b.train_epoch(np.random.default_rng(e).permutation(300), batch) for e in range(2)])
        got.append(runs)
    for plain, fast in got:  # on one BLAS thread or not, the fast path agrees with the readable one
        np.testing.assert_allclose(fast, plain, rtol=1e-12)


def _sgd_backend(strategy: str, dtype: str, biases: bool = True, optimizer: str = "sgd"):
    spec = MLPSpec((12, 9, 7, 5), train_biases=biases)
    b = make_backend(
        "numpy",
        spec,
        init_params(spec, InitSpec(seed=1), dtype),
        OptimizerSpec(optimizer, lr=0.05),
        strategy=strategy,
        dtype=dtype,
        compile=True,
    )
    b.load(np.random.default_rng(0).random((150, 12)), np.arange(150) % 5)
    return b


def _step_labels(b, batch: int = 32) -> list[str]:
    losses = np.empty(-(-150 // batch), b.dtype)
    return [label for label, _ in next(b.epoch_steps(np.arange(150), batch, losses))]


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_plain_sgd_steps_inside_the_weight_gradient_gemm(strategy, monkeypatch):
    b = _sgd_backend(strategy, "float32")
    labels = _step_labels(b)
    inside = [label for label in labels if "sgd step inside" in label]
    assert inside == [f"L{l} dW matmul (+ db), sgd step inside" for l in (2, 1, 0)]
    assert not [label for label in labels if "p -= g" in label]  # no second pass over the weights
    # sequential: a layer's step before the error goes through its W; parallel: after it
    before = labels.index("L2 dW matmul (+ db), sgd step inside") < labels.index("L2 dx matmul")
    assert before == (strategy == "sequential")
    assert "sgemm" in b.info()["update"]
    momentum = _sgd_backend(strategy, "float32", optimizer="momentum")
    assert any(label.endswith("momentum update") for label in _step_labels(momentum))
    assert "pass" in momentum.info()["update"]
    monkeypatch.setattr(numpy_fast, "numpy_gemm", lambda dtype: None)  # a BLAS without CBLAS GEMM
    separate = _sgd_backend(strategy, "float32")
    assert any(label.endswith("sgd p -= g") for label in _step_labels(separate))
    assert "pass" in separate.info()["update"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
@pytest.mark.parametrize("biases", [True, False])
def test_the_gemm_step_is_the_separate_pass_within_rounding(strategy, dtype, biases, monkeypatch):
    close = {"rtol": 1e-6, "atol": 1e-7} if dtype == "float32" else {"rtol": 1e-14, "atol": 1e-15}
    runs = []
    for gemm in (True, False):
        if not gemm:  # a BLAS without CBLAS GEMM: the separate pass p -= g
            monkeypatch.setattr(numpy_fast, "numpy_gemm", lambda dtype: None)
        b = _sgd_backend(strategy, dtype, biases)
        losses = [b.train_epoch(np.random.default_rng(e).permutation(150), 32) for e in range(3)]
        runs.append((losses, b.params()))
    (losses, params), (losses_pass, params_pass) = runs
    np.testing.assert_allclose(losses, losses_pass, **close)
    for (w, bias), (w_pass, bias_pass) in zip(params, params_pass):
        np.testing.assert_allclose(w, w_pass, **close)
        np.testing.assert_allclose(bias, bias_pass, **close)
        if not biases:  # untrained biases stay exactly where they started
            np.testing.assert_array_equal(bias, bias_pass)


def test_the_output_layer_works_class_major_and_answers_row_major():
    b = _sgd_backend("parallel", "float64")
    b.train_epoch(np.arange(150), 32)
    ws = b._train_ws
    assert ws.by_class(ws.p, 22).shape == (5, 22) and ws.by_class(ws.p, 22).flags.c_contiguous  # the short batch
    assert ws.delta(2, 22).shape == (22, 5) and ws.delta(1, 22).shape == (22, 7)
    x = np.random.default_rng(1).random((7, 12))
    p = b.predict(x)
    assert p.shape == (7, 5) and p.flags.c_contiguous
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)  # each sample's softmax, not each class's
