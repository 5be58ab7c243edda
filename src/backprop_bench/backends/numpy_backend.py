"""The MLP from scratch in NumPy (CuPy on cuda): forward, manual backprop, the update rule.

A step is three separate pieces: ``_forward`` (every layer's activation), ``Dense.grads``
/ ``_propagate`` (dL/dW, dL/db, and the error sent to the layer below), and
``Optimizer.apply`` (OptimizerSpec's rule). The strategies differ only in the order of
those calls (``_step``). Shapes: a (n, in), W (in, out), b (out,), d = dL/dz (n, out).
``numpy_fast.py`` computes this with preallocated buffers (compile=True), within float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from backprop_bench.backends.base import Backend, DeviceUnavailable, as_params, cpu_name
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params

# ---------------------------------------------------------------- activations
# a = f(z), and dL/dz = dL/da * f'(z) written from the output a: the backward pass needs only a.

HIDDEN = {
    "relu": (lambda xp, z: xp.maximum(z, 0), lambda a, d: d * (a > 0).astype(a.dtype)),  # 0 at the kink, like torch
    "sigmoid": (lambda xp, z: 1 / (1 + xp.exp(-z)), lambda a, d: d * a * (1 - a)),
    "tanh": (lambda xp, z: xp.tanh(z), lambda a, d: d * (1 - a * a)),
}


def output_and_loss(xp, spec: MLPSpec, z, t):
    """Output layer: z, t (n, K) -> (p (n, K), mean loss (0-d), dL/dz (n, K))."""
    n = len(z)
    if spec.loss == "cross_entropy":  # softmax output; log p from the shifted z is stable
        logp = z - z.max(axis=1, keepdims=True)
        p = xp.exp(logp)
        total = p.sum(axis=1, keepdims=True)
        p /= total
        logp -= xp.log(total)
        return p, -xp.vdot(t, logp) / n, (p - t) / n  # fused gradient of softmax + cross-entropy
    if spec.output_activation == "softmax":
        p = xp.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    elif spec.output_activation == "sigmoid":
        p = HIDDEN["sigmoid"][0](xp, z)
    else:
        p = z.copy()
    # mse: mean_n mean_k (p - t)^2;  half_sse: mean_n 1/2 sum_k (p - t)^2
    scale = 1.0 / (n * spec.sizes[-1]) if spec.loss == "mse" else 0.5 / n
    diff = p - t
    d = diff * (2 * scale)  # dL/dp
    if spec.output_activation == "softmax":  # dL/dz_j = p_j (dL/dp_j - sum_k dL/dp_k p_k)
        d = (d - (d * p).sum(axis=1, keepdims=True)) * p
    elif spec.output_activation == "sigmoid":
        d = d * p * (1 - p)
    return p, xp.vdot(diff, diff) * scale, d


class Dense:
    """z = a_in @ W + b. Forward and backward side by side."""

    def __init__(self, w, b):
        self.W, self.b = w, b

    def forward(self, a_in):  # (n, in) -> (n, out)
        return a_in @ self.W + self.b

    def grads(self, a_in, d):  # d = dL/dz (n, out) -> dW = a_in^T d (in, out), db = sum_n d (out,)
        return a_in.T @ d, d.sum(axis=0)

    def propagate(self, d):  # dL/da_in = d @ W^T, through W as it is *now*: the strategy decides when
        return d @ self.W.T


class Optimizer:
    """OptimizerSpec's rule. ``apply`` only updates: the gradients come from elsewhere.

    Every parameter of a step uses the same global step t (counted in batches, from 1) and
    the learning rate in effect, ``lr`` (the backend's set_lr changes it between epochs).
    """

    def __init__(self, xp, spec: OptimizerSpec, params: list):
        self.xp, self.spec, self.t, self.lr = xp, spec, 0, float(spec.lr)
        # momentum: v; adam: m and v; rmsprop: v; one zero array per parameter, keyed by its position
        self.state = {id(p): [xp.zeros_like(p) for _ in range(spec.n_slots)] for p in params}

    def begin_step(self) -> None:
        self.t += 1

    def reset(self) -> None:
        """Back to step 0 with zero state, as a new optimizer."""
        self.t = 0
        for arrays in self.state.values():
            for a in arrays:
                a[...] = 0

    def apply(self, p, g, weight: bool = False) -> None:
        """p -= the rule's step, in place; weight: p is a W (AdamW decays those only).
        Python floats keep float32 arrays float32."""
        s, lr = self.spec, self.lr
        if s.name == "sgd":
            p -= lr * g
        elif s.name == "momentum":  # v = mu v + g; p -= lr v
            (v,) = self.state[id(p)]
            v *= s.momentum
            v += g
            p -= v * lr
        elif s.name == "rmsprop":  # v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)
            (v,) = self.state[id(p)]
            v *= s.rho
            v += g * g * (1.0 - s.rho)
            p -= lr * g / (self.xp.sqrt(v) + s.eps)
        else:  # adam with bias correction, eps outside the sqrt; AdamW's decay first
            m, v = self.state[id(p)]
            if weight and s.weight_decay:
                p -= (lr * s.weight_decay) * p
            v *= s.beta2
            v += g * g * (1.0 - s.beta2)
            m *= s.beta1
            m += g * (1.0 - s.beta1)
            bc1, bc2 = 1.0 - s.beta1**self.t, 1.0 - s.beta2**self.t
            p -= m / (self.xp.sqrt(v / bc2) + s.eps) * (lr / bc1)


def find_cupy():
    """(cupy module, "") when CuPy sees a CUDA GPU, else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "cupy is not installed"
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError and friends: no driver, no device
        return None, f"cupy {cupy.__version__} is installed but CUDA is not usable ({type(err).__name__}: {err})"
    if n_gpus < 1:
        return None, f"cupy {cupy.__version__} is installed but found no CUDA GPU"
    return cupy, ""


def to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)  # cupy arrays have .get()


