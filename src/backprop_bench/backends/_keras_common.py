"""What the three Keras frameworks share: Keras's backend choice, native mode, the fit() call.

Keras 3 reads its backend once, at the first ``import keras`` of a process (from
$KERAS_BACKEND), so a process runs Keras on one backend: `keras` on TensorFlow, `keras-jax`
on JAX, `keras-torch` on PyTorch. Each Keras module calls ``load_keras`` before its own
``import keras``. This module imports no framework itself; its other helpers import keras
when called, i.e. after the backend was chosen.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from typing import Any

import numpy as np

from backprop_bench.backends import KERAS_BACKENDS
from backprop_bench.backends.base import as_params
from backprop_bench.core.specs import MLPSpec, Params


def use_backend(framework: str) -> None:
    """Make `import keras` load Keras on framework's backend (KERAS_BACKENDS). Before the first
    import it sets $KERAS_BACKEND; once keras is loaded on another backend it raises ImportError."""
    wanted = KERAS_BACKENDS[framework]
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if loaded != wanted:
            raise ImportError(
                f"framework={framework} runs Keras on {wanted}, but this process loaded keras on {loaded} "
                f"already: a process runs Keras on one backend; run {framework} in a process of its own"
            )
        return
    os.environ["KERAS_BACKEND"] = wanted  # read once, by the first `import keras`


def load_keras(framework: str) -> None:
    """use_backend(framework), then the first `import keras` of the process, without the other
    backends' frameworks: Keras 3 imports jax whenever it is installed (its Orbax checkpoint
    callback, inside a try/except ImportError), so keras-torch and keras would load JAX for
    nothing. During the import, each framework Keras does not run on, and that is not loaded
    yet, reads as not installed."""
    use_backend(framework)
    if "keras" in sys.modules:
        return
    others = set(KERAS_BACKENDS.values()) - {KERAS_BACKENDS[framework]}
    hide = _NotInstalled({m for m in others if m not in sys.modules})
    sys.meta_path.insert(0, hide)
    try:
        import keras  # noqa: F401
    finally:
        sys.meta_path.remove(hide)


class _NotInstalled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook under which `import name` (or a submodule) fails with ModuleNotFoundError, as if
    name were not installed. find_spec answers with a spec without origin rather than raising, so
    code that only probes importlib.util.find_spec (torch's dynamo does) goes on unharmed."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            return ModuleSpec(fullname, self)
        return None  # not ours: the other finders look

    def create_module(self, spec: ModuleSpec) -> None:
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module: object) -> None:  # never reached: create_module raised
        raise ModuleNotFoundError(f"No module named {module!r}")


# ---------------------------------------------------------------- native mode (docs/native.md)

# Native mode gives every Keras draw its own integer seed, seed * 1000 + slot: slot l for layer l's
# kernel, SHUFFLE_SLOT for the shuffle generator. Keras seeds an int s as the key [s, 0],
# so one shared seed would make the epoch-0 shuffle an argsort of the first layer's very draws.
SHUFFLE_SLOT = 999


def native_seed(seed: int, slot: int) -> int:
    return seed * 1000 + slot


def native_init(spec: MLPSpec, seed: int, dtype: str) -> Params:
    """keras.layers.Dense's defaults: kernel GlorotUniform, U(-r, r) with r = sqrt(6 / (fan_in +
    fan_out)), seeded with native_seed(seed, layer) (a stateless draw); bias zeros. Drawn in
    float32 (Keras's floatx) on the CPU through the loaded backend's own RNG, then cast to dtype."""
    import keras

    layers = []
    with keras.device("cpu:0"):
        for layer, (fan_in, fan_out) in enumerate(spec.shapes()):
            kernel = keras.initializers.GlorotUniform(seed=native_seed(seed, layer))
            w = keras.ops.convert_to_numpy(kernel((fan_in, fan_out), dtype="float32"))
            layers.append((w, np.zeros(fan_out)))
    return as_params(layers, dtype)


def native_orders(n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """One order per epoch: keras.random.shuffle of range(n), drawn on the CPU from a local
    SeedGenerator(native_seed(seed, SHUFFLE_SLOT)) (an argsort of a stateless uniform draw: the
    kind of uniform permutation fit(shuffle=True) draws, not its stream; docs/native.md)."""
    import keras

    with keras.device("cpu:0"):  # a named generator: no auto-name counter bumped
        gen = keras.random.SeedGenerator(native_seed(seed, SHUFFLE_SLOT), name="native_orders")
    for _ in range(epochs):
        with keras.device("cpu:0"):  # closed before each yield: an open scope would leak to the caller
            order = keras.random.shuffle(keras.ops.arange(n, dtype="int64"), seed=gen)
            order = keras.ops.convert_to_numpy(order)
        yield order.astype(np.int64)


class KerasNative:
    """Native mode of the three Keras frameworks, a mixin placed before the backend's base class:
    keras.layers.Dense's defaults and fit(shuffle=True)'s kind of order, drawn by Keras's RNG on
    the loaded backend (TensorFlow's, JAX's or torch's stateless draws: each backend its own numbers).
    On TensorFlow, fit's array adapter draws tf.random.shuffle(tf.range(n)) per epoch, a stateful op
    only a global seed makes repeatable; a local SeedGenerator gives fit's distribution, not its stream."""

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        return native_init(spec, seed, dtype)

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        return native_orders(n, epochs, seed)


# ---------------------------------------------------------------- one epoch of fit()


def check_steps_per_execution(n: int) -> int:
    """Keras's own option (fit's steps per call to the device): >= 1."""
    if n < 1:
        raise ValueError(f"steps_per_execution must be >= 1, got {n}")
    return n


def fit_epoch(model: Any, x: Any, t: Any, masks: list | None, batch_size: int, dtype: str) -> None:
    """One epoch of model.fit over x (N, in), t (N, K) and the masks (N, hidden_l), all already in the
    epoch's order and on the device: shuffle=False keeps the shared order. The masks ride along as
    extra inputs, fit((x, *masks), t), so fit's batching hands each step its own mask rows."""
    inputs = (x, *masks) if masks else x
    with floatx(dtype):
        model.fit(inputs, t, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)


def split_inputs(inputs: Any) -> tuple[Any, list | None]:
    """A train_step's inputs -> (x (B, in), the batch's masks per hidden layer or None)."""
    x, *masks = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return x, (list(masks) or None)


@contextlib.contextmanager
def floatx(dtype: str) -> Iterator[None]:
    """fit() casts float inputs to keras.config.floatx(); keep float64 data float64 meanwhile."""
    import keras

    old = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old)
