"""The checks of one Keras-on-X framework, computed in a process of its own (tests/test_keras_on.py).

Keras picks its backend once per process and the test processes load Keras on TensorFlow, so
test_keras_on runs ``python tests/keras_on_cases.py keras-jax quick`` (or keras-torch; or
``parity``, the float64 parity sweep): every case of the group is computed here and printed
as one JSON line, which the parametrized tests assert.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from backend_cases import STRATEGIES, make_backend, params_rel_err, rel_err, train, worked_example
from test_training_parity import BATCH, EPOCHS, FEATURES, MOMENTUM, SIZES, data

from backprop_bench.backends import DeviceUnavailable, backend_class
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, Regularization, init_params

# test_training_parity's features, plus the plain momentum run and the two optimizers it leaves out
PARITY = {
    "plain": (Regularization(), MOMENTUM, None),
    "sgd": (Regularization(), OptimizerSpec("sgd", lr=0.05), None),
    "adam": (Regularization(), OptimizerSpec("adam", lr=0.003), None),
    **FEATURES,
}
SMALL = MLPSpec((6, 5, 4, 3), "tanh", "softmax", "cross_entropy")
HEAVY = ("torch", "tensorflow", "jax")


def loaded() -> list[str]:
    return sorted(m for m in (*HEAVY, "keras") if m in sys.modules)


def parity(framework: str) -> dict:
    """(strategy, case) -> (step-loss error, weight error, steps) against NumPy in float64, run as in
    test_training_parity."""
    spec = MLPSpec(SIZES, hidden_activation="tanh")
    params = init_params(spec, InitSpec("glorot_uniform", seed=3), "float64")
    x, y = data()
    out = {}
    for strategy in STRATEGIES:
        for case, (reg, optimizer, lrs) in PARITY.items():
            runs = []
            for fw in (framework, "numpy"):
                b = make_backend(fw, spec, params, optimizer, strategy=strategy, regularization=reg)
                _, steps = train(b, x, y, EPOCHS, BATCH, seed=7, masks_seed=7 if reg.has_dropout else None, lrs=lrs)
                runs.append((steps, b.params()))
            (steps, got), (ref_steps, ref) = runs
            out[f"{strategy}/{case}"] = [rel_err(steps, ref_steps), params_rel_err(got, ref), len(steps)]
    return out


def worked(framework: str) -> dict:
    """The worked example, 1000 steps of batch 1 through fit: each strategy's first and last step loss."""
    spec, params, optimizer, x, t = worked_example()
    out = {}
    for strategy in STRATEGIES:
        b = make_backend(framework, spec, params, optimizer, strategy=strategy)
        b.load(np.repeat(x, 1000, axis=0), np.repeat(t, 1000, axis=0))
        b.train_epoch(np.arange(1000), 1)
        out[strategy] = [float(b.step_losses[0]), float(b.step_losses[-1]), len(b.step_losses)]
    return out


def native(framework: str) -> dict:
    """Native init and orders: the Dense draw as Keras makes it here, the distance from a controlled run,
    and two runs from the same seed (their step losses and weights, to compare bit for bit)."""
    import keras

    cls = backend_class(framework)
    x, y = np.random.default_rng(1).normal(size=(24, 6)), np.arange(24) % 3  # batch 8: one batch shape
    controlled = init_params(SMALL, InitSpec("glorot_normal", seed=3), "float64")
    runs = []
    first_init = cls.native_init(SMALL, 3, "float64")
    for init in (first_init, cls.native_init(SMALL, 3, "float64"), controlled):
        b = make_backend(framework, SMALL, init, MOMENTUM)
        b.load(x, y)
        steps = []
        for order in cls.native_orders(24, 2, 3):
            b.train_epoch(order, 8)
            steps.append(b.step_losses)
        runs.append((np.concatenate(steps), b.params()))
    first, again, ctrl = runs
    kernel = keras.initializers.GlorotUniform(seed=1)((5, 4), dtype="float32")  # layer 1: native_seed(0, 1) = 1
    return {
        "init": [w.tolist() for w, _ in cls.native_init(SMALL, 0, "float32")],
        "biases_zero": all(not b.any() for _, b in cls.native_init(SMALL, 0, "float32")),
        "layer1_is_keras_glorot": bool(np.array_equal(cls.native_init(SMALL, 0, "float32")[1][0], np.asarray(kernel))),
        "orders": [o.tolist() for o in cls.native_orders(24, 2, 3)],
        "repeat_steps": bool(np.array_equal(first[0], again[0])),
        "repeat_weights": all(np.array_equal(a, b) for p, q in zip(first[1], again[1]) for a, b in zip(p, q)),
        "native_vs_controlled": [params_rel_err(first_init, controlled), rel_err(first[0], ctrl[0])],
    }


