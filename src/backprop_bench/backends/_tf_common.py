"""The TensorFlow math the `tensorflow` and `keras` backends share, and their common base.

Both keep W (in, out) and b (out,) in tf.Variables and run the same step functions, so the
activations, losses, OptimizerSpec's rule and the two strategies are written once:
``parallel_step`` (one tape, all gradients from the pre-step weights, then every update)
and ``sequential_step`` (one forward pass under a persistent tape; from the output back,
autograd of each layer's local ops, update layer l, send the error on through the updated
W[l]). Dropout masks (core.specs.dropout_masks, the batch's rows) and the l1/l2 penalty follow
core.specs.Regularization. Only the backends import this module, so importing it may import TensorFlow.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of logs

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backprop_bench.backends.base import Backend, DeviceUnavailable, PhaseFns, cpu_name, usable_cpus  # noqa: E402
from backprop_bench.core.specs import NO_REGULARIZATION, MLPSpec, OptimizerSpec, Params, Regularization  # noqa: E402

# (W, b) tf.Variables of one layer.
VarLayer = tuple[tf.Variable, tf.Variable]


# --- device -----------------------------------------------------------------------------


def resolve_device(device: str, framework: str) -> tuple[str, str]:
    """ "cpu" | "cuda" | "auto" -> (resolved name, TF device string). Never falls back silently."""
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cuda" and not gpus:
        found = ", ".join(d.name for d in tf.config.list_physical_devices()) or "no devices"
        raise DeviceUnavailable(
            f"device=cuda was asked for {framework}, but TensorFlow {tf.__version__} sees no GPU "
            f"(found: {found}; CUDA build: {tf.test.is_built_with_cuda()})"
        )
    if device == "cuda" or (device == "auto" and gpus):
        return "cuda", "/GPU:0"
    return "cpu", "/CPU:0"


def device_info(device: str) -> dict[str, str]:
    """Versions and hardware for run tags."""
    build = tf.sysconfig.get_build_info()
    if device == "cuda":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        name = str(details.get("device_name", "GPU"))
        blas = f"cuBLAS (CUDA {build.get('cuda_version', '?')}, cuDNN {build.get('cudnn_version', '?')})"
    else:
        name = cpu_name()
        # TF's CPU matmul is Eigen; oneDNN kernels replace some ops unless TF_ENABLE_ONEDNN_OPTS=0.
        onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on for x86 Linux)")
        blas = f"Eigen + oneDNN opts={onednn}"
    return {
        "framework_version": tf.__version__,
        "device_name": name,
        "blas": blas,
        "intra_op_threads": str(intra_op_threads()),
    }


def intra_op_threads() -> int:
    """The threads TF's ops split across: as set through tf.config, else $TF_NUM_INTRAOP_THREADS
    (backends.limit_threads), else one per CPU this process may run on."""
    set_here = tf.config.threading.get_intra_op_parallelism_threads()
    from_env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return set_here or (int(from_env) if from_env.isdigit() and int(from_env) > 0 else usable_cpus())


# --- activations and losses -----------------------------------------------------------------


def activate(name: str, z: tf.Tensor) -> tf.Tensor:
    """Hidden or output activation by name (core.specs.HIDDEN_/OUTPUT_ACTIVATIONS)."""
    if name == "relu":
        return tf.nn.relu(z)
    if name == "sigmoid":
        return tf.sigmoid(z)
    if name == "tanh":
        return tf.tanh(z)
    if name == "softmax":
        return tf.nn.softmax(z, axis=-1)
    if name == "identity":
        return z
    raise ValueError(f"unknown activation {name!r}")


def loss_from_logits(spec: MLPSpec, z: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """Mean loss of a batch from the output layer's pre-activation z (N, K) and targets t (N, K)."""
    if spec.loss == "cross_entropy":  # softmax output (MLPSpec checks): stable, from logits
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=t, logits=z))
    err = activate(spec.output_activation, z) - t
    if spec.loss == "mse":  # mean over N and K
        return tf.reduce_mean(tf.square(err))
    # half_sse: mean over N of 1/2 sum over K
    return tf.reduce_mean(0.5 * tf.reduce_sum(tf.square(err), axis=1))


