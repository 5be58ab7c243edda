"""The MLP in JAX: jax.numpy forward, jax.vjp / value_and_grad gradients, OptimizerSpec's rule by hand.

The parameters and the optimizer slots are immutable pytrees; a step is a pure function
(params, slots, step count, lr, batch, targets, masks) -> (params, slots, loss), compiled by
``jax.jit`` once per batch size. compile=True compiles the whole epoch instead: one
``jax.lax.scan`` of that step over the full batches, the short last batch one more jitted step.
parallel: one value_and_grad of the batch loss, then every update. sequential: the output
head's gradient by value_and_grad, then per layer dW, db by the vjp of z = a W + b, the update,
and the error sent down by the vjp of the layer below through the *updated* W.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from backprop_bench.backends.base import Backend, DeviceUnavailable, PhaseFns, as_params, cpu_name, usable_cpus
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params, Regularization

# JAX computes in float32 unless x64 is on: without it a float64 run would silently be
# float32. The flag is process-wide but changes nothing for arrays given an explicit dtype,
# and every array here has one (float32 runs stay float32).
jax.config.update("jax_enable_x64", True)

# jax.nn.relu's derivative is 0 at the kink (as NumPy's and torch's); jnp.maximum's would be 1/2.
HIDDEN = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def resolve_device(device: str, framework: str = "jax") -> jax.Device:
    """The jax.Device for "cpu", "cuda" or "auto" (cuda when a CUDA jaxlib sees a GPU). No silent CPU fallback."""
    if device == "cpu":
        return jax.devices("cpu")[0]
    try:
        return jax.devices("cuda")[0]
    except RuntimeError as err:  # no CUDA plugin installed, or it found no GPU
        if device == "auto":
            return jax.devices("cpu")[0]
        raise DeviceUnavailable(
            f"device=cuda for framework={framework}: jax {jax.__version__} here has no CUDA backend "
            f"(install jax[cuda12] on a machine with a GPU): {str(err).splitlines()[0]}"
        ) from err


def output_and_loss(spec: MLPSpec, z: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Output layer: z, t (n, K) -> (p (n, K), mean loss). cross_entropy uses log_softmax (stable)."""
    n, k = z.shape
    if spec.loss == "cross_entropy":  # -mean_n sum_k t log p
        logp = jax.nn.log_softmax(z, axis=1)
        return jnp.exp(logp), -jnp.sum(t * logp) / n
    if spec.output_activation == "softmax":
        p = jax.nn.softmax(z, axis=1)
    elif spec.output_activation == "sigmoid":
        p = jax.nn.sigmoid(z)
    else:
        p = z
    sq = jnp.sum(jnp.square(p - t))
    return p, (sq / (n * k) if spec.loss == "mse" else 0.5 * sq / n)  # mse | half_sse


def forward(spec: MLPSpec, params, x, masks=None) -> tuple[list, list]:
    """(acts, zs): acts = [a_0 = x, a_1, ..., a_{L-1}, z_L], every layer's input (hidden ones
    after their dropout mask), then the output's z; zs[l] = layer l's pre-activation (n, out_l)."""
    acts, zs = [x], []
    for l, (w, b) in enumerate(params):
        zs.append(acts[-1] @ w + b)  # (n, out) = a (n, in) @ W (in, out) + b
        if l == len(params) - 1:
            acts.append(zs[-1])
            break
        acts.append(hidden(spec, zs[-1], None if masks is None else masks[l]))
    return acts, zs


def hidden(spec: MLPSpec, z, mask):
    """A hidden layer's output: f(z), times its dropout mask when there is one."""
    h = HIDDEN[spec.hidden_activation](z)
    return h if mask is None else h * mask


def penalty(reg: Regularization, ws) -> jax.Array:
    """l1 sum |W| + l2 sum W^2 over the given weight matrices (d|W|/dW = sign(W), 0 at 0)."""
    return sum(reg.l1 * jnp.sum(jnp.abs(w)) + reg.l2 * jnp.sum(jnp.square(w)) for w in ws)


