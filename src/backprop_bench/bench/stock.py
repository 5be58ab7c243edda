"""Each framework's own idiom for the same MLP: the bench's yardstick, not a backend.

    torch       nn.Sequential + F.cross_entropy + torch.optim.SGD; compile: torch.compile(model, opt.step)
    tensorflow  the TF2 custom-training-loop guide: tf.data batches, a per-step tf.function (jit_compile)
    keras       keras.Sequential of Dense + compile(SGD, sparse CE from logits) + fit()
    jax         flax.linen Sequential of Dense + optax.sgd in a TrainState; a jax.jit train_step
                (value_and_grad, apply_gradients) per batch

Plain SGD, parallel only (a built-in optimizer updates after every gradient is known). The
MLP must be relu / softmax / cross-entropy with biases; from the backends' initial weights a
stock model does the same arithmetic. Framework imports happen in the constructors.
"""

from __future__ import annotations

import os

import numpy as np

from backprop_bench.backends.base import check_batch, cpu_name
from backprop_bench.core.specs import MLPSpec, Params

STOCK_FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")


def check_no_masks(masks: object) -> None:
    """The stock idioms have no dropout: the trainer's clock (timed_epoch) passes masks=None."""
    if masks is not None:
        raise ValueError("the stock models train without dropout: masks must be None")


def check_stock_spec(spec: MLPSpec) -> None:
    """The stock models are written for one kind of MLP; anything else is a clear error."""
    kind = (spec.hidden_activation, spec.output_activation, spec.loss, spec.train_biases)
    if kind != ("relu", "softmax", "cross_entropy", True):
        raise ValueError(
            "stock models need hidden_activation=relu, output_activation=softmax, "
            f"loss=cross_entropy, train_biases=True; got {kind}"
        )


class StockTorch:
    """nn.Sequential + torch.optim.SGD, the torch tutorial loop. Labels are class indices."""

    framework = "torch"

    def __init__(
        self,
        spec: MLPSpec,
        init: Params,
        lr: float,
        *,
        device: str = "cpu",
        compile: bool = False,
    ) -> None:
        import torch
        from torch import nn

        from backprop_bench.backends.torch_backend import resolve_device

        check_stock_spec(spec)
        self.torch, self.compile = torch, compile
        self.device = resolve_device(device)
        layers: list[nn.Module] = []
        for l, (w, b) in enumerate(init):
            linear = nn.Linear(*np.shape(w))
            with torch.no_grad():  # nn.Linear keeps W as (out, in)
                linear.weight.copy_(torch.as_tensor(np.asarray(w, np.float32).T))
                linear.bias.copy_(torch.as_tensor(np.asarray(b, np.float32)))
            layers += [linear] if l == len(init) - 1 else [linear, nn.ReLU()]
        self.model = nn.Sequential(*layers).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self._forward = torch.compile(self.model) if compile else self.model
        self._opt_step = torch.compile(self.opt.step) if compile else self.opt.step
        self._x = self._y = None

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        self._x = self.torch.as_tensor(np.asarray(x, np.float32)).to(self.device)
        self._y = self.torch.as_tensor(np.asarray(y, np.int64)).to(self.device)

    def _step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self._forward(x), y)
        loss.backward()
        self._opt_step()
        return loss.detach()

    def train_epoch(self, order: np.ndarray, batch_size: int, masks: None = None) -> float:
        check_no_masks(masks)
        order = check_batch(order, None if self._x is None else len(self._x), batch_size)
        idx_all = self.torch.as_tensor(order).to(self.device)
        total = self.torch.zeros((), dtype=self.torch.float64, device=self.device)
        for start in range(0, len(order), batch_size):
            idx = idx_all[start : start + batch_size]
            total.add_(self._step(self._x[idx], self._y[idx]), alpha=len(idx))
        return total.item() / len(order)

    def params(self) -> Params:
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears]

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def info(self) -> dict[str, str]:
        return {
            "framework": self.framework,
            "compile": "torch.compile" if self.compile else "off",
            "framework_version": self.torch.__version__,
            "device_name": cpu_name() if self.device == "cpu" else self.torch.cuda.get_device_name(),
            "stock": "nn.Sequential + torch.optim.SGD" + (" + torch.compile(model, opt.step)" if self.compile else ""),
        }


