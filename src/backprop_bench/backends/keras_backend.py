"""Keras 3 (on TensorFlow): a keras.Model of Dense layers trained with compile/fit.

fit() owns the loop (batching, steps_per_execution, jit_compile). The model's train_step
runs the shared step of _tf_common through its Dense layers, because Keras's built-in
optimizers put momentum and eps elsewhere than OptimizerSpec. Each step writes its
pre-update loss into a device buffer read once per epoch (Keras logs a running mean).
The shared batch order reaches fit as pre-permuted data (gathered on the device), shuffle=False;
dropout masks ride along as extra inputs, fit((x, *masks), t): their rows already follow the
order, so fit's batching hands each step its own rows. What the three Keras frameworks share
(the backend choice, native mode, the fit() call) is _keras_common's.
"""

from __future__ import annotations

from backprop_bench.backends import _keras_common as kc

kc.load_keras("keras")  # Keras on its backend, before anything else imports keras

import keras  # noqa: E402
import numpy as np  # noqa: E402

from backprop_bench.backends import _tf_common as tfc  # noqa: E402
from backprop_bench.backends._keras_common import SHUFFLE_SLOT, native_seed  # noqa: E402, F401 (re-exported)
from backprop_bench.backends._tf_common import tf  # noqa: E402
from backprop_bench.backends.base import n_steps  # noqa: E402
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params, Regularization  # noqa: E402


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
        x, masks = kc.split_inputs(inputs)
        loss = self.step_fn(self.net, self.opt, x, t, masks)
        # a scatter, not loss_buffer[k].assign: XLA wants constant slice bounds, would recompile per k
        self.loss_buffer.scatter_nd_update(tf.reshape(self.step_index, (1, 1)), tf.reshape(loss, (1,)))
        self.step_index.assign_add(1)
        return {"loss": loss}  # the raw step loss (Keras would log a running mean)


class KerasBackend(kc.KerasNative, tfc.TfBackend):
    framework = "keras"
    compile_mode = "xla (jit_compile)"

    def __init__(
        self, spec: MLPSpec, init: Params, optimizer: OptimizerSpec, *, steps_per_execution: int = 1, **options
    ) -> None:
        self.steps_per_execution = kc.check_steps_per_execution(steps_per_execution)  # Keras's own option
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
            masks = None if masks is None else [tf.constant(m) for m in masks]
            self.model.step_index.assign(0)
            kc.fit_epoch(self.model, x, t, masks, batch_size, self.dtype)
            return self.model.loss_buffer[:steps].numpy()  # one read per epoch

    def _phase_step(self):
        """One train_step of the model (fit's own step, the loss buffer write included) on one batch."""
        self._ensure_loss_buffer(1)

        def step(x: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
            self.model.step_index.assign(0)  # one slot, reused: the buffer is the epoch's, not the phases'
            return self.model.train_step((x, t))["loss"]

        return step

    def _info(self) -> dict[str, str]:
        return tfc.device_info(self.device) | {
            "framework_version": f"keras {keras.__version__} / tensorflow {tf.__version__}",
            "keras_version": keras.__version__,
            "steps_per_execution": str(self.steps_per_execution),
        }
