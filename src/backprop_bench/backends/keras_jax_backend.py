"""Keras 3 on JAX: a keras.Model of Dense layers trained with compile/fit, around the JAX backend's math.

fit() owns the loop (batching, steps_per_execution, jit_compile: Keras on JAX jits its
stateless train_step). The model's train_step(state, data) runs jax_backend.py's pure step
(parallel_step / sequential_step, OptimizerSpec's rule in jax_backend.update) on the Dense
layers' kernel and bias values: Keras adds its layers, variables and loop, the math is the
`jax` framework's, so a paired comparison of the two measures what Keras costs.
The optimizer slots, the step count t, the learning rate and a loss buffer are non-trainable
Keras variables, so the state fit threads through the jitted steps carries them. Each step
writes its pre-update loss into the buffer, read once per epoch: fit's logs keep only the last
step of each execution (steps_per_execution > 1), and reading each step's log would sync per step.
The shared order reaches fit as pre-permuted data (gathered on the device), shuffle=False;
dropout masks ride along as extra inputs (_keras_common.fit_epoch).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from backprop_bench.backends import _keras_common as kc

kc.load_keras("keras-jax")  # Keras on its backend, before anything else imports keras

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from backprop_bench.backends import jax_backend as jb  # noqa: E402  (sets jax_enable_x64: float64 runs)
from backprop_bench.backends.base import n_steps  # noqa: E402
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params, Regularization  # noqa: E402


class _MLP(keras.Model):
    """Dense layers, the JAX backend's state as non-trainable variables, and a stateless train_step."""

    def __init__(
        self,
        spec: MLPSpec,
        opt: OptimizerSpec,
        reg: Regularization,
        strategy: str,
        dtype: str,
        capacity: int,
        device: jax.Device,
    ) -> None:
        super().__init__(dtype=dtype, name="mlp")
        self.spec, self.jax_device = spec, device
        self.dense = [keras.layers.Dense(o, dtype=dtype, name=f"dense_{i}") for i, (_, o) in enumerate(spec.shapes())]
        for layer, (n_in, _) in zip(self.dense, spec.shapes()):
            layer.build((None, n_in))
        self.built = True
        self.step = partial(jb.STEP[strategy], spec, opt, reg)  # (params, slots, step t, lr, x, targets, masks)

        def state(name: str, shape: tuple = (), dtype: str = dtype):
            return self.add_weight(shape=shape, initializer="zeros", dtype=dtype, trainable=False, name=name)

        # per layer (W's slots, b's slots), each a tuple of opt.n_slots: jax_backend's slots pytree
        self.slot_vars = [
            tuple(
                tuple(state(f"{d.name}_{v.name}_{k}", v.shape) for k in range(opt.n_slots)) for v in (d.kernel, d.bias)
            )
            for d in self.dense
        ]
        self.count = state("step_count", dtype="float64")  # the global step t, float64 as in jax_backend
        self.lr = state("lr", dtype="float64")
        self.capacity = capacity
        self.loss_buffer = state("loss_buffer", (capacity,))  # (capacity,) pre-update loss of each step
        self.step_index = state("step_index", dtype="int32")  # next slot in loss_buffer

    def reset_metrics(self) -> None:
        """fit zeroes its loss tracker each epoch with uncommitted arrays, while the step returns them
        committed to the device: committed here too, so that fit's second step compiles nothing more."""
        super().reset_metrics()
        for v in self.metrics_variables:
            v.assign(jax.device_put(v.value, self.jax_device))

    def call(self, x: jax.Array) -> jax.Array:
        params = [(d.kernel.value, d.bias.value) for d in self.dense]
        return jb.outputs(self.spec, params, x, jax.numpy.zeros((len(x), self.spec.sizes[-1]), x.dtype))[0]

    def train_step(self, state: tuple, data: tuple) -> tuple[dict, tuple]:
        trainable, non_trainable, optimizer_values, metrics_values = state  # values, in Keras's variable order
        values = dict(zip(map(id, self.trainable_variables), trainable))
        values |= dict(zip(map(id, self.non_trainable_variables), non_trainable))
        get = lambda v: values[id(v)]  # noqa: E731
        params = [(get(d.kernel), get(d.bias)) for d in self.dense]
        slots = [tuple(tuple(map(get, group)) for group in layer) for layer in self.slot_vars]
        inputs, t = data  # inputs: x (B, in), or (x, mask per hidden layer (B, hidden_l)) with dropout
        x, masks = kc.split_inputs(inputs)
        count, index = get(self.count) + 1, get(self.step_index)
        params, slots, loss = self.step(params, slots, count, get(self.lr), x, t, masks)

        new = {id(self.count): count, id(self.step_index): index + 1}
        new[id(self.loss_buffer)] = get(self.loss_buffer).at[index].set(loss)
        for d, (w, b) in zip(self.dense, params):
            new[id(d.kernel)], new[id(d.bias)] = w, b
        for layer_vars, layer_values in zip(self.slot_vars, slots):
            for group_vars, group_values in zip(layer_vars, layer_values):
                new.update(zip(map(id, group_vars), group_values))
        trainable = [new.get(id(v), value) for v, value in zip(self.trainable_variables, trainable)]
        non_trainable = [new.get(id(v), value) for v, value in zip(self.non_trainable_variables, non_trainable)]
        return {"loss": loss}, (trainable, non_trainable, optimizer_values, metrics_values)