def update(spec: OptimizerSpec, p, g, slots: tuple, t, lr, weight: bool) -> tuple:
    """OptimizerSpec's rule on one parameter: (new p, new slots). t, lr: float64 scalars, cast to
    p's dtype so a float32 run stays float32. weight: p is a W (AdamW decays those only)."""
    lr = lr.astype(p.dtype)
    if spec.name == "sgd":
        return p - lr * g, slots
    if spec.name == "momentum":  # v = mu v + g; p -= lr v
        v = spec.momentum * slots[0] + g
        return p - v * lr, (v,)
    if spec.name == "rmsprop":  # v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)
        v = spec.rho * slots[0] + g * g * (1.0 - spec.rho)
        return p - lr * g / (jnp.sqrt(v) + spec.eps), (v,)
    m, v = slots  # adam with bias correction, eps outside the sqrt; AdamW's decay first
    if weight and spec.weight_decay:
        p = p - (lr * spec.weight_decay) * p
    v = spec.beta2 * v + g * g * (1.0 - spec.beta2)
    m = spec.beta1 * m + g * (1.0 - spec.beta1)
    bc1, bc2 = (1.0 - spec.beta1**t).astype(p.dtype), (1.0 - spec.beta2**t).astype(p.dtype)
    return p - m / (jnp.sqrt(v / bc2) + spec.eps) * (lr / bc1), (m, v)


def intra_op_threads() -> int:
    """The threads XLA:CPU computes on: jaxlib sizes its CPU client's pool, as the backend starts,
    from $PJRT_NPROC, else $NPROC (backends.limit_threads sets the first), else one per CPU
    this process may run on."""
    for name in ("PJRT_NPROC", "NPROC"):
        try:
            return max(0, int(os.environ.get(name, "")))
        except ValueError:  # unset or not a number: jaxlib skips it too
            continue
    return usable_cpus()


class JaxBackend(Backend):
    """MLP on jax.Arrays (cpu, or cuda with a CUDA jaxlib); every step compiled by jax.jit,
    or (compile=True) every epoch: a lax.scan of the step over its full batches."""

    framework = "jax"
    compile_mode = "jit epoch (lax.scan)"
    EVAL_CHUNK = 8192

    def _resolve_device(self, device: str) -> str:
        self._dev = resolve_device(device, self.framework)
        return "cpu" if self._dev.platform == "cpu" else "cuda"

    def _setup(self, init: Params) -> None:
        self._params = self._put([(np.asarray(w, self.dtype), np.asarray(b, self.dtype)) for w, b in init])
        self._reset_optimizer()
        self._lr = self._put(np.float64(self.lr))
        self._step = partial(STEP_AT, STEP[self.strategy], self.spec, self.opt_spec, self.reg)
        self._scan = partial(EPOCH_SCAN, STEP[self.strategy], self.spec, self.opt_spec, self.reg)
        self._forward_loss = partial(OUTPUTS, self.spec)

    def _put(self, tree):
        return jax.device_put(tree, self._dev)

    def _load(self, x: np.ndarray, t: np.ndarray) -> None:
        self._x, self._t = self._put(x), self._put(t)

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        order_dev = self._put(order)  # one host -> device copy per epoch; batches gathered on the device
        masks_dev = None if masks is None else self._put(masks)
        data = (self._lr, self._x, self._t, order_dev, masks_dev)
        state, losses = (self._params, self._slots, self._count), []
        starts = range(0, len(order), batch_size)
        n_full = len(order) // batch_size
        if self.compile and n_full:  # the full batches in one compiled scan; a short last one after it
            state, full = self._scan(batch_size, state, *data, self._put(np.arange(n_full) * batch_size))
            losses, starts = [full], starts[n_full:]
        for start in starts:
            size = min(batch_size, len(order) - start)  # static: one compilation per batch size
            state, loss = self._step(size, state, *data, start)
            losses.append(loss[None])
        self._params, self._slots, self._count = state
        return np.asarray(jnp.concatenate(losses))  # the one read of the epoch

    def _phase_fns(self, x_rows: np.ndarray) -> PhaseFns:
        """forward: train_loss; forward_backward: its value_and_grad; step: _phase_step's. Each jax.jit
        compiled on its own, on the batch gathered once: the same per-step functions for step-jit and
        epoch-scan (a scanned epoch has no step of its own to time)."""
        idx = self._put(x_rows)
        x, t, params = self._x[idx], self._t[idx], self._params  # the weights a forward reads (not updated)
        forward, gradients = (partial(fn, self.spec, self.reg) for fn in (PHASE_LOSS, PHASE_GRADIENTS))
        return lambda: forward(params, x, t, None), lambda: gradients(params, x, t, None)[0], self._phase_step(x, t)

    def _phase_step(self, x: jax.Array, t: jax.Array) -> Callable[[], object]:
        """One whole step on the batch (step_at without its gather), jitted; the backend's state moves on."""
        step = partial(PHASE_STEP, STEP[self.strategy], self.spec, self.opt_spec, self.reg)

        def run() -> jax.Array:
            state, loss = step((self._params, self._slots, self._count), self._lr, x, t)
            self._params, self._slots, self._count = state
            return loss

        return run

    def wait(self, out: object) -> None:
        jax.block_until_ready(out)  # the phases' last output: their calls chain or run in dispatch order

    def _set_lr(self, lr: float) -> None:
        self._lr = self._put(np.float64(lr))  # a traced argument: no recompile

    def _reset_optimizer(self) -> None:
        n_slots = self.opt_spec.n_slots
        self._slots = jax.tree.map(lambda p: tuple(jnp.zeros_like(p) for _ in range(n_slots)), self._params)
        self._count = self._put(np.float64(0))

    def _assign(self, params: Params) -> None:
        self._params = self._put([(np.asarray(w), np.asarray(b)) for w, b in params])

    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        tt = np.zeros((len(x), self.spec.sizes[-1]), self.dtype) if t is None else t
        p, loss = self._forward_loss(self._params, self._put(x), self._put(tt))
        return np.asarray(p), float("nan") if t is None else float(loss) * len(x)

    def params(self) -> Params:
        return [(np.array(w), np.array(b)) for w, b in self._params]

    def synchronize(self) -> None:
        jax.block_until_ready((self._params, self._slots))

    # ------------------------------------------------------------ native mode (docs/native.md)
    # Explicit PRNG keys: JAX has no global RNG state to touch.

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        """flax.linen.Dense's defaults: kernel lecun_normal (truncated normal, variance 1/fan_in),
        zero bias, drawn in float32 (Flax's param_dtype) from jax.random.split(PRNGKey(seed)), one
        key per layer, then cast to dtype. Flax's law, not Flax's exact draws (Flax derives each
        parameter's key from its module path)."""
        keys = jax.random.split(jax.random.PRNGKey(seed), spec.n_layers)
        kernel = jax.nn.initializers.lecun_normal()
        layers = [
            (kernel(key, (i, o), jnp.float32), np.zeros(o, np.float32)) for key, (i, o) in zip(keys, spec.shapes())
        ]
        return as_params([(np.asarray(w), b) for w, b in layers], dtype)

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        """jax.random.permutation(fold_in(PRNGKey(seed), epoch), n) per epoch: a new key per epoch."""
        key = jax.random.PRNGKey(seed)
        for epoch in range(epochs):
            yield np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n)).astype(np.int64)

    def _info(self) -> dict[str, str]:
        on_gpu = self.device == "cuda"
        return {
            "framework_version": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}",
            "device_name": self._dev.device_kind if on_gpu else cpu_name(),
            "blas": "XLA:GPU (cuBLAS)" if on_gpu else "XLA:CPU (Eigen)",
            "intra_op_threads": str(intra_op_threads()),
        }


