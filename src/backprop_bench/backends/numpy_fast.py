"""The NumPy backend with its speed tricks: the same arithmetic as numpy_backend.py, in place.

Every work array is allocated once per batch size (``_Workspace``) and every op writes
into it with ``out=``; all parameters live in one flat vector so that one optimizer call
updates a layer (sequential) or the whole net (parallel). A training step is prepared once
per epoch as a flat list of labelled zero-argument calls (``Op``: mostly ``functools.partial``
of a ufunc or ``matmul`` on fixed views), so running a step is one Python loop over C
calls, and ``bench/npprofile.py`` can time every op of it. Plain SGD's step on a layer runs
inside its weight-gradient product, W -= a^T d as one BLAS GEMM with beta = 1 (numpy_gemm.py),
and the output layer works class-major, (K, n), where softmax's reductions are cheap
(_Workspace). Selected by compile=True; the tests hold it to the plain backend's results
within float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np

from backprop_bench.backends.numpy_backend import NumpyBackend, to_numpy
from backprop_bench.backends.numpy_gemm import numpy_gemm
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params

Op = tuple[str, Callable[[], object]]  # (label, zero-argument call); a step is a list of them

# Batches of at most this many rows train on one BLAS thread (blas_threads). At 64 rows each
# product is a few µs of work per thread, and on two threads the gradient one BLAS thread wrote
# and the weights the other reads next cross between the cores at every step. Paired in one
# process (2-core Xeon, 60,000 rows, 5 rounds): 0.358 s an epoch on one thread against 0.421 s
# on two at batch 64, but 0.295 against 0.242 s at batch 256 (docs/benchmark.md).
ONE_THREAD_ROWS = 64

# ---------------------------------------------------------------- activations
# Each works in place: forward turns z into a, backward turns dL/da into dL/dz using
# only a (every derivative here is a function of the output), so no z is kept.
# forward_ops / backward_ops give the same work as Ops; by default one Op per method.


class Activation:
    name = ""
    keeps_one = False  # f(1) == 1: forward may run over a hidden buffer's ones column too

    def __init__(self, xp):
        self.xp = xp

    def forward_ops(self, z) -> list[Op]:
        return [(self.name, partial(self.forward, z))]

    def backward_ops(self, a, d, scratch) -> list[Op]:
        return [(f"{self.name} backward", partial(self.backward, a, d, scratch))]


class Relu(Activation):
    """Hidden layers only: its work exists as Ops alone."""

    name = "relu"
    keeps_one = True

    def forward_ops(self, z) -> list[Op]:  # a = max(z, 0)
        return [("relu", partial(self.xp.maximum, z, 0, out=z))]

    def backward_ops(self, a, d, mask) -> list[Op]:  # dL/dz = dL/da * [a > 0]  (0 at the kink, like torch)
        # mask has d's float dtype, not bool: float * float skips the bool -> float cast,
        # about 1.5x faster per call on (64, 128) (the product is the same: d * 1.0 or d * 0.0)
        xp = self.xp
        return [
            ("relu mask", partial(xp.greater, a, 0, out=mask)),
            ("relu mask multiply", partial(xp.multiply, d, mask, out=d)),
        ]


class Sigmoid(Activation):
    name = "sigmoid"

    def forward(self, z):  # a = 1 / (1 + exp(-z)); exp overflows to inf for z << 0, giving a = 0
        xp = self.xp
        with np.errstate(over="ignore"):
            xp.negative(z, out=z)
            xp.exp(z, out=z)
        z += 1
        xp.reciprocal(z, out=z)

    def backward(self, a, d, scratch):  # dL/dz = dL/da * a * (1 - a)
        self.xp.subtract(1, a, out=scratch)
        d *= a
        d *= scratch


class Tanh(Activation):
    name = "tanh"

    def forward(self, z):
        self.xp.tanh(z, out=z)

    def backward(self, a, d, scratch):  # dL/dz = dL/da * (1 - a^2)
        self.xp.multiply(a, a, out=scratch)
        self.xp.subtract(1, scratch, out=scratch)
        d *= scratch


class Identity(Activation):
    name = "identity"

    def forward(self, z):
        pass

    def backward(self, a, d, scratch):
        pass

    def forward_ops(self, z) -> list[Op]:
        return []

    def backward_ops(self, a, d, scratch) -> list[Op]:
        return []


class Softmax(Activation):
    """Output only, on class-major arrays (K, n): the output layer's (see _Workspace). Its
    forward also leaves log p in ``logp`` for a stable cross-entropy."""

    name = "softmax"

    def output_ops(self, z, p, logp, col) -> list[Op]:
        """z, p, logp: (K, n); col: (1, n) scratch (each sample's max, then its sum).

        The reductions run over the outer axis, K rows of n, which NumPy vectorises along n;
        over the inner axis of an (n, K) array they loop over n rows of 10, 5-6x slower at
        n = 64-256. NumPy's ufuncs' own reduce skips np.max's Python wrapper (about 1 µs a call);
        CuPy keeps its max and sum."""
        xp = self.xp
        most, total = (np.maximum.reduce, np.add.reduce) if xp is np else (xp.max, xp.sum)
        return [
            ("softmax max", partial(most, z, axis=0, keepdims=True, out=col)),
            ("softmax shift", partial(xp.subtract, z, col, out=logp)),  # exp cannot overflow
            ("softmax exp", partial(xp.exp, logp, out=p)),
            ("softmax sum", partial(total, p, axis=0, keepdims=True, out=col)),
            ("softmax divide", partial(xp.divide, p, col, out=p)),
            ("softmax log sum", partial(xp.log, col, out=col)),
            ("softmax log p", partial(xp.subtract, logp, col, out=logp)),
        ]

    def backward(self, p, d, scratch):  # dL/dz_j = p_j (dL/dp_j - sum_k dL/dp_k p_k); (K, n)
        xp = self.xp
        xp.multiply(d, p, out=scratch)
        d -= scratch.sum(axis=0, keepdims=True)
        d *= p


ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh, "identity": Identity, "softmax": Softmax}


# ---------------------------------------------------------------- layer


class Dense:
    """z = a_in @ W + b, a = f(z), with the bias inside the matmul.

    Wb (in + 1, out) is W (in, out) with b (out,) as its last row (the layer's slice of the
    flat parameter vector is exactly that), and every layer input carries a ones column,
    a_in (n, in + 1): then a_in @ Wb = a_in[:, :in] @ W + b in one BLAS call, and the weight
    gradient a_in^T d (in + 1, out) ends with db = sum_n d. Each method gives its work as
    Ops on fixed views; l (the layer's index) only labels them.
    """

    def __init__(self, xp, wb, activation):
        self.xp, self.Wb, self.act = xp, wb, activation
        self.W, self.b = wb[:-1], wb[-1]

    def affine_ops(self, l: int, a_in, z) -> list[Op]:
        """a_in (n, in + 1), ones last -> z (n, out) = a_in @ Wb."""
        return [(f"L{l} fwd matmul (+ bias)", partial(self.xp.matmul, a_in, self.Wb, out=z))]

    def affine_class_major_ops(self, l: int, a_in, z) -> list[Op]:
        """a_in (n, in + 1), ones last -> z (out, n) = Wb^T a_in^T: the output layer's class-major z."""
        return [(f"L{l} fwd matmul (+ bias)", partial(self.xp.matmul, self.Wb.T, a_in.T, out=z))]

    def grad_ops(self, l: int, a_in, d, dWb, biases: bool) -> list[Op]:
        """d = dL/dz (n, out) -> dWb = a_in^T d (in + 1, out): dW, then db = sum_n d. Without
        ``biases`` only dW (dWb[:-1]): the bias row of the gradient stays as it is (zero)."""
        if biases:
            return [(f"L{l} dW matmul (+ db)", partial(self.xp.matmul, a_in.T, d, out=dWb))]
        return [(f"L{l} dW matmul", partial(self.xp.matmul, a_in[:, :-1].T, d, out=dWb[:-1]))]

    def descend_ops(self, l: int, a_in, d, biases: bool, gemm) -> list[Op]:
        """Plain SGD's step on this layer in one GEMM, Wb -= a_in^T d (d holds the lr already:
        lr_in_gradient), with no gradient buffer (numpy_gemm.py). Without ``biases`` only W."""
        if biases:
            return [(f"L{l} dW matmul (+ db), sgd step inside", gemm.minus_at_b(a_in, d, self.Wb))]
        return [(f"L{l} dW matmul, sgd step inside", gemm.minus_at_b(a_in[:, :-1], d, self.W))]

    def propagate_ops(self, l: int, d, out) -> list[Op]:
        """dL/da_in = d @ W^T (n, in), through W as it is *now*: the strategy decides when."""
        return [(f"L{l} dx matmul", partial(self.xp.matmul, d, self.W.T, out=out))]


# ---------------------------------------------------------------- output + loss


def output_ops(xp, activation, z, p, logp, col) -> list[Op]:
    """p = f(z) for the output layer; softmax also leaves log p in ``logp``. All (K, n), col (1, n)."""
    if isinstance(activation, Softmax):
        return activation.output_ops(z, p, logp, col)
    return [("output copy", partial(xp.copyto, p, z)), *activation.forward_ops(p)]


def loss_ops(xp, spec: MLPSpec, activation, p, logp, t, d, losses, batch: _Batch, lr: float | None) -> list[Op]:
    """The batch loss (mean over the n rows) into losses[batch.step] and, when d is not None,
    dL/dz of the output layer into d, times ``lr`` unless None (then every gradient below
    is lr times itself: plain SGD's update is one pass, p -= g). p, logp, t, d: (K, n);
    logp is scratch unless softmax."""
    n = p.shape[1]
    if spec.loss != "cross_entropy":

        def squared():
            losses[batch.step] = squared_loss_and_delta(xp, spec, activation, p, logp, t, d, lr)

        return [("loss + delta", squared)]

    def cross_entropy():  # -mean_n sum_k t log p
        losses[batch.step] = -xp.vdot(t, logp) / n

    ops = [("loss", cross_entropy)]
    if d is None:
        return ops
    ops.append(("delta p - t", partial(xp.subtract, p, t, out=d)))  # the fused gradient of softmax + CE: (p - t) / n
    if lr is None:
        return [*ops, ("delta / n", partial(xp.divide, d, n, out=d))]
    return [*ops, ("delta * lr / n", partial(xp.multiply, d, lr / n, out=d))]


def squared_loss_and_delta(xp, spec: MLPSpec, activation, p, logp, t, d, lr: float | None):
    """mse or half_sse (0-d array) and, when d is not None, dL/dz (times lr unless None) into d;
    p, logp, t, d: (K, n), logp is scratch."""
    n = p.shape[1]
    # mse: mean_n mean_k (p - t)^2;  half_sse: mean_n 1/2 sum_k (p - t)^2
    scale = 1.0 / (n * spec.sizes[-1]) if spec.loss == "mse" else 0.5 / n
    diff = logp if d is None else d
    xp.subtract(p, t, out=diff)
    loss = xp.vdot(diff, diff) * scale
    if d is not None:
        d *= 2 * scale if lr is None else 2 * scale * lr  # dL/dp (times lr)
        activation.backward(p, d, logp)  # -> dL/dz (logp is scratch here)
    return loss


# ---------------------------------------------------------------- optimizer


class Optimizer:
    """OptimizerSpec's rule, in place. ``apply`` only updates: gradients come from elsewhere.

    It works on flat vectors: every parameter lives in one array ``params`` and its
    gradient at the same place in ``grads`` (see ``NumpyBackend``), so one call updates a
    layer (sequential) or the whole net (parallel) instead of one call per W and b.
    ``apply`` overwrites the gradient (it is scratch once consumed). The global step t
    counts optimizer steps (batches), from 1; every layer of a step uses the same t.
    """

    def __init__(self, xp, spec: OptimizerSpec, params, grads):
        self.xp, self.name, self.t = xp, spec.name, 0
        self.params, self.grads = params, grads  # flat (P,) arrays
        # Python floats: NumPy treats them as "weak", so float32 arrays stay float32
        self.lr, self.mu = float(spec.lr), float(spec.momentum)
        self.b1, self.b2, self.eps = float(spec.beta1), float(spec.beta2), float(spec.eps)
        self.rho = float(spec.rho)
        # momentum: v; rmsprop: v and a scratch vector; adam: m, v and a scratch vector. All (P,), zero at the start.
        n_state = {"sgd": 0, "momentum": 1, "rmsprop": 2, "adam": 3}[spec.name]
        self.state = [xp.zeros_like(params) for _ in range(n_state)]

    def begin_step(self) -> None:
        self.t += 1

    def reset(self) -> None:
        """Back to step 0 with zero state, as a new optimizer."""
        self.t = 0
        for a in self.state:
            a[...] = 0

    def lr_in_gradient(self) -> float | None:
        """The lr for the loss to put into dL/dz (plain SGD: then its update is p -= g, or on the
        CPU no pass at all, inside the weight-gradient GEMM: NumpyFastBackend._sgd_gemm), or None.

        Read when a step's Ops are built (once an epoch): set_lr comes between epochs."""
        return self.lr if self.name == "sgd" else None

    def apply_ops(self, part: slice) -> list[Op]:
        """apply(part) as Ops. SGD's gradient holds the lr already (lr_in_gradient): p -= g."""
        if self.name != "sgd":
            return [(f"{self.name} update", partial(self.apply, part))]
        p, g = self.params[part], self.grads[part]
        return [("sgd p -= g", partial(self.xp.subtract, p, g, out=p))]

    def apply(self, part: slice) -> None:
        """Update params[part] from grads[part]."""
        xp, lr = self.xp, self.lr
        p, g = self.params[part], self.grads[part]
        if self.name == "sgd":  # p -= lr g
            g *= lr
            p -= g
        elif self.name == "momentum":  # v = mu v + g; p -= lr v
            v = self.state[0][part]
            v *= self.mu
            v += g
            xp.multiply(v, lr, out=g)
            p -= g
        elif self.name == "rmsprop":  # v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)
            v, tmp = (state[part] for state in self.state)
            xp.multiply(g, g, out=tmp)
            tmp *= 1.0 - self.rho
            v *= self.rho
            v += tmp
            xp.sqrt(v, out=tmp)
            tmp += self.eps
            g *= lr
            g /= tmp
            p -= g
        else:  # adam with bias correction, t = global step
            b1, b2 = self.b1, self.b2
            m, v, tmp = (state[part] for state in self.state)
            xp.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v *= b2
            v += tmp  # v = b2 v + (1 - b2) g^2
            g *= 1.0 - b1
            m *= b1
            m += g  # m = b1 m + (1 - b1) g
            bc1, bc2 = 1.0 - b1**self.t, 1.0 - b2**self.t
            xp.divide(v, bc2, out=tmp)
            xp.sqrt(tmp, out=tmp)
            tmp += self.eps  # sqrt(v_hat) + eps
            xp.divide(m, tmp, out=tmp)
            tmp *= lr / bc1  # lr m_hat / (sqrt(v_hat) + eps)
            p -= tmp


# ---------------------------------------------------------------- work buffers


class _Workspace:
    """Every array one batch of up to ``rows`` samples needs; batches use the [:n] views.

    inp[l] (rows, in_l + 1): layer l's input with its ones column (inp[0] = x; inp[l + 1]
    holds layer l's z, then f(z), in place: ``hidden(l, n)``); for training also d[l] =
    dL/dz_l (rows, out_l) and a scratch (relu: its 0/1 mask) per hidden layer.

    The output layer's arrays are class-major, (K, n) (``by_class``): z_out, p, logp (also
    scratch), the targets t and its dL/dz; col (1, n) holds softmax's per-sample max and sum.
    A step gathers its targets as rows into t_rows (rows, K) and copies them class-major into t:
    gathered along the train set's (K, N) columns instead, each sample costs K cache misses.
    Softmax reduces over the K classes of each sample, and over the outer axis that is a few
    vectorised passes (Softmax.output_ops). Each is a flat buffer of K * rows, so a short last
    batch's (K, n) is contiguous too; its dL/dz enters the products as the (n, K) view
    ``delta(last, n)``, a transposed array BLAS takes as it is.
    """

    def __init__(self, xp, spec: MLPSpec, rows: int, dtype, train: bool):
        self.rows, self.k = rows, spec.sizes[-1]
        outs = spec.sizes[1:]
        self.inp = [xp.empty((rows, i + 1), dtype) for i in spec.sizes[:-1]]
        for a in self.inp:
            a[:, -1] = 1  # never written again: gathers bring the train set's own ones column
        self.t, self.p, self.z_out, self.logp = (xp.empty(self.k * rows, dtype) for _ in range(4))
        self.col, self.t_rows = xp.empty(rows, dtype), xp.empty((rows, self.k), dtype)
        self.d = [xp.empty((rows, o), dtype) for o in outs[:-1]] + [xp.empty(self.k * rows, dtype)] if train else None
        self.hidden_scratch = [xp.empty((rows, o), dtype) for o in outs[:-1]] if train else None

    def hidden(self, l: int, n: int):
        """Hidden layer l's z / f(z) (n, out_l): the next input without its ones column."""
        return self.inp[l + 1][:n, :-1]

    def by_class(self, flat, n: int, k: int | None = None):
        """The first n samples of an output-layer buffer, (K, n) contiguous (col: k=1)."""
        k = self.k if k is None else k
        return flat[: k * n].reshape(k, n)

    def delta(self, l: int, n: int):
        """dL/dz of layer l for n samples, (n, out_l); the output layer's is a transposed view."""
        return self.d[l][:n] if l < len(self.d) - 1 else self.by_class(self.d[l], n).T


class _Batch:
    """What changes from step to step, read by the Ops when they run: the rows (indices into
    the loaded train set) and the step's place in the epoch's loss vector."""

    def __init__(self, idx=None, step: int = 0):
        self.idx, self.step = idx, step


# ---------------------------------------------------------------- the backend


class NumpyFastBackend(NumpyBackend):
    """NumpyBackend's math with preallocated buffers (device, info and set-up checks inherited)."""

    compile_mode = "preallocated out= buffers (numpy_fast.py)"

    def _setup(self, init: Params) -> None:
        unsupported = [
            name
            for name, used in (
                ("regularizer.dropout", self.reg.has_dropout),
                ("regularizer.l1/l2", self.reg.has_penalty),
                ("optimizer.weight_decay", self.opt_spec.weight_decay > 0),
            )
            if used
        ]
        if unsupported:
            raise ValueError(
                f"framework=numpy with framework.compile=true (the preallocated path) does not implement "
                f"{', '.join(unsupported)}; set framework.compile=false"
            )
        xp, spec, dtype = self.xp, self.spec, np.dtype(self.dtype)
        # All parameters in one flat vector [W0, b0, W1, b1, ...]; layer l's slice ``parts[l]``
        # is its Wb (in + 1, out) (see Dense) and the gradients mirror it in ``grads``.
        sizes = [i * o + o for i, o in spec.shapes()]
        bounds = np.cumsum([0, *sizes])
        self.parts = [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.flat = xp.empty(int(bounds[-1]), dtype)
        # zeros: a bias that is not trained keeps a zero gradient, so every rule leaves it as it is
        self.grads = xp.zeros_like(self.flat)
        hidden = ACTIVATIONS[spec.hidden_activation](xp)
        self.layers, self.grad_views = [], []
        for (i, o), part, (w, b) in zip(spec.shapes(), self.parts, init):
            layer = Dense(xp, self.flat[part].reshape(i + 1, o), hidden)
            layer.W[...], layer.b[...] = xp.asarray(w, dtype=dtype), xp.asarray(b, dtype=dtype)
            self.layers.append(layer)
            self.grad_views.append(self.grads[part].reshape(i + 1, o))
        self.layers[-1].act = ACTIVATIONS[spec.output_activation](xp)  # run by output_ops
        self.optimizer = Optimizer(xp, self.opt_spec, self.flat, self.grads)
        self._train_ws: _Workspace | None = None
        self._blas = None  # threadpoolctl's view of the BLAS pools, made on first use (blas_threads)

    def _load(self, x: np.ndarray, t: np.ndarray) -> None:
        """The train set with a ones column after the pixels (N, in + 1): a gathered batch is
        layer 0's input as it is (Dense: the bias row). t: (N, K) one-hot."""
        xb = np.empty((len(x), x.shape[1] + 1), x.dtype)
        xb[:, :-1], xb[:, -1] = x, 1
        self._x, self._t = self.xp.asarray(xb), self.xp.asarray(t)

    # ------------------------------------------------------------ one step, as Ops

    def _gather_op(self, src, out, batch: _Batch) -> Op:
        """out = src[batch.idx] (the rows of this step), without a temporary."""
        if self.xp is np:  # indices checked per epoch; clip avoids a copy
            take = src.take  # the method: np.take's Python wrapper costs about 1 µs a call
            return lambda: take(batch.idx, axis=0, out=out, mode="clip")
        take = self.xp.take
        return lambda: take(src, batch.idx, axis=0, out=out)

    def _forward_ops(self, ws: _Workspace, n: int) -> list[Op]:
        """From ws.inp[0][:n] (x and ones) fill every hidden layer's f(z), ws.z_out, ws.p and ws.logp."""
        ops = []
        for l, layer in enumerate(self.layers[:-1]):
            a = ws.hidden(l, n)
            # f over the whole contiguous buffer when f(1) == 1: about 2x faster than over the
            # (n, out) view, whose rows are strided (relu: 7 against 15 µs a step on (64, 128))
            f_on = ws.inp[l + 1][:n] if layer.act.keeps_one else a
            ops += layer.affine_ops(l, ws.inp[l][:n], a) + _labelled(l, layer.act.forward_ops(f_on))
        last, out = len(self.layers) - 1, self.layers[-1]
        z, p, logp = (ws.by_class(buf, n) for buf in (ws.z_out, ws.p, ws.logp))
        ops += out.affine_class_major_ops(last, ws.inp[last][:n], z)
        return ops + output_ops(self.xp, out.act, z, p, logp, ws.by_class(ws.col, n, k=1))

    def _loss_ops(self, ws: _Workspace, n: int, losses, batch: _Batch, lr: float | None, delta: bool) -> list[Op]:
        """Batch loss into losses[batch.step]; with ``delta`` also dL/dz of the output layer
        (times lr unless None) in ws.d[-1]."""
        d = ws.by_class(ws.d[-1], n) if delta else None
        p, logp, t = (ws.by_class(buf, n) for buf in (ws.p, ws.logp, ws.t))
        return loss_ops(self.xp, self.spec, self.layers[-1].act, p, logp, t, d, losses, batch, lr)

    def _backward_ops(self, ws: _Workspace, n: int, update: bool) -> list[Op]:
        """Every gradient from ws.d[-1] (dL/dz of the output layer) down; with ``update`` also the
        optimizer's steps. The one place the strategies differ."""
        last, sequential = len(self.layers) - 1, self.strategy == "sequential"
        gemm = self._sgd_gemm() if update else None
        fused = gemm is not None  # each layer's step inside its weight-gradient GEMM
        ops = [("optimizer step count", self.optimizer.begin_step)] if update else []
        for l in range(last, -1, -1):
            layer, a_in, d = self.layers[l], ws.inp[l][:n], ws.delta(l, n)
            if fused:
                step = layer.descend_ops(l, a_in, d, self.spec.train_biases, gemm)
            else:
                step = layer.grad_ops(l, a_in, d, self.grad_views[l], self.spec.train_biases)
                if update and sequential:
                    step += _labelled(l, self.optimizer.apply_ops(self.parts[l]))
            if sequential or not fused:  # sequential: layer l changes before the error goes through W[l]
                ops += step
            if l > 0:  # ws.d[l] -> ws.d[l-1] = dL/dz_{l-1}: through W[l], then the hidden activation
                d_prev, act = ws.delta(l - 1, n), self.layers[l - 1].act
                ops += layer.propagate_ops(l, d, d_prev)
                ops += _labelled(l - 1, act.backward_ops(ws.hidden(l - 1, n), d_prev, ws.hidden_scratch[l - 1][:n]))
            if fused and not sequential:  # parallel: W[l] changes once the error has gone through it
                ops += step
        if update and not sequential and not fused:  # every gradient from the pre-step weights: one update pass
            ops += self.optimizer.apply_ops(slice(None))
        return ops

    def _sgd_gemm(self):
        """NumPy's BLAS GEMM when plain SGD's steps can run inside it (CPU; numpy_gemm.py), else None.

        Read when a step's Ops are built, like lr_in_gradient: the lr sits in dL/dz, so the step
        W -= lr dL/dW is W -= a_in^T d, GEMM with alpha = -1 and beta = 1."""
        if self.xp is not np or self.optimizer.lr_in_gradient() is None:
            return None
        return numpy_gemm(self.dtype)  # looked up and checked once per dtype

    def _gather_ops(self, ws: _Workspace, n: int, batch: _Batch) -> list[Op]:
        """The step's samples into the workspace: x with its ones column, t class-major."""
        return [
            ("gather x", self._gather_op(self._x, ws.inp[0][:n], batch)),
            ("gather t", self._gather_op(self._t, ws.t_rows[:n], batch)),
            ("gather t, class-major copy", partial(self.xp.copyto, ws.by_class(ws.t, n), ws.t_rows[:n].T)),
        ]

    def train_ops(self, ws: _Workspace, n: int, batch: _Batch, losses) -> list[Op]:
        """One optimizer step on the n rows batch.idx of the train set; its loss into losses[batch.step]."""
        return [
            *self._gather_ops(ws, n, batch),
            *self._forward_ops(ws, n),
            *self._loss_ops(ws, n, losses, batch, self.optimizer.lr_in_gradient(), delta=True),
            *self._backward_ops(ws, n, update=True),
        ]

    # ------------------------------------------------------------ epochs, evaluation, state

    def epoch_steps(self, order: np.ndarray, batch_size: int, losses) -> Iterator[list[Op]]:
        """Each step's Ops, ready to run (the step's rows set); losses: (n_steps,) on the device.

        A step's Ops are built once per epoch and batch length (the last batch may be short).
        """
        rows = min(batch_size, len(order))
        if self._train_ws is None or self._train_ws.rows != rows:
            self._train_ws = _Workspace(self.xp, self.spec, rows, self.dtype, train=True)
        idx_all = self.xp.asarray(order.astype(np.intp))  # one host->device copy per epoch
        batch, built = _Batch(), {}
        with self.blas_threads(rows):  # held while the caller runs the steps
            for step in range(len(losses)):
                batch.idx, batch.step = idx_all[step * batch_size : (step + 1) * batch_size], step
                n = len(batch.idx)
                if n not in built:
                    built[n] = self.train_ops(self._train_ws, n, batch, losses)
                yield built[n]

    def blas_threads(self, rows: int) -> contextlib.AbstractContextManager:
        """Within it, NumPy's BLAS on one thread when a batch has at most ONE_THREAD_ROWS rows
        (CPU only; a pool already at one thread stays so); otherwise nothing changes. Leaving it
        restores the threads as they were."""
        if self.xp is not np or rows > ONE_THREAD_ROWS:
            return contextlib.nullcontext()
        if self._blas is None:  # threadpoolctl finds the loaded BLAS once (a scan of the process's libraries)
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController().select(user_api="blas")
        return self._blas.limit(limits=1)

    def _epoch(self, order: np.ndarray, batch_size: int, masks: None) -> np.ndarray:
        losses = self.xp.empty(-(-len(order) // batch_size), self.dtype)  # stays on the device until the epoch ends
        for ops in self.epoch_steps(order, batch_size, losses):
            for _, call in ops:
                call()
        return to_numpy(losses)  # the one device read of the epoch

    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        n = len(x)
        ws = _Workspace(self.xp, self.spec, n, self.dtype, train=False)
        ws.inp[0][:, :-1] = self.xp.asarray(x)
        ops = self._forward_ops(ws, n)
        loss = self.xp.empty(1, self.dtype)
        if t is not None:
            ws.by_class(ws.t, n)[...] = self.xp.asarray(t).T
            ops += self._loss_ops(ws, n, loss, _Batch(), lr=None, delta=False)
        for _, call in ops:
            call()
        p = np.ascontiguousarray(to_numpy(ws.by_class(ws.p, n)).T)  # (n, K)
        return p, float("nan") if t is None else float(loss[0] * n)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, masks: None = None) -> tuple[float, list]:
        """Loss and [(dL/dW, dL/db or None)] at the current weights, no update (for tests)."""
        n = len(x)
        ws = _Workspace(self.xp, self.spec, n, self.dtype, train=True)
        ws.inp[0][:, :-1] = self.xp.asarray(np.asarray(x, self.dtype))
        ws.by_class(ws.t, n)[...] = self.xp.asarray(self._targets(y)).T
        loss = self.xp.empty(1, self.dtype)
        ops = self._forward_ops(ws, n) + self._loss_ops(ws, n, loss, _Batch(), lr=None, delta=True)
        for _, call in ops + self._backward_ops(ws, n, update=False):
            call()
        biases = self.spec.train_biases
        grads = [(to_numpy(g[:-1]).copy(), to_numpy(g[-1]).copy() if biases else None) for g in self.grad_views]
        return float(loss[0]), grads

    def _phase_fns(self, x_rows: np.ndarray):
        """On a workspace of its own, the batch gathered into it once. forward: the forward pass and
        the loss; forward_backward: that and every gradient, into the gradient buffers; step: train_ops
        without its gathers (plain SGD's step inside the weight-gradient GEMMs where it runs so in an
        epoch, so step - forward_backward is what the step adds to those products)."""
        n = len(x_rows)
        ws, batch, losses = (
            _Workspace(self.xp, self.spec, n, self.dtype, train=True),
            _Batch(),
            self.xp.empty(1, self.dtype),
        )
        batch.idx, batch.step = self.xp.asarray(x_rows.astype(np.intp)), 0
        gathers, step = self._gather_ops(ws, n, batch), self.train_ops(ws, n, batch, losses)
        for _, call in gathers:  # once, here
            call()
        forward = self._forward_ops(ws, n) + self._loss_ops(ws, n, losses, batch, lr=None, delta=False)
        forward_backward = [
            *self._forward_ops(ws, n),
            *self._loss_ops(ws, n, losses, batch, lr=None, delta=True),
            *self._backward_ops(ws, n, update=False),
        ]
        return tuple(
            _runner(ops, losses, partial(self.blas_threads, n))
            for ops in (forward, forward_backward, step[len(gathers) :])
        )

    def params(self) -> Params:
        return [(to_numpy(layer.W).copy(), to_numpy(layer.b).copy()) for layer in self.layers]

    def _info(self) -> dict[str, str]:
        """NumpyBackend's, and on the CPU where the optimizer's step runs (a run tag)."""
        info = super()._info()
        if self.xp is np:
            gemm = self._sgd_gemm()
            info["update"] = (
                f"sgd inside the weight-gradient GEMM ({gemm.symbol}, beta=1)"
                if gemm is not None
                else f"{self.optimizer.name}: a pass over the flat parameters"
            )
        return info


def _runner(ops: list[Op], out, threads: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], object]:
    """A zero-argument call running ops in order, within threads() (the epoch's BLAS threads), and
    returning out[0], the loss (what the caller waits on)."""

    def run():
        with threads():
            for _, call in ops:
                call()
        return out[0]

    return run


def _labelled(l: int, ops: list[Op]) -> list[Op]:
    """An activation's or a layer's update Ops, labelled with the layer they run for."""
    return [(f"L{l} {label}", call) for label, call in ops]