def options(framework: str) -> dict:
    """dtype kept end to end, info(), model(x) against predict, steps_per_execution, compile=True."""
    import keras

    x, y = np.random.default_rng(2).normal(size=(10, 6)), np.arange(10) % 3
    out = {}
    for dtype in ("float32", "float64"):
        init = init_params(SMALL, InitSpec("glorot_uniform", seed=2), dtype)
        b = make_backend(framework, SMALL, init, MOMENTUM, dtype=dtype)
        train(b, x, y, 1, 5, seed=3)
        kinds = {str(a.dtype) for p in b.params() for a in p} | {str(b.predict(x).dtype)}
        out[dtype] = sorted(kinds)
    out["info"] = b.info()
    called = keras.ops.convert_to_numpy(b.model(keras.ops.convert_to_tensor(x)))
    out["model_call_is_predict"] = bool(np.allclose(called, b.predict(x), rtol=1e-12, atol=0))
    params = init_params(SMALL, InitSpec("glorot_uniform", seed=2), "float64")
    try:
        runs = []
        for spe in (1, 3):
            b = make_backend(framework, SMALL, params, MOMENTUM, steps_per_execution=spe)
            runs.append(train(b, x, y, 2, 2, seed=4)[1])  # 5 steps per epoch: 3 + 2 per execution
        out["spe3_same_run"] = rel_err(runs[1], runs[0])
    except ValueError as err:
        out["spe3_error"] = str(err)
    try:
        make_backend(framework, SMALL, params, MOMENTUM, compile=True)
        out["compile_error"] = None
    except ValueError as err:
        out["compile_error"] = str(err)
    return out


def compiles(framework: str) -> int | None:
    """keras-jax: how often XLA compiled the train_step over 3 epochs with new masks, a new lr and a
    restart in between (the step's state is committed to the device throughout: once is right)."""
    if framework != "keras-jax":
        return None
    import logging

    import jax

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage().startswith("Compiling jit(train_step)"))
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    reg = Regularization((0.2, 0.1))
    params = init_params(SMALL, InitSpec("glorot_uniform", seed=2), "float64")
    b = make_backend(framework, SMALL, params, OptimizerSpec("adam", lr=0.01), regularization=reg)
    x, y = np.random.default_rng(2).normal(size=(10, 6)), np.arange(10) % 3
    train(b, x, y, 2, 5, seed=3, masks_seed=1, lrs=(0.01, 0.02))
    b.restart(params)
    train(b, x, y, 1, 5, seed=4, masks_seed=2)
    jax.config.update("jax_log_compiles", False)
    logging.getLogger("jax").removeHandler(handler)
    return sum(seen)


def devices(framework: str) -> dict:
    """device=cuda: DeviceUnavailable without a GPU (its message), or the device it ran on."""
    params = init_params(SMALL, InitSpec("glorot_uniform", seed=2), "float64")
    try:
        return {"cuda": make_backend(framework, SMALL, params, MOMENTUM, device="cuda").device, "error": None}
    except DeviceUnavailable as err:
        return {"cuda": None, "error": str(err)}


def other_keras(framework: str) -> dict:
    """Asking this process for Keras on another backend: the ImportError's message."""
    out = {}
    for other in ("keras", "keras-jax", "keras-torch"):
        if other != framework:
            try:
                backend_class(other)
                out[other] = None
            except ImportError as err:
                out[other] = str(err)
    return out


def cuda_parity(framework: str) -> dict:
    """On the GPU, float64: every feature at once under both strategies against NumPy on the CPU,
    as parity() does; {"skip": why} where this framework cannot run on cuda here."""
    spec = MLPSpec(SIZES, hidden_activation="tanh")
    params = init_params(spec, InitSpec("glorot_uniform", seed=3), "float64")
    reg, optimizer, lrs = FEATURES["all"]
    x, y = data()
    out = {}
    for strategy in STRATEGIES:
        runs = []
        for fw, device in ((framework, "cuda"), ("numpy", "cpu")):
            try:
                b = make_backend(fw, spec, params, optimizer, strategy=strategy, regularization=reg, device=device)
            except DeviceUnavailable as err:
                return {"skip": str(err)}
            _, steps = train(b, x, y, EPOCHS, BATCH, seed=7, masks_seed=7, lrs=lrs)
            runs.append((steps, b.params(), b.device))
        (steps, got, device), (ref_steps, ref, _) = runs
        out[strategy] = [rel_err(steps, ref_steps), params_rel_err(got, ref), device]
    return out


GROUPS = {"quick": (worked, native, options, compiles, devices), "parity": (parity,), "cuda": (cuda_parity,)}


def main(framework: str, group: str) -> None:
    backend_class(framework)
    result = {"imported_first": loaded(), "seconds": {}}
    for case in GROUPS[group]:
        start = time.perf_counter()
        result[case.__name__] = case(framework)
        result["seconds"][case.__name__] = round(time.perf_counter() - start, 1)
    result |= {"imported_last": loaded(), "other_keras": other_keras(framework)}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