# ---------------------------------------------------------------- the steps (pure, jitted)


def outputs(spec: MLPSpec, params, x, t) -> tuple[jax.Array, jax.Array]:
    """(p (n, K), mean data loss) of a forward pass without dropout."""
    return output_and_loss(spec, forward(spec, params, x)[0][-1], t)


def train_loss(spec: MLPSpec, reg: Regularization, params, x, t, masks) -> jax.Array:
    """The training loss: data loss, plus the penalty when there is one."""
    loss = output_and_loss(spec, forward(spec, params, x, masks)[0][-1], t)[1]
    return loss + penalty(reg, [w for w, _ in params]) if reg.has_penalty else loss


def update_layer(spec: MLPSpec, opt: OptimizerSpec, layer, grads, slots, count, lr) -> tuple:
    """Layer (W, b) and its slots after one update; b only when spec.train_biases."""
    (w, b), (gw, gb), (sw, sb) = layer, grads, slots
    w, sw = update(opt, w, gw, sw, count, lr, weight=True)
    if spec.train_biases:
        b, sb = update(opt, b, gb, sb, count, lr, weight=False)
    return (w, b), (sw, sb)


def parallel_step(spec, opt, reg, params, slots, count, lr, x, t, masks) -> tuple:
    """All gradients from the pre-step weights (one value_and_grad), then every update."""
    loss, grads = jax.value_and_grad(partial(train_loss, spec, reg))(params, x, t, masks)
    new = [update_layer(spec, opt, p, g, s, count, lr) for p, g, s in zip(params, grads, slots)]
    return [p for p, _ in new], [s for _, s in new], loss