class Net:
    """The MLP as TF sees it: per layer its (W, b) variables and its linear map a -> z,
    plus the Regularization the training steps apply.

    The tensorflow backend uses z = a @ W + b on its own variables; the keras backend
    passes its Dense layers as the linear maps, with their kernel/bias variables.
    """

    def __init__(
        self,
        spec: MLPSpec,
        layers: list[VarLayer],
        linears: list[Callable] | None = None,
        reg: Regularization = NO_REGULARIZATION,
    ) -> None:
        self.spec, self.layers, self.reg = spec, layers, reg
        self.linears = linears or [functools.partial(_linear, w, b) for w, b in layers]

    def forward(
        self, x: tf.Tensor, masks: Sequence[tf.Tensor] | None = None
    ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """zs[l] (N, out_l) pre-activations; acts[l] (N, in_l) the input of layer l (acts[0] = x).

        masks: None, or one (N, hidden_l) dropout mask per hidden layer; then a hidden
        activation is f(z) * mask, so autograd through acts carries the mask back too."""
        zs, acts = [], [x]
        for i, linear in enumerate(self.linears):
            zs.append(linear(acts[-1]))
            if i < len(self.linears) - 1:
                a = activate(self.spec.hidden_activation, zs[-1])
                acts.append(a if masks is None else a * masks[i])
        return zs, acts

    def penalty(self) -> tf.Tensor:
        """l1 sum |W| + l2 sum W^2 over the weight matrices as they are now (0-d).
        Only when reg.has_penalty; a zero coefficient adds no ops."""
        terms = []
        for w, _ in self.layers:
            if self.reg.l1:
                terms.append(tf.constant(self.reg.l1, w.dtype) * tf.reduce_sum(tf.abs(w)))
            if self.reg.l2:
                terms.append(tf.constant(self.reg.l2, w.dtype) * tf.reduce_sum(tf.square(w)))
        return tf.add_n(terms)

    def penalty_grad(self, w: tf.Tensor) -> tf.Tensor:
        """d(penalty)/dW = l1 sign(W) + 2 l2 W (sign(0) = 0), (in, out), at W as it is now."""
        return tf.constant(self.reg.l1, w.dtype) * tf.sign(w) + tf.constant(2 * self.reg.l2, w.dtype) * w

    def trainable(self) -> list[tf.Variable]:
        """The variables the optimizer updates: every W, and every b unless biases are frozen."""
        return [v for w, b in self.layers for v in ((w, b) if self.spec.train_biases else (w,))]

    def predict_and_loss(self, x: tf.Tensor, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(output activations (N, K), mean loss) for evaluation; no update."""
        zs, _ = self.forward(x)
        return activate(self.spec.output_activation, zs[-1]), loss_from_logits(self.spec, zs[-1], t)


def _linear(w: tf.Variable, b: tf.Variable, a: tf.Tensor) -> tf.Tensor:
    return tf.matmul(a, w) + b  # (N, in) @ (in, out) + (out,)


# --- the optimizer rule ------------------------------------------------------------------


class Optimizer:
    """OptimizerSpec's rule on tf.Variables; slots (momentum: v; adam: m, v; rmsprop: v) per variable.

    The global step t lives here: `next_step()` bumps it once per optimizer step and
    every variable updated in that step (in either strategy) uses the same t. The learning
    rate is a variable too: a traced step reads it, so `set_lr` needs no retrace.
    """

    def __init__(self, spec: OptimizerSpec, variables: list[tf.Variable], dtype: tf.DType) -> None:
        self.spec, self.dtype = spec, dtype
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # keyed by the variable's position in `variables`, found through its ref()
        self._index = {v.ref(): i for i, v in enumerate(variables)}
        self._slots = [
            [tf.Variable(tf.zeros(v.shape, dtype), trainable=False, name=f"slot{k}") for k in range(spec.n_slots)]
            for v in variables
        ]
        self.lr = tf.Variable(spec.lr, dtype=dtype, trainable=False, name="lr")

    def set_lr(self, lr: float) -> None:
        self.lr.assign(lr)

    def reset(self) -> None:
        """Back to step 0 with zero slots, as a new optimizer (the variables, and the traces that read them, stay)."""
        self.t.assign(0)
        for slots in self._slots:
            for slot in slots:
                slot.assign(tf.zeros_like(slot))

    def next_step(self) -> tuple[tf.Tensor, tf.Tensor] | None:
        """Advance the global step; for adam, returns the bias corrections (1 - beta1^t, 1 - beta2^t)."""
        t = tf.cast(self.t.assign_add(1), tf.float64)
        if self.spec.name != "adam":
            return None
        # float64, then cast, as NumPy does with Python-float powers
        c1 = tf.cast(1.0 - tf.pow(tf.constant(self.spec.beta1, tf.float64), t), self.dtype)
        c2 = tf.cast(1.0 - tf.pow(tf.constant(self.spec.beta2, tf.float64), t), self.dtype)
        return c1, c2

    def apply(
        self, var: tf.Variable, g: tf.Tensor, corrections: tuple[tf.Tensor, tf.Tensor] | None, weight: bool = False
    ) -> None:
        """var -= the rule's step; weight: var is a W (AdamW's decay shrinks those only)."""
        s, lr = self.spec, self.lr
        slots = self._slots[self._index[var.ref()]]
        if s.name == "sgd":
            var.assign_sub(lr * g)
        elif s.name == "momentum":  # v = mu v + g; p -= lr v   (PyTorch's form)
            v = slots[0].assign(tf.constant(s.momentum, self.dtype) * slots[0] + g)
            var.assign_sub(lr * v)
        elif s.name == "rmsprop":  # v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)
            rho = tf.constant(s.rho, self.dtype)
            v = slots[0].assign(rho * slots[0] + (1 - rho) * tf.square(g))
            var.assign_sub(lr * g / (tf.sqrt(v) + tf.constant(s.eps, self.dtype)))
        else:  # adam, eps outside the sqrt of the bias-corrected v; AdamW's decay first
            if weight and s.weight_decay:
                var.assign_sub(lr * tf.constant(s.weight_decay, self.dtype) * var)
            c1, c2 = corrections
            b1, b2 = tf.constant(s.beta1, self.dtype), tf.constant(s.beta2, self.dtype)
            m = slots[0].assign(b1 * slots[0] + (1 - b1) * g)
            v = slots[1].assign(b2 * slots[1] + (1 - b2) * tf.square(g))
            var.assign_sub(lr * (m / c1) / (tf.sqrt(v / c2) + tf.constant(s.eps, self.dtype)))


# --- one optimizer step, two strategies ----------------------------------------------------


def train_loss(net: Net, x: tf.Tensor, t: tf.Tensor, masks: Sequence[tf.Tensor] | None = None) -> tf.Tensor:
    """The batch's training loss: data loss + penalty (0-d)."""
    zs, _ = net.forward(x, masks)
    loss = loss_from_logits(net.spec, zs[-1], t)
    return loss + net.penalty() if net.reg.has_penalty else loss


def gradients(
    net: Net, x: tf.Tensor, t: tf.Tensor, masks: Sequence[tf.Tensor] | None = None
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """(train_loss, its gradient for every trainable variable): one tape, no update. The penalty sits
    on the tape: its gradient is autograd's l1 sign(W) + 2 l2 W (tf.abs's is sign, 0 at 0)."""
    with tf.GradientTape() as tape:
        loss = train_loss(net, x, t, masks)
    return loss, tape.gradient(loss, net.trainable())


def parallel_step(
    net: Net, opt: Optimizer, x: tf.Tensor, t: tf.Tensor, masks: Sequence[tf.Tensor] | None = None
) -> tf.Tensor:
    """All gradients from the pre-step weights, then every update. Returns the pre-step loss
    (data loss + penalty). masks: None, or the batch's (N, hidden_l) dropout mask per hidden layer."""
    vars_ = net.trainable()
    weights = {w.ref() for w, _ in net.layers}  # AdamW decays these, not the biases
    loss, grads = gradients(net, x, t, masks)
    corrections = opt.next_step()
    for v, g in zip(vars_, grads):
        opt.apply(v, g, corrections, weight=v.ref() in weights)
    return loss


def sequential_step(
    net: Net, opt: Optimizer, x: tf.Tensor, t: tf.Tensor, masks: Sequence[tf.Tensor] | None = None
) -> tf.Tensor:
    """Output layer first: update layer l, then send the error back through the updated W[l].

    Activations come from the step's single forward pass, recorded on one persistent
    tape; each tape.gradient call below differentiates one layer's local ops only:
        dz[l] = dL/dz[l]                  (loss, or activation, given dL/da[l+1])
        dW[l], db[l] from z[l] = a[l] @ W[l] + b[l] with dz[l] upstream
        dL/da[l] = dz[l] @ W[l]^T         with W[l] as just updated
    With dropout, a[l+1] = f(z[l]) * mask[l], so the activation's gradient is upstream * mask * f'(z):
    the forward's mask, reused after the update. The penalty's gradient joins dW[l] at W[l]
    before its update (the weights below are not updated yet either).
    """
    with tf.GradientTape(persistent=True) as tape:
        zs, acts = net.forward(x, masks)
        data_loss = loss_from_logits(net.spec, zs[-1], t)
    # the penalty at the pre-step weights: read here, before the first update (program order holds in a graph too)
    loss = data_loss + net.penalty() if net.reg.has_penalty else data_loss
    corrections = opt.next_step()
    upstream = None  # dL/d(output of layer l), (N, out_l)
    for i in reversed(range(len(net.layers))):
        w, b = net.layers[i]
        if i == len(net.layers) - 1:
            dz = tape.gradient(data_loss, zs[i])  # (N, out); the penalty has no z in it
        else:
            dz = tape.gradient(acts[i + 1], zs[i], output_gradients=upstream)
        if net.spec.train_biases:
            dw, db = tape.gradient(zs[i], [w, b], output_gradients=dz)
        else:
            dw, db = tape.gradient(zs[i], w, output_gradients=dz), None
        if net.reg.has_penalty:
            dw = dw + net.penalty_grad(w)
        opt.apply(w, dw, corrections, weight=True)
        if db is not None:
            opt.apply(b, db, corrections)
        if i > 0:
            upstream = tf.matmul(dz, w, transpose_b=True)  # reads the updated W[l]
    del tape
    return loss


STEPS = {"parallel": parallel_step, "sequential": sequential_step}


# --- the plumbing both TF backends share -------------------------------------------------


class TfBackend(Backend):
    """Device, resident data, evaluation, the learning rate and the weights, for both TF-based backends.

    A subclass's ``_setup`` sets ``self.net`` (a Net over its variables, with self.reg) and
    ``self.opt`` (its Optimizer)."""

    EVAL_CHUNK = 8192
    net: Net
    opt: Optimizer

    def _resolve_device(self, device: str) -> str:
        name, self._tf_device = resolve_device(device, self.framework)
        return name

    def _load(self, x: np.ndarray, t: np.ndarray) -> None:
        with tf.device(self._tf_device):  # tf.identity: a copy that lives on the device
            self._x, self._t = tf.identity(tf.constant(x)), tf.identity(tf.constant(t))

    @functools.cached_property
    def _eval_fn(self) -> Callable:
        return tf.function(self.net.predict_and_loss)

    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        t_or_zeros = np.zeros((len(x), self.spec.sizes[-1]), self.dtype) if t is None else t
        with tf.device(self._tf_device):
            p, loss = self._eval_fn(tf.constant(x), tf.constant(t_or_zeros))
        return p.numpy(), float("nan") if t is None else float(loss) * len(x)

    def _phase_fns(self, x_rows: np.ndarray) -> PhaseFns:
        """forward: train_loss; forward_backward: gradients; step: _phase_step's. Each is a tf.function
        of its own (jit_compile as the mode), called on the device like one step of the epoch."""
        with tf.device(self._tf_device):
            idx = tf.constant(x_rows)
            x, t = tf.gather(self._x, idx), tf.gather(self._t, idx)
        fns = [functools.partial(train_loss, self.net), functools.partial(gradients, self.net), self._phase_step()]
        return tuple(functools.partial(self._on_device, tf.function(f, jit_compile=self.compile), x, t) for f in fns)

    def _phase_step(self) -> Callable[[tf.Tensor, tf.Tensor], object]:
        """(x, t) -> one whole optimizer step on that batch, to be traced."""
        raise NotImplementedError

    def _on_device(self, fn: Callable, x: tf.Tensor, t: tf.Tensor) -> object:
        with tf.device(self._tf_device):
            return fn(x, t)

    def _set_lr(self, lr: float) -> None:
        self.opt.set_lr(lr)

    def _reset_optimizer(self) -> None:
        self.opt.reset()

    def _assign(self, params: Params) -> None:
        for (w, b), (new_w, new_b) in zip(self.net.layers, params):
            w.assign(new_w)
            b.assign(new_b)

    def params(self) -> Params:
        return [(w.numpy().copy(), b.numpy().copy()) for w, b in self.net.layers]

    def synchronize(self) -> None:
        tf.test.experimental.sync_devices()  # every queued op on every device (GPU streams too)


def make_variables(init: Params, dtype: str, tf_device: str) -> list[VarLayer]:
    with tf.device(tf_device):
        return [
            (tf.Variable(np.asarray(w, dtype), name=f"W{i}"), tf.Variable(np.asarray(b, dtype), name=f"b{i}"))
            for i, (w, b) in enumerate(init)
        ]
