"""The NumPy backend with its speed tricks: the same arithmetic as numpy_backend.py, in place.

Every work array is allocated once per batch size (``_Workspace``) and every op writes
into it with ``out=``; all parameters live in one flat vector so that one optimizer call
updates a layer (sequential) or the whole net (parallel). Selected by compile=True; the
tests hold it to the plain backend's results bit for bit.
"""

from __future__ import annotations

import numpy as np

from backprop_bench.backends.numpy_backend import NumpyBackend, to_numpy
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params

# ---------------------------------------------------------------- activations
# Each works in place: forward turns z into a, backward turns dL/da into dL/dz using
# only a (every derivative here is a function of the output), so no z is kept.


class Relu:
    def __init__(self, xp):
        self.xp = xp

    def forward(self, z):  # a = max(z, 0)
        self.xp.maximum(z, 0, out=z)

    def backward(self, a, d, mask):  # dL/dz = dL/da * [a > 0]  (0 at the kink, like torch)
        # mask has d's float dtype, not bool: float * float skips the bool -> float cast,
        # about 1.5x faster per call on (64, 128) (the product is the same: d * 1.0 or d * 0.0)
        self.xp.greater(a, 0, out=mask)
        self.xp.multiply(d, mask, out=d)


class Sigmoid:
    def __init__(self, xp):
        self.xp = xp

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


class Tanh:
    def __init__(self, xp):
        self.xp = xp

    def forward(self, z):
        self.xp.tanh(z, out=z)

    def backward(self, a, d, scratch):  # dL/dz = dL/da * (1 - a^2)
        self.xp.multiply(a, a, out=scratch)
        self.xp.subtract(1, scratch, out=scratch)
        d *= scratch


class Identity:
    def __init__(self, xp):
        self.xp = xp

    def forward(self, z):
        pass

    def backward(self, a, d, scratch):
        pass


class Softmax:
    """Output only. forward also leaves log p in ``logp`` for a stable cross-entropy."""

    def __init__(self, xp):
        self.xp = xp

    def forward_into(self, z, p, logp):  # z, p, logp: (n, K)
        xp = self.xp
        xp.subtract(z, z.max(axis=1, keepdims=True), out=logp)  # shift: exp cannot overflow
        xp.exp(logp, out=p)
        total = p.sum(axis=1, keepdims=True)  # (n, 1)
        p /= total
        logp -= xp.log(total)

    def backward(self, p, d, scratch):  # dL/dz_j = p_j (dL/dp_j - sum_k dL/dp_k p_k)
        xp = self.xp
        xp.multiply(d, p, out=scratch)
        d -= scratch.sum(axis=1, keepdims=True)
        d *= p


ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh, "identity": Identity, "softmax": Softmax}


# ---------------------------------------------------------------- layer


class Dense:
    """z = a_in @ W + b, a = f(z). W (in, out), b (out,). Forward and backward side by side."""

    def __init__(self, xp, w, b, activation):
        self.xp, self.W, self.b, self.act = xp, w, b, activation

    def affine(self, a_in, out):
        """a_in (n, in) -> out (n, out) = a_in @ W + b."""
        self.xp.matmul(a_in, self.W, out=out)
        out += self.b

    def forward(self, a_in, out):
        """a_in (n, in) -> out (n, out) = f(a_in @ W + b), f in place."""
        self.affine(a_in, out)
        self.act.forward(out)

    def grads(self, a_in, d, dW, db):
        """d = dL/dz (n, out) -> dW = a_in^T d (in, out), db = sum_n d (out,); db None: skipped."""
        self.xp.matmul(a_in.T, d, out=dW)
        if db is not None:
            d.sum(axis=0, out=db)

    def propagate(self, d, out):
        """dL/da_in = d @ W^T (n, in), through W as it is *now*: the strategy decides when."""
        self.xp.matmul(d, self.W.T, out=out)


# ---------------------------------------------------------------- output + loss


def output_forward(xp, activation, z, p, logp) -> None:
    """p = f(z) for the output layer; softmax also leaves log p in ``logp``. All (n, K)."""
    if isinstance(activation, Softmax):
        activation.forward_into(z, p, logp)
    else:
        xp.copyto(p, z)
        activation.forward(p)