class _NoOptimizer:
    """Keras on JAX's fit reads model.optimizer.variables into its state even with compile(optimizer=None);
    the update is the train_step's, so this stand-in holds none."""

    variables: tuple = ()
    built = True


class KerasJaxBackend(kc.KerasNative, jb.JaxBackend):
    """JaxBackend's plumbing (device, data, evaluation, weights), its state held in a Keras model's variables."""

    framework = "keras-jax"
    compile_mode = ""  # Keras on JAX jits its train_step always (jit_compile); JaxBackend's scanned epoch is not fit's

    def __init__(
        self, spec: MLPSpec, init: Params, optimizer: OptimizerSpec, *, steps_per_execution: int = 1, **options
    ) -> None:
        self.steps_per_execution = kc.check_steps_per_execution(steps_per_execution)
        super().__init__(spec, init, optimizer, **options)

    def _setup(self, init: Params) -> None:
        self.model = self._new_model(capacity=1)
        super()._setup(init)  # JaxBackend's: weights, zero slots, t = 0 and lr, through the properties below

    def _new_model(self, capacity: int) -> _MLP:
        with keras.device(self._dev):
            model = _MLP(self.spec, self.opt_spec, self.reg, self.strategy, self.dtype, capacity, self._dev)
        model.compile(optimizer=None, jit_compile="auto", steps_per_execution=self.steps_per_execution)
        # every variable committed to the device, as the step's outputs are: fit's second step, or
        # the second fit, would otherwise compile the step once more
        for v in model.variables:
            v.assign(self._put(v.value))
        if not model.jit_compile:
            raise RuntimeError("framework=keras-jax: Keras turned jit_compile off here (see its warning)")
        model.optimizer = _NoOptimizer()
        return model

    def _ensure_capacity(self, steps: int) -> None:
        """One loss slot per step of the epoch. Keras tracks a variable once added, so a larger buffer
        takes a new model (its first fit traces again), carrying over the weights and optimizer state."""
        if self.model.capacity < steps:
            state = self._params, self._slots, self._count, self._lr
            self.model = self._new_model(steps)
            self._params, self._slots, self._count, self._lr = state

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        steps = n_steps(len(order), batch_size)
        self._ensure_capacity(steps)
        order_dev = self._put(order)  # one host -> device copy; the rows are gathered on the device
        x, t = self._x[order_dev], self._t[order_dev]
        masks = None if masks is None else self._put(masks)  # per position of order already
        with keras.device(self._dev):
            self.model.step_index.assign(self._put(np.int32(0)))
            kc.fit_epoch(self.model, x, t, masks, batch_size, self.dtype)
        return np.asarray(self.model.loss_buffer.value[:steps])  # one read per epoch

    def _phase_step(self, x: jax.Array, t: jax.Array) -> Callable[[], object]:
        """One train_step of the model (fit's own step, its state packing and loss buffer write
        included), jax.jit-compiled as fit compiles it, but one step per call whatever
        steps_per_execution is. The state it threads stays here; the model's variables keep the epoch's."""
        model, train_step = self.model, jax.jit(self.model.train_step)
        state = tuple(
            [v.value for v in vs]
            for vs in (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables)
        ) + ([v.value for v in model.metrics_variables],)

        def run() -> jax.Array:
            nonlocal state
            logs, state = train_step(state, (x, t))  # a loss slot past the buffer's end is dropped (JAX's scatter)
            return logs["loss"]

        return run

    # ------------------------------------------------------------ JaxBackend's state, in the Keras variables
    # JaxBackend reads and writes _params, _slots, _count and _lr; here they are views of the
    # model's variables, so its set_lr, restart, set_params, evaluate and params() work unchanged.

    @property
    def _params(self) -> list:
        return [(d.kernel.value, d.bias.value) for d in self.model.dense]

    @_params.setter
    def _params(self, params: list) -> None:
        for d, (w, b) in zip(self.model.dense, params):
            d.kernel.assign(w)
            d.bias.assign(b)

    @property
    def _slots(self) -> list:
        return [tuple(tuple(v.value for v in group) for group in layer) for layer in self.model.slot_vars]

    @_slots.setter
    def _slots(self, slots: list) -> None:
        for layer_vars, layer_values in zip(self.model.slot_vars, slots):
            for group_vars, group_values in zip(layer_vars, layer_values):
                for v, value in zip(group_vars, group_values):
                    v.assign(value)

    @property
    def _count(self) -> jax.Array:
        return self.model.count.value

    @_count.setter
    def _count(self, count: jax.Array) -> None:
        self.model.count.assign(count)

    @property
    def _lr(self) -> jax.Array:
        return self.model.lr.value

    @_lr.setter
    def _lr(self, lr: jax.Array) -> None:
        self.model.lr.assign(lr)

    def _info(self) -> dict[str, str]:
        return super()._info() | {
            "framework_version": f"keras {keras.__version__} / jax {jax.__version__}",
            "keras_version": keras.__version__,
            "steps_per_execution": str(self.steps_per_execution),
        }
