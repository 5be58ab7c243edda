"""Keras 3 (on TensorFlow): a keras.Model of Dense layers trained with compile/fit.

fit() owns the loop (batching, steps_per_execution, jit_compile). The model's train_step
runs the shared step of _tf_common through its Dense layers, because Keras's built-in
optimizers put momentum and eps elsewhere than OptimizerSpec. Each step writes its
pre-update loss into a device buffer read once per epoch (Keras logs a running mean).
The shared batch order reaches fit as pre-permuted data (gathered on the device), shuffle=False;
dropout masks ride along as extra inputs, fit((x, *masks), t): their rows already follow the
order, so fit's batching hands each step its own rows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # must precede the first `import keras`

import keras  # noqa: E402
import numpy as np  # noqa: E402

from backprop_bench.backends import _tf_common as tfc  # noqa: E402
from backprop_bench.backends._tf_common import tf  # noqa: E402
from backprop_bench.backends.base import as_params, n_steps  # noqa: E402
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params, Regularization  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"framework=keras runs Keras 3 on TensorFlow, but keras was loaded with "
        f"KERAS_BACKEND={keras.backend.backend()!r}; unset it or set it to 'tensorflow'"
    )


class _MLP(keras.Model):
    """Dense layers (no activation inside: the strategies need each z) plus our train_step."""

    def __init__(self, spec: MLPSpec, dtype: str, reg: Regularization) -> None:
        super().__init__(dtype=dtype, name="mlp")
        self.spec = spec
        self.dense = [keras.layers.Dense(o, dtype=dtype, name=f"dense_{i}") for i, (_, o) in enumerate(spec.shapes())]
        for layer, (n_in, _) in zip(self.dense, spec.shapes()):
            layer.build((None, n_in))
        self.built = True
        # Net over the layers' own kernel/bias variables; they are the linear maps
        layers = [(d.kernel.value, d.bias.value) for d in self.dense]
        self.net = tfc.Net(spec, layers, linears=list(self.dense), reg=reg)
        self.opt: tfc.Optimizer | None = None
        self.step_fn = None
        self.loss_buffer: tf.Variable | None = None  # (capacity,) pre-update loss of each step
        self.step_index = tf.Variable(0, dtype=tf.int32, trainable=False)  # next slot in loss_buffer

    def call(self, x: tf.Tensor) -> tf.Tensor:
        zs, _ = self.net.forward(x)
        return tfc.activate(self.spec.output_activation, zs[-1])

    def train_step(self, data: tuple) -> dict[str, tf.Tensor]:
        inputs, t = data  # inputs: x (B, in), or (x, mask per hidden layer (B, hidden_l)) with dropout
        x, *masks = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        loss = self.step_fn(self.net, self.opt, x, t, masks or None)
        # a scatter, not loss_buffer[k].assign: XLA wants constant slice bounds, would recompile per k
        self.loss_buffer.scatter_nd_update(tf.reshape(self.step_index, (1, 1)), tf.reshape(loss, (1,)))
        self.step_index.assign_add(1)
        return {"loss": loss}  # the raw step loss (Keras would log a running mean)


class KerasBackend(tfc.TfBackend):
    framework = "keras"
    compile_mode = "xla (jit_compile)"

    def __init__(
        self, spec: MLPSpec, init: Params, optimizer: OptimizerSpec, *, steps_per_execution: int = 1, **options
    ) -> None:
        if steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
        self.steps_per_execution = steps_per_execution  # Keras's own option: steps per fit() call
        super().__init__(spec, init, optimizer, **options)

    def _setup(self, init: Params) -> None:
        with tf.device(self._tf_device):
            self.model = _MLP(self.spec, self.dtype, self.reg)
            for layer, (w, b) in zip(self.model.dense, init):
                layer.kernel.assign(np.asarray(w, self.dtype))  # (in, out), as Keras stores it
                layer.bias.assign(np.asarray(b, self.dtype))
            self.net = self.model.net
            self.opt = self.model.opt = tfc.Optimizer(self.opt_spec, self.net.trainable(), tf.as_dtype(self.dtype))
        self.model.step_fn = tfc.STEPS[self.strategy]
        self.model.compile(optimizer=None, jit_compile=self.compile, steps_per_execution=self.steps_per_execution)
        if self.compile and not self.model.jit_compile:  # Keras only warns, e.g. under TF op determinism
            raise RuntimeError("framework=keras compile=true: Keras turned jit_compile off here (see its warning)")

    def _ensure_loss_buffer(self, steps: int) -> None:
        """One slot per step of the epoch; a new buffer variable needs a new trace of fit's step."""
        if self.model.loss_buffer is None or int(self.model.loss_buffer.shape[0]) < steps:
            with tf.device(self._tf_device):
                self.model.loss_buffer = tf.Variable(tf.zeros(steps, self.dtype), trainable=False)
            self.model.train_function = None

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        steps = n_steps(len(order), batch_size)
        self._ensure_loss_buffer(steps)
        with tf.device(self._tf_device):
            x, t = tf.gather(self._x, order), tf.gather(self._t, order)  # the shared order, on device
            # masks are per position of order already: passed as they are, not gathered
            inputs = (x, *(tf.constant(m) for m in masks)) if masks else x
            self.model.step_index.assign(0)
            with _floatx(self.dtype):
                self.model.fit(inputs, t, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            return self.model.loss_buffer[:steps].numpy()  # one read per epoch

    # ------------------------------------------------------------ native mode (docs/native.md)

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        """keras.layers.Dense's defaults: kernel GlorotUniform, U(-r, r) with r = sqrt(6 / (fan_in +
        fan_out)), seeded with native_seed(seed, layer) (a stateless draw); bias zeros. Drawn in
        float32 (Keras's floatx) on the CPU, then cast to dtype."""
        layers = []
        with tf.device("/CPU:0"):
            for layer, (fan_in, fan_out) in enumerate(spec.shapes()):
                kernel = keras.initializers.GlorotUniform(seed=native_seed(seed, layer))
                layers.append((kernel((fan_in, fan_out), dtype="float32").numpy(), np.zeros(fan_out)))
        return as_params(layers, dtype)

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        """fit(x, y, shuffle=True)'s epoch order, seeded locally. On TensorFlow, Keras's array data
        adapter draws tf.random.shuffle(tf.range(n)) once per epoch, a stateful op that only a global
        seed (keras.utils.set_random_seed) makes repeatable. Here keras.random.shuffle draws the same
        kind of uniform permutation (an argsort of a stateless uniform draw) from a local
        SeedGenerator(native_seed(seed, SHUFFLE_SLOT)), one per epoch: fit's distribution, not its stream."""
        with tf.device("/CPU:0"):  # a named generator: no auto-name counter bumped
            gen = keras.random.SeedGenerator(native_seed(seed, SHUFFLE_SLOT), name="native_orders")
        for _ in range(epochs):
            with tf.device("/CPU:0"):  # closed before each yield: an open scope would leak to the caller
                order = keras.random.shuffle(tf.range(n, dtype=tf.int64), seed=gen)
            yield order.numpy().astype(np.int64)

    def _info(self) -> dict[str, str]:
        return tfc.device_info(self.device) | {
            "framework_version": f"keras {keras.__version__} / tensorflow {tf.__version__}",
            "keras_version": keras.__version__,
            "steps_per_execution": str(self.steps_per_execution),
        }


# Native mode gives every Keras draw its own integer seed, seed * 1000 + slot: slot l for layer l's
# kernel, SHUFFLE_SLOT for the shuffle generator. Keras seeds an int s as the Philox key [s, 0],
# so one shared seed would make the epoch-0 shuffle an argsort of the first layer's very draws.
SHUFFLE_SLOT = 999


def native_seed(seed: int, slot: int) -> int:
    return seed * 1000 + slot


@contextlib.contextmanager
def _floatx(dtype: str) -> Iterator[None]:
    """fit() casts float inputs to keras.config.floatx(); keep float64 data float64 meanwhile."""
    old = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old)