def dense(a_in, w, b) -> jax.Array:
    """z = a_in W + b: its vjp in (W, b) is (a_in^T d, sum_n d)."""
    return a_in @ w + b


def feed_up(spec: MLPSpec, mask, w, z) -> jax.Array:
    """z_{l-1} -> z_l through W[l]: its vjp in z sends dL/dz_l down through the mask and f'."""
    return hidden(spec, z, mask) @ w


def sequential_step(spec, opt, reg, params, slots, count, lr, x, t, masks) -> tuple:
    """Output layer first: update W[l], b[l], then send the error down through the new W[l]."""
    acts, zs = forward(spec, params, x, masks)  # the step's single forward pass
    loss, d = jax.value_and_grad(lambda z: output_and_loss(spec, z, t)[1])(acts[-1])  # dL/dz_L (n, K)
    if reg.has_penalty:  # at the pre-step weights
        loss = loss + penalty(reg, [w for w, _ in params])
    params, slots = list(params), list(slots)
    for l in range(len(params) - 1, -1, -1):
        a_in = acts[l]  # (n, in_l)
        _, layer_vjp = jax.vjp(partial(dense, a_in), *params[l])
        gw, gb = layer_vjp(d)  # a_in^T d, sum_n d
        if reg.has_penalty:  # at W[l] before its update
            gw = gw + jax.grad(lambda w: penalty(reg, [w]))(params[l][0])
        params[l], slots[l] = update_layer(spec, opt, params[l], (gw, gb), slots[l], count, lr)
        if l > 0:  # dL/dz_{l-1}: through the new W[l], the mask m_{l-1} and f' at z_{l-1}
            mask, w_new = None if masks is None else masks[l - 1], params[l][0]
            d = jax.vjp(partial(feed_up, spec, mask, w_new), zs[l - 1])[1](d)[0]
    return params, slots, loss


def step_at(step, spec, opt, reg, size: int, state, lr, x, t, order, masks, start) -> tuple:
    """One step on the batch order[start : start + size] (and those rows of the masks), gathered
    on the device inside the compiled step: one dispatch per step. state = (params, slots, count),
    count the global step t of the previous step. Returns (state after, the pre-update loss)."""
    params, slots, count = state
    idx = jax.lax.dynamic_slice_in_dim(order, start, size)
    batch_masks = None if masks is None else [jax.lax.dynamic_slice_in_dim(m, start, size) for m in masks]
    params, slots, loss = step(spec, opt, reg, params, slots, count + 1, lr, x[idx], t[idx], batch_masks)
    return (params, slots, count + 1), loss


def step_on_batch(step, spec, opt, reg, state, lr, x, t) -> tuple:
    """step_at on a batch already selected: (state after, the pre-update loss)."""
    params, slots, count = state
    params, slots, loss = step(spec, opt, reg, params, slots, count + 1, lr, x, t, None)
    return (params, slots, count + 1), loss


def epoch_scan(step, spec, opt, reg, size: int, state, lr, x, t, order, masks, starts) -> tuple:
    """step_at over the batches starting at starts (n,) int, each of `size` rows, as one
    lax.scan: one dispatch per epoch. Returns (state after, the (n,) pre-update losses)."""

    def body(carry, start):
        return step_at(step, spec, opt, reg, size, carry, lr, x, t, order, masks, start)

    return jax.lax.scan(body, state, starts)


# Compiled once per process for each (strategy, spec, optimizer, regularization, batch size,
# data shape): the frozen specs are static arguments, so a new backend of the same run (a
# study's next seed) reuses the compiled step.
STEP = {"parallel": parallel_step, "sequential": sequential_step}
STEP_AT = jax.jit(step_at, static_argnums=(0, 1, 2, 3, 4))
EPOCH_SCAN = jax.jit(epoch_scan, static_argnums=(0, 1, 2, 3, 4))  # and the number of full batches
OUTPUTS = jax.jit(outputs, static_argnums=0)
# Where a step's time goes (phase_fns): the loss, the loss and its gradients, a step on a selected batch
PHASE_LOSS = jax.jit(train_loss, static_argnums=(0, 1))
PHASE_GRADIENTS = jax.jit(jax.value_and_grad(train_loss, argnums=2), static_argnums=(0, 1))
PHASE_STEP = jax.jit(step_on_batch, static_argnums=(0, 1, 2, 3))
