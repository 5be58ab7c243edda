"""Low-level TensorFlow: tf.GradientTape inside a tf.function, the whole epoch in one call.

The train set goes to the device once, in load(). train_epoch() sends the epoch's order
(N,) once; inside one tf.function a loop over tf.range picks each batch with tf.gather
on the device, runs one step (parallel or sequential, from _tf_common) and writes its
pre-update loss into a TensorArray. The per-step losses come back in one read at the end
of the epoch. compile=True traces that function with jit_compile=True (XLA).

    backend = TensorflowBackend(spec, init_params(spec, InitSpec()), OptimizerSpec(),
                                strategy="sequential", device="cpu", compile=True)
    backend.load(x, y); backend.train_epoch(np.random.permutation(len(x)), 64)
"""

from __future__ import annotations

import numpy as np

from backprop_bench.backends import _tf_common as tfc
from backprop_bench.backends._tf_common import tf
from backprop_bench.backends.base import check_args, check_batch
from backprop_bench.model import MLPSpec, OptimizerSpec, Params, accuracy, as_targets


class TensorflowBackend:
    framework = "tensorflow"

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
        self.spec, self.strategy, self.dtype, self.compile = spec, strategy, dtype, compile
        self.record_steps = record_steps
        self.step_losses: np.ndarray | None = None
        self.device, self._tf_device = tfc.resolve_device(device, self.framework)
        self._net = tfc.Net(spec, tfc.make_variables(init, dtype, self._tf_device))
        with tf.device(self._tf_device):
            self._opt = tfc.Optimizer(optimizer, self._net.trainable(), tf.as_dtype(dtype))
        self._step = tfc.STEPS[strategy]
        # Retraced once per (N, batch_size): shapes stay static, which XLA needs.
        self._epoch_fn = tf.function(self._epoch, jit_compile=compile)
        self._eval_fn = tf.function(self._net.predict_and_loss)
        self._x = self._t = None

    # --- training -----------------------------------------------------------------------

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        """Put the train set on the device once: x (N, in), targets (N, out)."""
        with tf.device(self._tf_device):
            self._x = tf.identity(tf.constant(np.asarray(x, self.dtype)))
            self._t = tf.identity(tf.constant(as_targets(np.asarray(y), self.spec.sizes[-1], self.dtype)))

    def train_epoch(self, order: np.ndarray, batch_size: int) -> float:
        order = check_batch(order, None if self._x is None else int(self._x.shape[0]), batch_size)
        with tf.device(self._tf_device):
            losses = self._epoch_fn(self._x, self._t, tf.constant(order), int(batch_size)).numpy()  # one read
        self.step_losses = losses.astype(np.float64) if self.record_steps else None
        return tfc.epoch_loss(losses, len(order), batch_size)

    def _epoch(self, x: tf.Tensor, t: tf.Tensor, order: tf.Tensor, batch_size: int) -> tf.Tensor:
        """All steps of one epoch; returns the (n_steps,) pre-update batch losses."""
        n_full, rest = divmod(int(order.shape[0]), batch_size)  # static at trace time
        losses = tf.TensorArray(x.dtype, size=n_full + (rest > 0))
        full = tf.reshape(order[: n_full * batch_size], (n_full, batch_size))  # (steps, B)
        for i in tf.range(n_full):
            idx = full[i]
            losses = losses.write(i, self._step(self._net, self._opt, tf.gather(x, idx), tf.gather(t, idx)))
        if rest:  # the short last batch, its own static shape
            idx = order[n_full * batch_size :]
            losses = losses.write(n_full, self._step(self._net, self._opt, tf.gather(x, idx), tf.gather(t, idx)))
        return losses.stack()

    # --- evaluation and state -----------------------------------------------------------

    def _outputs(self, x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, float]:
        n_out = self.spec.sizes[-1]
        t = np.zeros((len(x), n_out), self.dtype) if y is None else as_targets(np.asarray(y), n_out, self.dtype)
        with tf.device(self._tf_device):
            probs, loss = self._eval_fn(tf.constant(np.asarray(x, self.dtype)), tf.constant(t))
        return probs.numpy(), float(loss.numpy())

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        probs, loss = self._outputs(x, y)
        return loss, accuracy(probs, np.asarray(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._outputs(x, None)[0]

    def params(self) -> Params:
        return tfc.to_numpy(self._net.layers)

    def synchronize(self) -> None:
        tfc.synchronize()

    def info(self) -> dict[str, str]:
        return tfc.device_info(self.device, "xla" if self.compile else "tf.function")
