"""Low-level TensorFlow: tf.GradientTape inside one tf.function per epoch.

The train set sits on the device (TfBackend.load). train_epoch sends the epoch's order
(N,) and dropout masks once; inside one tf.function a loop over tf.range gathers each batch
on the device, slices its mask rows, runs one step of _tf_common (parallel or sequential)
and writes its pre-update loss into a TensorArray, read back once at the end.
compile=True traces it with XLA (jit_compile).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np

from backprop_bench.backends import _tf_common as tfc
from backprop_bench.backends._tf_common import tf
from backprop_bench.backends.base import as_params
from backprop_bench.core.specs import MLPSpec, Params


class TensorflowBackend(tfc.TfBackend):
    framework = "tensorflow"
    compile_mode = "xla"

    def _setup(self, init: Params) -> None:
        self.net = tfc.Net(self.spec, tfc.make_variables(init, self.dtype, self._tf_device), reg=self.reg)
        with tf.device(self._tf_device):
            self.opt = tfc.Optimizer(self.opt_spec, self.net.trainable(), tf.as_dtype(self.dtype))
        self._step = tfc.STEPS[self.strategy]
        # Retraced once per (N, batch_size): shapes stay static, which XLA needs. The masks
        # are always a tuple (empty without dropout), so they add no retrace per epoch.
        self._epoch_fn = tf.function(self._epoch_graph, jit_compile=self.compile)

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        with tf.device(self._tf_device):
            masks_t = tuple(tf.constant(m) for m in masks or ())
            return self._epoch_fn(self._x, self._t, tf.constant(order), int(batch_size), masks_t).numpy()  # one read

    def _epoch_graph(
        self, x: tf.Tensor, t: tf.Tensor, order: tf.Tensor, batch_size: int, masks: tuple[tf.Tensor, ...]
    ) -> tf.Tensor:
        """All steps of one epoch; returns the (n_steps,) pre-update batch losses.
        masks: () or per hidden layer (N, hidden_l), row k for position k of order (not sample order[k])."""
        n_full, rest = divmod(int(order.shape[0]), batch_size)  # static at trace time
        losses = tf.TensorArray(x.dtype, size=n_full + (rest > 0))
        full = tf.reshape(order[: n_full * batch_size], (n_full, batch_size))  # (steps, B)
        # per hidden layer (steps, B, hidden_l): batch i's rows are full_masks[l][i], like full[i]
        full_masks = [tf.reshape(m[: n_full * batch_size], (n_full, batch_size, m.shape[1])) for m in masks]
        for i in tf.range(n_full):
            idx = full[i]
            step_masks = [m[i] for m in full_masks] if masks else None
            loss = self._step(self.net, self.opt, tf.gather(x, idx), tf.gather(t, idx), step_masks)
            losses = losses.write(i, loss)
        if rest:  # the short last batch, its own static shape
            idx = order[n_full * batch_size :]
            step_masks = [m[n_full * batch_size :] for m in masks] if masks else None
            loss = self._step(self.net, self.opt, tf.gather(x, idx), tf.gather(t, idx), step_masks)
            losses = losses.write(n_full, loss)
        return losses.stack()

    def _phase_step(self):
        """The epoch's step, parallel_step, on one batch."""
        return functools.partial(tfc.parallel_step, self.net, self.opt)

    def _info(self) -> dict[str, str]:
        return tfc.device_info(self.device)

    # ------------------------------------------------------------ native mode (docs/native.md)

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        """Glorot (Xavier) uniform W ~ U(-r, r), r = sqrt(6 / (fan_in + fan_out)), and b = 0, as TF's
        low-level (Core API) MLP guide writes it by hand; drawn in float32, layer by layer, from one
        local tf.random.Generator.from_seed(seed) (Philox), never TF's global generator."""
        layers = []
        with tf.device("/CPU:0"):  # the generator and its draws on the CPU: a GPU run starts the same
            g = tf.random.Generator.from_seed(seed, alg="philox")
            for fan_in, fan_out in spec.shapes():
                r = math.sqrt(6.0 / (fan_in + fan_out))
                layers.append((g.uniform((fan_in, fan_out), -r, r, dtype=tf.float32).numpy(), np.zeros(fan_out)))
        return as_params(layers, dtype)

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        """tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True), one pass per
        epoch: a full buffer, so a uniform shuffle, reshuffled by each new iterator. batch(n) only
        hands the pass over in one piece (order kept). tf.data pairs the op seed with TF's global seed
        when one is set (tf.random.set_seed), else with a fixed default; the project sets none."""
        ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(n)
        for _ in range(epochs):
            yield next(iter(ds)).numpy().astype(np.int64)