class _TfData:
    """What the two TF-based stock models share: the train set resident on the TF device
    (x float32, y int64 class indices) and a device-wide synchronize."""

    tf = None  # the tensorflow module; set by the constructor (importing it costs ~8 s)
    _tf_device = "/CPU:0"

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        with self.tf.device(self._tf_device):
            self._x = self.tf.identity(self.tf.constant(np.asarray(x, np.float32)))
            self._y = self.tf.identity(self.tf.constant(np.asarray(y, np.int64)))

    def synchronize(self) -> None:
        self.tf.test.experimental.sync_devices()


class StockTensorflow(_TfData):
    """The TF2 custom-training-loop guide: tf.data batches, a per-step tf.function."""

    framework = "tensorflow"

    def __init__(
        self,
        spec: MLPSpec,
        init: Params,
        lr: float,
        *,
        device: str = "cpu",
        compile: bool = False,
    ) -> None:
        from backprop_bench.backends import _tf_common as tfc

        check_stock_spec(spec)
        self.tf, tf = tfc.tf, tfc.tf
        self.compile, self.lr = compile, lr
        self.device, self._tf_device = tfc.resolve_device(device, "tensorflow")
        with tf.device(self._tf_device):
            self.vars = [
                (tf.Variable(np.asarray(w, np.float32)), tf.Variable(np.asarray(b, np.float32))) for w, b in init
            ]
        self._step_fn = tf.function(self._step, jit_compile=compile)
        self._x = self._y = None

    def _step(self, x, y):
        tf = self.tf
        with tf.GradientTape() as tape:
            a = x
            for l, (w, b) in enumerate(self.vars):
                a = a @ w + b
                a = a if l == len(self.vars) - 1 else tf.nn.relu(a)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=a))
        variables = [v for pair in self.vars for v in pair]
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub(self.lr * g)
        return loss

    def train_epoch(self, order: np.ndarray, batch_size: int, masks: None = None) -> float:
        check_no_masks(masks)
        order = check_batch(order, None if self._x is None else int(self._x.shape[0]), batch_size)
        tf = self.tf
        with tf.device(self._tf_device):
            data = tf.data.Dataset.from_tensor_slices((tf.gather(self._x, order), tf.gather(self._y, order)))
            total = 0.0
            for x, y in data.batch(batch_size):
                total += self._step_fn(x, y) * tf.cast(tf.shape(y)[0], tf.float32)  # stays on the device
        return float(total) / len(order)

    def params(self) -> Params:
        return [(w.numpy(), b.numpy()) for w, b in self.vars]

    def info(self) -> dict[str, str]:
        return {
            "framework": self.framework,
            "compile": "jit_compile" if self.compile else "off",
            "framework_version": self.tf.__version__,
            "device_name": cpu_name(),
            "stock": "tf.data + per-step tf.function" + (" (jit_compile)" if self.compile else ""),
        }


class StockKeras(_TfData):
    """keras.Sequential + built-in SGD + compile/fit. Labels are class indices."""

    framework = "keras"

    def __init__(
        self,
        spec: MLPSpec,
        init: Params,
        lr: float,
        *,
        device: str = "cpu",
        compile: bool = False,
        steps_per_execution: int = 1,
    ) -> None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras

        from backprop_bench.backends import _tf_common as tfc

        check_stock_spec(spec)
        self.tf, self.keras = tfc.tf, keras
        self.device, self._tf_device = tfc.resolve_device(device, "keras")
        with self.tf.device(self._tf_device):
            layers = [keras.Input((spec.sizes[0],))] + [
                keras.layers.Dense(np.shape(w)[1], activation=None if l == len(init) - 1 else "relu")
                for l, (w, _) in enumerate(init)
            ]
            self.model = keras.Sequential(layers)
            for layer, (w, b) in zip(self.model.layers, init):
                layer.set_weights([np.asarray(w, np.float32), np.asarray(b, np.float32)])
        self.model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=compile,
            steps_per_execution=steps_per_execution,
        )
        if compile and not self.model.jit_compile:
            raise RuntimeError("stock keras compile=true: Keras turned jit_compile off here (see its warning)")
        self.compile, self.steps_per_execution = compile, steps_per_execution
        self._x = self._y = None

    def train_epoch(self, order: np.ndarray, batch_size: int, masks: None = None) -> float:
        check_no_masks(masks)
        order = check_batch(order, None if self._x is None else int(self._x.shape[0]), batch_size)
        with self.tf.device(self._tf_device):
            x, y = self.tf.gather(self._x, order), self.tf.gather(self._y, order)
            history = self.model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        return float(history.history["loss"][-1])  # Keras's sample-weighted epoch mean

    def params(self) -> Params:
        return [tuple(layer.get_weights()) for layer in self.model.layers]

    def info(self) -> dict[str, str]:
        return {
            "framework": self.framework,
            "compile": "jit_compile" if self.compile else "off",
            "framework_version": self.keras.__version__,
            "device_name": cpu_name(),
            "stock": f"keras.Sequential + SGD + fit (jit_compile={self.compile}, "
            f"steps_per_execution={self.steps_per_execution})",
        }