class NumpyBackend(Backend):
    """From-scratch MLP on NumPy (cpu) or CuPy (cuda)."""

    framework = "numpy"

    def _resolve_device(self, device: str) -> str:
        self.xp = np
        if device == "cpu":
            return "cpu"
        cupy, why_not = find_cupy()
        if cupy is not None:
            self.xp = cupy
            return "cuda"
        if device == "auto":
            return "cpu"
        raise DeviceUnavailable(f"device=cuda for framework=numpy needs CuPy with a CUDA GPU; {why_not}")

    def _setup(self, init: Params) -> None:
        xp = self.xp
        self.layers = [
            Dense(xp.array(w, dtype=self.dtype), xp.array(b, dtype=self.dtype)) for w, b in init
        ]  # copies: updated in place
        self.f, self.f_backward = HIDDEN[self.spec.hidden_activation]
        trained = [p for layer in self.layers for p in self._trained(layer)]
        self.optimizer = Optimizer(xp, self.opt_spec, trained)

    def _trained(self, layer: Dense) -> list:
        return [layer.W, layer.b] if self.spec.train_biases else [layer.W]

    def _load(self, x: np.ndarray, t: np.ndarray) -> None:
        self._x, self._t = self.xp.asarray(x), self.xp.asarray(t)

    # ------------------------------------------------------------ one step

    def _forward(self, x, masks=None) -> tuple[list, list]:
        """(acts, hs): acts = [a_0 = x, a_1, ..., a_{L-1}, z_L], every layer's input (hidden ones
        after their dropout mask), then the output's z; hs[l] = f(z_l) before the mask (acts[l]
        itself without dropout): the activation's derivative is read off it."""
        acts, hs = [x], [x]
        for l, layer in enumerate(self.layers):
            z = layer.forward(acts[-1])
            if l == len(self.layers) - 1:
                acts.append(z)
                break
            hs.append(self.f(self.xp, z))
            acts.append(hs[-1] if masks is None else hs[-1] * masks[l])
        return acts, hs

    def _penalty(self):
        """The Regularization's penalty at the current weights (0-d, on the device)."""
        return self.reg.penalty([layer.W for layer in self.layers])

    def _layer_grads(self, l: int, a_in, d) -> list:
        """[dL/dW, dL/db] of layer l (dL/dW with the penalty's term, at W[l] as it is now)."""
        layer, reg = self.layers[l], self.reg
        dW, db = layer.grads(a_in, d)
        if reg.has_penalty:
            dW = dW + reg.l1 * self.xp.sign(layer.W) + (2 * reg.l2) * layer.W
        return [dW, db] if self.spec.train_biases else [dW]

    def _propagate(self, l: int, d, h_prev, mask_prev=None):
        """dL/dz_l -> dL/dz_{l-1}: through W[l] as it is now, the dropout mask of layer l-1's
        output (the forward's), then f' read off its unmasked output h_prev."""
        up = self.layers[l].propagate(d)
        return self.f_backward(h_prev, up if mask_prev is None else up * mask_prev)

    def _step(self, x, t, masks=None):
        """One optimizer step on a batch; returns its pre-update loss (0-d): data loss + penalty."""
        acts, hs = self._forward(x, masks)
        _, loss, d = output_and_loss(self.xp, self.spec, acts[-1], t)
        if self.reg.has_penalty:
            loss = loss + self._penalty()
        self.optimizer.begin_step()
        last = len(self.layers) - 1
        grads = {}
        for l in range(last, -1, -1):  # output layer first
            grads[l] = self._layer_grads(l, acts[l], d)
            if self.strategy == "sequential":  # update layer l, then send the error down through the new W[l]
                self._update(l, grads[l])
            if l > 0:
                d = self._propagate(l, d, hs[l], None if masks is None else masks[l - 1])
        if self.strategy == "parallel":  # every gradient from the pre-step weights, then update
            for l in range(last, -1, -1):
                self._update(l, grads[l])
        return loss

    def _update(self, l: int, grads: list) -> None:
        for i, (p, g) in enumerate(zip(self._trained(self.layers[l]), grads)):
            self.optimizer.apply(p, g, weight=i == 0)

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        xp = self.xp
        idx_all = xp.asarray(order)  # one host -> device copy per epoch
        masks = None if masks is None else [xp.asarray(m) for m in masks]
        losses = []
        for s in range(0, len(order), batch_size):
            idx, rows = idx_all[s : s + batch_size], slice(s, s + batch_size)
            losses.append(self._step(self._x[idx], self._t[idx], None if masks is None else [m[rows] for m in masks]))
        return to_numpy(xp.stack(losses))  # the one device read of the epoch

    def _set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    def _reset_optimizer(self) -> None:
        self.optimizer.reset()

    def _assign(self, params: Params) -> None:
        for layer, (w, b) in zip(self.layers, params):
            layer.W[...], layer.b[...] = self.xp.asarray(w), self.xp.asarray(b)

    # ------------------------------------------------------------ evaluation and state

    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        z = self._forward(self.xp.asarray(x))[0][-1]
        tt = self.xp.zeros_like(z) if t is None else self.xp.asarray(t)
        p, loss, _ = output_and_loss(self.xp, self.spec, z, tt)
        return to_numpy(p), float("nan") if t is None else float(loss * len(x))

    def _gradients(self, x, t, masks=None) -> tuple[object, list]:
        """(training loss (0-d): data loss + penalty, [[dL/dW, dL/db] (or [dL/dW]) per layer]) at the
        current weights, on the device, no update. x (n, in), t (n, K), masks (n, hidden_l) or None."""
        acts, hs = self._forward(x, masks)
        _, loss, d = output_and_loss(self.xp, self.spec, acts[-1], t)
        grads = [None] * len(self.layers)
        for l in range(len(self.layers) - 1, -1, -1):
            grads[l] = self._layer_grads(l, acts[l], d)
            if l > 0:
                d = self._propagate(l, d, hs[l], None if masks is None else masks[l - 1])
        return loss + (self._penalty() if self.reg.has_penalty else 0.0), grads

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, masks: list | None = None) -> tuple[float, list]:
        """The training loss (data loss + penalty, with the given dropout masks (n, hidden_l))
        and [(dL/dW, dL/db or None)] at the current weights, no update (for tests)."""
        xp = self.xp
        masks = None if masks is None else [xp.asarray(np.asarray(m, self.dtype)) for m in masks]
        x, t = xp.asarray(np.asarray(x, self.dtype)), xp.asarray(self._targets(y))
        loss, grads = self._gradients(x, t, masks)
        pairs = [(to_numpy(g[0]), to_numpy(g[1]) if self.spec.train_biases else None) for g in grads]
        return float(loss), pairs

    def _phase_fns(self, x_rows: np.ndarray):
        """forward: _forward and the loss; forward_backward: _gradients; step: _step (the update is
        Optimizer.apply per W and b)."""
        idx = self.xp.asarray(x_rows)
        x, t = self._x[idx], self._t[idx]

        def forward():
            return output_and_loss(self.xp, self.spec, self._forward(x)[0][-1], t)[1]

        return forward, lambda: self._gradients(x, t)[0], lambda: self._step(x, t)

    def params(self) -> Params:
        return [(to_numpy(layer.W).copy(), to_numpy(layer.b).copy()) for layer in self.layers]

    def synchronize(self) -> None:
        if self.xp is not np:
            self.xp.cuda.Device().synchronize()

    # ------------------------------------------------------------ native mode (docs/native.md)
    # A RandomState(seed) replays the stream np.random.seed(seed) gives the legacy global
    # generator, which is what the from-scratch tutorials seed, without touching that global.

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        """The tutorials' documented default ("Xavier"): W = randn(fan_in, fan_out) * sqrt(1/fan_in),
        b = 0, layer by layer from one RandomState(seed), in float64 and then cast to dtype."""
        rs = np.random.RandomState(seed)
        return as_params([(rs.randn(i, o) * np.sqrt(1.0 / i), np.zeros(o)) for i, o in spec.shapes()], dtype)

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        """np.random.permutation(n) once per epoch after np.random.seed(seed), from one RandomState."""
        rs = np.random.RandomState(seed)
        for _ in range(epochs):
            yield rs.permutation(n).astype(np.int64)

    def _info(self) -> dict[str, str]:
        if self.xp is np:
            return {"framework_version": np.__version__, "device_name": cpu_name(), "blas": blas_description()}
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        return {
            "framework_version": f"numpy {np.__version__}, cupy {self.xp.__version__}",
            "device_name": props["name"].decode(),
            "blas": f"cuBLAS (CUDA runtime {self.xp.cuda.runtime.runtimeGetVersion()})",
        }


def blas_description() -> str:
    """The BLAS NumPy calls at run time, e.g. 'openblas 0.3.31 (Haswell, 2 threads)'."""
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            arch, threads = pool.get("architecture"), pool["num_threads"]
            return f"{pool['internal_api']} {pool['version']} ({arch}, {threads} threads)"
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return f"{blas.get('name')} {blas.get('version')}"