def loss_and_delta(xp, spec: MLPSpec, activation, p, logp, t, d):
    """The batch loss (0-d array, mean over the n rows) and, when d is not None, dL/dz of
    the output layer written into d. p, logp, t, d: (n, K); logp is scratch unless softmax."""
    n = p.shape[0]
    if spec.loss == "cross_entropy":  # -mean_n sum_k t log p; fused gradient (p - t) / n
        loss = -xp.vdot(t, logp) / n
        if d is not None:
            xp.subtract(p, t, out=d)
            d /= n
        return loss
    # mse: mean_n mean_k (p - t)^2;  half_sse: mean_n 1/2 sum_k (p - t)^2
    scale = 1.0 / (n * spec.sizes[-1]) if spec.loss == "mse" else 0.5 / n
    diff = logp if d is None else d
    xp.subtract(p, t, out=diff)
    loss = xp.vdot(diff, diff) * scale
    if d is not None:
        d *= 2 * scale  # dL/dp
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

    x (rows, in), t (rows, K), a[l] (rows, out_l) (z, then f(z), in place; a[-1] = p),
    z_out and logp (rows, K) (logp doubles as scratch); for training also
    d[l] = dL/dz_l (rows, out_l) and a scratch (relu: its 0/1 mask) per hidden layer.
    """

    def __init__(self, xp, spec: MLPSpec, rows: int, dtype, train: bool):
        self.rows = rows
        outs = spec.sizes[1:]
        k = spec.sizes[-1]
        self.x = xp.empty((rows, spec.sizes[0]), dtype)
        self.t = xp.empty((rows, k), dtype)
        self.a = [xp.empty((rows, o), dtype) for o in outs]
        self.z_out, self.logp = xp.empty((rows, k), dtype), xp.empty((rows, k), dtype)
        self.d = [xp.empty((rows, o), dtype) for o in outs] if train else None
        self.hidden_scratch = [xp.empty((rows, o), dtype) for o in outs[:-1]] if train else None


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
        # All parameters in one flat vector [W0, b0, W1, b1, ...]; W[l], b[l] are views into
        # it and the gradients mirror it in ``grads``. Layer l's slice is ``parts[l]``.
        sizes = [i * o + o for i, o in spec.shapes()]
        bounds = np.cumsum([0, *sizes])
        self.parts = [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.flat = xp.empty(int(bounds[-1]), dtype)
        # zeros: a bias that is not trained keeps a zero gradient, so every rule leaves it as it is
        self.grads = xp.zeros_like(self.flat)
        hidden = ACTIVATIONS[spec.hidden_activation](xp)
        self.layers, self.grad_views = [], []
        for (i, o), part, (w, b) in zip(spec.shapes(), self.parts, init):
            W, bias = _split(self.flat, part, i, o)
            W[...], bias[...] = xp.asarray(w, dtype=dtype), xp.asarray(b, dtype=dtype)
            self.layers.append(Dense(xp, W, bias, hidden))
            dW, db = _split(self.grads, part, i, o)
            self.grad_views.append((dW, db if spec.train_biases else None))  # None: db not computed
        self.layers[-1].act = ACTIVATIONS[spec.output_activation](xp)  # run by output_forward
        self.optimizer = Optimizer(xp, self.opt_spec, self.flat, self.grads)
        self._train_ws: _Workspace | None = None

    def _gather(self, src, idx, out) -> None:
        if self.xp is np:
            np.take(src, idx, axis=0, out=out, mode="clip")  # indices checked per epoch; clip avoids a copy
        else:
            self.xp.take(src, idx, axis=0, out=out)

    def _forward_ws(self, ws: _Workspace, x, n: int) -> None:
        """Fill ws.a[l][:n] for every layer (ws.a[-1] = the output p), ws.z_out, ws.logp."""
        a_in = x
        for layer, a in zip(self.layers[:-1], ws.a[:-1]):
            layer.forward(a_in, a[:n])
            a_in = a[:n]
        out = self.layers[-1]
        out.affine(a_in, ws.z_out[:n])
        output_forward(self.xp, out.act, ws.z_out[:n], ws.a[-1][:n], ws.logp[:n])

    def _loss(self, ws: _Workspace, t, n: int, delta: bool):
        """Batch loss (0-d array); with ``delta`` also dL/dz of the output layer in ws.d[-1]."""
        d = ws.d[-1][:n] if delta else None
        return loss_and_delta(self.xp, self.spec, self.layers[-1].act, ws.a[-1][:n], ws.logp[:n], t, d)

    def _grads(self, ws: _Workspace, x, l: int, n: int) -> None:
        dW, db = self.grad_views[l]
        self.layers[l].grads(x if l == 0 else ws.a[l - 1][:n], ws.d[l][:n], dW, db)

    def _propagate_ws(self, ws: _Workspace, l: int, n: int) -> None:
        """ws.d[l] -> ws.d[l-1] = dL/dz_{l-1}: through W[l], then the hidden activation."""
        d_prev = ws.d[l - 1][:n]
        self.layers[l].propagate(ws.d[l][:n], d_prev)
        self.layers[l - 1].act.backward(ws.a[l - 1][:n], d_prev, ws.hidden_scratch[l - 1][:n])

    def _backward(self, ws: _Workspace, x, n: int) -> None:
        """The one place the strategies differ. ws.d[-1] holds dL/dz of the output layer."""
        last = len(self.layers) - 1
        self.optimizer.begin_step()
        for l in range(last, -1, -1):
            self._grads(ws, x, l, n)
            if self.strategy == "sequential":  # update layer l before the error goes through W[l]
                self.optimizer.apply(self.parts[l])
            if l > 0:
                self._propagate_ws(ws, l, n)
        if self.strategy == "parallel":  # every gradient from the pre-step weights: one update pass
            self.optimizer.apply(slice(None))

    def _epoch(self, order: np.ndarray, batch_size: int, masks: None) -> np.ndarray:
        rows = min(batch_size, len(order))
        if self._train_ws is None or self._train_ws.rows != rows:
            self._train_ws = _Workspace(self.xp, self.spec, rows, self.dtype, train=True)
        ws = self._train_ws
        idx_all = self.xp.asarray(order.astype(np.intp))  # one host->device copy per epoch
        n_steps = -(-len(order) // batch_size)
        losses = self.xp.empty(n_steps, self.dtype)  # stays on the device until the epoch ends
        for step in range(n_steps):
            idx = idx_all[step * batch_size : (step + 1) * batch_size]
            n = len(idx)
            x, t = ws.x[:n], ws.t[:n]
            self._gather(self._x, idx, x)
            self._gather(self._t, idx, t)
            self._forward_ws(ws, x, n)
            losses[step] = self._loss(ws, t, n, delta=True)
            self._backward(ws, x, n)
        return to_numpy(losses)  # the one device read of the epoch

    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        n = len(x)
        ws = _Workspace(self.xp, self.spec, n, self.dtype, train=False)
        ws.x[...] = self.xp.asarray(x)
        self._forward_ws(ws, ws.x, n)
        if t is None:
            return to_numpy(ws.a[-1]).copy(), float("nan")
        ws.t[...] = self.xp.asarray(t)
        return to_numpy(ws.a[-1]).copy(), float(self._loss(ws, ws.t, n, delta=False) * n)

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, masks: None = None) -> tuple[float, list]:
        """Loss and [(dL/dW, dL/db or None)] at the current weights, no update (for tests)."""
        n = len(x)
        ws = _Workspace(self.xp, self.spec, n, self.dtype, train=True)
        ws.x[...] = self.xp.asarray(np.asarray(x, self.dtype))
        ws.t[...] = self.xp.asarray(self._targets(y))
        loss = float(self._gradients_ws(ws, ws.x, ws.t, n))
        grads = [(to_numpy(dW).copy(), None if db is None else to_numpy(db).copy()) for dW, db in self.grad_views]
        return loss, grads

    def _gradients_ws(self, ws: _Workspace, x, t, n: int):
        """Forward, the loss (0-d, returned) and every gradient into self.grads; no update."""
        self._forward_ws(ws, x, n)
        loss = self._loss(ws, t, n, delta=True)
        for l in range(len(self.layers) - 1, -1, -1):
            self._grads(ws, x, l, n)
            if l > 0:
                self._propagate_ws(ws, l, n)
        return loss

    def _phase_fns(self, x_rows: np.ndarray):
        """On a workspace of its own, the batch gathered into it once. forward: _forward_ws and the
        loss; forward_backward: _gradients_ws; step: _epoch's step without its gather (the update is
        one Optimizer.apply over the flat parameter vector)."""
        n = len(x_rows)
        ws = _Workspace(self.xp, self.spec, n, self.dtype, train=True)
        idx = self.xp.asarray(x_rows.astype(np.intp))
        self._gather(self._x, idx, ws.x)
        self._gather(self._t, idx, ws.t)

        def forward():
            self._forward_ws(ws, ws.x, n)
            return self._loss(ws, ws.t, n, delta=False)

        def step():
            self._forward_ws(ws, ws.x, n)
            loss = self._loss(ws, ws.t, n, delta=True)
            self._backward(ws, ws.x, n)
            return loss

        return forward, lambda: self._gradients_ws(ws, ws.x, ws.t, n), step

    def params(self) -> Params:
        return [(to_numpy(layer.W).copy(), to_numpy(layer.b).copy()) for layer in self.layers]


def _split(flat, part: slice, n_in: int, n_out: int):
    """Views (W (n_in, n_out), b (n_out,)) of one layer's slice of a flat vector."""
    seg = flat[part]
    return seg[: n_in * n_out].reshape(n_in, n_out), seg[n_in * n_out :]
