"""Keras 3 (on TensorFlow): a keras.Model of Dense layers trained with compile/fit.

fit() owns the loop: batching, steps_per_execution and jit_compile are Keras's own.
The custom train_step runs the shared step of _tf_common (the strategy and the
optimizer rule of OptimizerSpec, which Keras's built-in optimizers do not follow: they
put momentum and eps elsewhere) through the model's Dense layers. Each step writes its
pre-update loss into a device buffer, read back once per epoch, because the loss Keras
logs is a running mean and, with steps_per_execution > 1, reaches callbacks only every
k steps.

The shared batch order reaches Keras as pre-permuted data, x[order] and t[order]
(gathered on the device), with shuffle=False.

    backend = KerasBackend(spec, init, OptimizerSpec("adam"), compile=True, steps_per_execution=8)
    backend.load(x, y); backend.train_epoch(order, 64)
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # must precede the first `import keras`

import keras  # noqa: E402
import numpy as np  # noqa: E402

from backprop_bench.backends import _tf_common as tfc  # noqa: E402
from backprop_bench.backends._tf_common import tf  # noqa: E402
from backprop_bench.backends.base import check_args, check_batch  # noqa: E402
from backprop_bench.model import (  # noqa: E402
    MLPSpec,
    OptimizerSpec,
    Params,
    accuracy,
    as_targets,
)

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"framework=keras runs Keras 3 on TensorFlow, but keras was loaded with "
        f"KERAS_BACKEND={keras.backend.backend()!r}; unset it or set it to 'tensorflow'"
    )


class _MLP(keras.Model):
    """Dense layers (no activation inside: the strategies need each z) plus our train_step."""

    def __init__(self, spec: MLPSpec, dtype: str) -> None:
        super().__init__(dtype=dtype, name="mlp")
        self.spec = spec
        self.dense = [keras.layers.Dense(o, dtype=dtype, name=f"dense_{i}") for i, (_, o) in enumerate(spec.shapes())]
        self.net: tfc.Net | None = None  # set by KerasBackend once the layers are built
        self.opt: tfc.Optimizer | None = None
        self.step_fn = None
        self.loss_buffer: tf.Variable | None = None  # (capacity,) pre-update loss of each step
        self.step_index: tf.Variable | None = None  # next slot in loss_buffer

    def build(self, input_shape: tuple) -> None:
        for layer, (n_in, _) in zip(self.dense, self.spec.shapes()):
            layer.build((None, n_in))
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        zs, _ = self.net.forward(x)
        return tfc.activate(self.spec.output_activation, zs[-1])

    def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        x, t = data
        loss = self.step_fn(self.net, self.opt, x, t)
        # a scatter, not loss_buffer[k].assign: XLA wants slice bounds constant and would
        # recompile for every k
        self.loss_buffer.scatter_nd_update(tf.reshape(self.step_index, (1, 1)), tf.reshape(loss, (1,)))
        self.step_index.assign_add(1)
        return {"loss": loss}  # the raw step loss (Keras would log a running mean)


class KerasBackend:
    framework = "keras"

    def __init__(
        self,
        spec: MLPSpec,
        init: Params,
        optimizer: OptimizerSpec,
        *,
        strategy: str = "parallel",
        device: str = "cpu",
        dtype: str = "float32",
        compile: bool = False,
        steps_per_execution: int = 1,
        record_steps: bool = False,
    ) -> None:
        check_args(self.framework, spec, init, strategy, dtype, compile, steps_per_execution)
        self.spec, self.strategy, self.dtype = spec, strategy, dtype
        self.compile, self.steps_per_execution, self.record_steps = compile, steps_per_execution, record_steps
        self.step_losses: np.ndarray | None = None
        self.device, self._tf_device = tfc.resolve_device(device, self.framework)
        with tf.device(self._tf_device):
            self.model = _MLP(spec, dtype)
            self.model.build((None, spec.sizes[0]))
            for layer, (w, b) in zip(self.model.dense, init):
                layer.kernel.assign(np.asarray(w, dtype))  # (in, out), as Keras stores it
                layer.bias.assign(np.asarray(b, dtype))
            variables = [(layer.kernel.value, layer.bias.value) for layer in self.model.dense]  # the tf.Variables
            self.model.net = tfc.Net(spec, variables, linears=list(self.model.dense))
            self.model.opt = tfc.Optimizer(optimizer, self.model.net.trainable(), tf.as_dtype(dtype))
            self.model.step_index = tf.Variable(0, dtype=tf.int32, trainable=False)
        self.model.step_fn = tfc.STEPS[strategy]
        self.model.compile(optimizer=None, jit_compile=compile, steps_per_execution=steps_per_execution)
        if compile and not self.model.jit_compile:  # Keras only warns, e.g. under TF op determinism
            raise RuntimeError("framework=keras compile=true: Keras turned jit_compile off here (see its warning)")
        self._eval_fn = tf.function(self.model.net.predict_and_loss)
        self._x = self._t = None

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        """Put the train set on the device once; each epoch gathers its order from there."""
        with tf.device(self._tf_device):
            self._x = tf.identity(tf.constant(np.asarray(x, self.dtype)))
            self._t = tf.identity(tf.constant(as_targets(np.asarray(y), self.spec.sizes[-1], self.dtype)))

    def _ensure_loss_buffer(self, n_steps: int) -> None:
        """One slot per step of the epoch; a new buffer variable needs a new trace of fit's step."""
        if self.model.loss_buffer is None or int(self.model.loss_buffer.shape[0]) < n_steps:
            with tf.device(self._tf_device):
                self.model.loss_buffer = tf.Variable(tf.zeros(n_steps, self.dtype), trainable=False)
            self.model.train_function = None

    def train_epoch(self, order: np.ndarray, batch_size: int) -> float:
        order = check_batch(order, None if self._x is None else int(self._x.shape[0]), batch_size)
        n_steps = -(-len(order) // batch_size)
        self._ensure_loss_buffer(n_steps)
        with tf.device(self._tf_device):
            x, t = tf.gather(self._x, order), tf.gather(self._t, order)  # the shared order, on device
            self.model.step_index.assign(0)
            with _floatx(self.dtype):
                self.model.fit(x, t, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            losses = self.model.loss_buffer[:n_steps].numpy()  # one read per epoch
        self.step_losses = losses.astype(np.float64) if self.record_steps else None
        return tfc.epoch_loss(losses, len(order), batch_size)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        probs, loss = self._outputs(x, y)
        return loss, accuracy(probs, np.asarray(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self._tf_device), _floatx(self.dtype):
            return np.asarray(self.model.predict(np.asarray(x, self.dtype), batch_size=_EVAL_BATCH, verbose=0))

    def _outputs(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Probabilities and the mean loss, in batches of _EVAL_BATCH rows, same loss as training."""
        t = as_targets(np.asarray(y), self.spec.sizes[-1], self.dtype)
        total, probs = 0.0, []
        with tf.device(self._tf_device):
            for start in range(0, len(x), _EVAL_BATCH):
                xb = tf.constant(np.asarray(x[start : start + _EVAL_BATCH], self.dtype))
                p, loss = self._eval_fn(xb, tf.constant(t[start : start + _EVAL_BATCH]))
                total += float(loss) * int(xb.shape[0])
                probs.append(p.numpy())
        return np.concatenate(probs), total / len(x)

    def params(self) -> Params:
        return [(layer.kernel.numpy().copy(), layer.bias.numpy().copy()) for layer in self.model.dense]

    def synchronize(self) -> None:
        tfc.synchronize()

    def info(self) -> dict[str, str]:
        mode = "fit+xla" if self.compile else "fit"
        out = tfc.device_info(self.device, f"{mode}, steps_per_execution={self.steps_per_execution}")
        out["keras_version"] = keras.__version__
        out["framework_version"] = f"keras {keras.__version__} / tensorflow {tf.__version__}"
        return out


@contextlib.contextmanager
def _floatx(dtype: str) -> Iterator[None]:
    """fit()/predict() cast float inputs to keras.config.floatx(); keep float64 data float64 meanwhile."""
    old = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old)


_EVAL_BATCH = 8192  # rows per evaluation batch: bounds memory, few calls