class StockJax:
    """flax.linen + optax, as Flax's examples train: a TrainState and a jax.jit'ed train_step
    (value_and_grad of the batch loss, then apply_gradients) called once per NumPy batch. Linen
    rather than NNX: its step is a pure function under plain jax.jit, while nnx.jit walks the
    model's object graph in Python on every call. The dtype is init's (float32 in the bench);
    labels are class indices."""

    framework = "jax"

    def __init__(self, spec: MLPSpec, init: Params, lr: float, *, device: str = "cpu", compile: bool = False) -> None:
        import jax
        import optax
        from flax import linen as nn
        from flax.training import train_state

        from backprop_bench.backends.jax_backend import resolve_device  # also turns on float64

        check_stock_spec(spec)
        if compile:
            raise ValueError("stock jax: compile=True has no meaning, its train_step is always jax.jit-compiled")
        self.jax, self.compile = jax, compile
        self._dev = resolve_device(device)
        self.device = "cpu" if self._dev.platform == "cpu" else "cuda"
        self.dtype = np.asarray(init[0][0]).dtype
        layers = []
        for w, _ in init:
            layers += [nn.Dense(np.shape(w)[1], dtype=self.dtype, param_dtype=self.dtype), nn.relu]
        model = nn.Sequential(layers[:-1])  # no relu after the output layer
        self._names = [f"layers_{i}" for i in range(0, len(layers) - 1, 2)]  # Sequential's names for the Dense
        params = {name: {"kernel": w, "bias": b} for name, (w, b) in zip(self._names, init)}
        self.state = train_state.TrainState.create(
            apply_fn=model.apply, params=jax.device_put(params, self._dev), tx=optax.sgd(learning_rate=lr)
        )

        def train_step(state, x, y):
            def loss_fn(params):
                logits = state.apply_fn({"params": params}, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss

        self._train_step = jax.jit(train_step)
        self._x = self._y = None

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        """Kept as NumPy arrays: each step's batch is indexed on the host and handed to the jitted
        step, as Flax's examples feed theirs (jnp indexing of a device array by an index array,
        outside the jit, took longer than the jitted step itself)."""
        self._x, self._y = np.asarray(x, self.dtype), np.asarray(y, np.int32)

    def train_epoch(self, order: np.ndarray, batch_size: int, masks: None = None) -> float:
        check_no_masks(masks)
        order = check_batch(order, None if self._x is None else len(self._x), batch_size)
        losses, sizes = [], []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            self.state, loss = self._train_step(self.state, self._x[idx], self._y[idx])
            losses.append(loss)  # a device scalar: read once, after the epoch
            sizes.append(len(idx))
        return float(np.dot(np.asarray(self.jax.numpy.stack(losses), np.float64), sizes)) / len(order)

    def params(self) -> Params:
        p = self.state.params
        return [(np.array(p[name]["kernel"]), np.array(p[name]["bias"])) for name in self._names]

    def synchronize(self) -> None:
        self.jax.block_until_ready(self.state)

    def info(self) -> dict[str, str]:
        from importlib import metadata

        return {
            "framework": self.framework,
            "compile": "off",  # as the jax backend's step-jitted mode: jax.jit per step is the plain idiom
            "framework_version": f"jax {self.jax.__version__}, flax {metadata.version('flax')}, "
            f"optax {metadata.version('optax')}",
            "device_name": cpu_name() if self.device == "cpu" else self._dev.device_kind,
            "stock": "flax.linen Sequential + optax.sgd TrainState + jax.jit train_step",
        }


_STOCK = {"torch": StockTorch, "tensorflow": StockTensorflow, "keras": StockKeras, "jax": StockJax}


def make_stock(
    framework: str, spec: MLPSpec, init: Params, lr: float, **options: object
) -> StockTorch | StockTensorflow | StockKeras | StockJax:
    """The stock model of `framework` (one of STOCK_FRAMEWORKS), not yet loaded."""
    if framework not in _STOCK:
        raise ValueError(f"no stock model for framework={framework!r}; there is one for {', '.join(STOCK_FRAMEWORKS)}")
    return _STOCK[framework](spec, init, lr, **options)
