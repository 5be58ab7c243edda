"""The MLP in PyTorch: autograd on plain tensors, OptimizerSpec's rule written by hand.

No nn.Module, no DataLoader, no torch.optim (its Adam puts eps elsewhere). One training
step is three separate pieces (joelnet style):

    forward      _forward: z = a @ W + b per layer (addmm), hidden activation between
    gradients    parallel:   torch.autograd.grad of the batch loss, all layers at once
                 sequential: autograd of the output head gives dL/dz of the last layer;
                             then, layer by layer from the output back, dW = a^T d and
                             db = sum_n d, and the error goes down through the *updated*
                             W: d_prev = (d @ W_new^T) * f'(z_prev)
    update       _Optimizer.apply: in place, under no_grad, torch._foreach_* ops

Device rules (base.py, DESIGN.md "Timing rules"): the train set moves to the device once
in load(); the epoch's order moves once per epoch and batches are gathered there by
index; the epoch loss is summed on the device and read back once (or once per step with
record_steps=True). compile=True runs the step through torch.compile(fullgraph=True):
a graph break or a failing compiler raises, it never falls back to eager.

Quick use:

    from backprop_bench.model import MLPSpec, InitSpec, OptimizerSpec, init_params
    spec = MLPSpec((784, 128, 64, 10))
    tb = TorchBackend(spec, init_params(spec, InitSpec()), OptimizerSpec("momentum"))
    tb.load(x, y); tb.train_epoch(np.random.default_rng(0).permutation(len(x)), 64)
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch

from backprop_bench.backends.base import DeviceUnavailable, check_args, check_batch, cpu_name
from backprop_bench.model import DEVICES, MLPSpec, OptimizerSpec, Params, accuracy, as_targets

EVAL_CHUNK = 8192  # rows per forward pass in evaluate/predict: bounds the work memory


# ---------------------------------------------------------------- device


def resolve_device(device: str) -> str:
    """"cpu" or "cuda"; "auto" takes cuda when torch sees a GPU. No silent CPU fallback."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    if torch.version.cuda is None:
        found = "a CPU-only build (torch.version.cuda is None)"
    else:
        found = f"a CUDA {torch.version.cuda} build, but torch.cuda.is_available() is False (no GPU or driver)"
    raise DeviceUnavailable(f"device=cuda for framework=torch: torch {torch.__version__} here is {found}")


# ---------------------------------------------------------------- activations
# Each hidden activation sits beside its derivative, written from its output a = f(z)
# (relu: a > 0 iff z > 0), so the sequential step needs only the forward's activations.

HIDDEN = {
    "relu": (torch.relu, lambda a: a > 0),
    "sigmoid": (torch.sigmoid, lambda a: a * (1 - a)),
    "tanh": (torch.tanh, lambda a: 1 - a * a),
}


def output_and_loss(spec: MLPSpec, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output layer: pre-activation z (n, K) and targets t (n, K) -> (p (n, K), mean loss).

    cross_entropy works on log_softmax(z) (stable: no log of a rounded-to-0 p).
    """
    n, k = z.shape
    if spec.loss == "cross_entropy":  # -mean_n sum_k t log p
        logp = torch.log_softmax(z, dim=1)
        return logp.exp(), -(t * logp).sum() / n
    if spec.output_activation == "softmax":
        p = torch.softmax(z, dim=1)
    elif spec.output_activation == "sigmoid":
        p = torch.sigmoid(z)
    else:
        p = z
    sq = (p - t).square().sum()
    return p, (sq / (n * k) if spec.loss == "mse" else 0.5 * sq / n)  # mse | half_sse


# ---------------------------------------------------------------- optimizer


class _Optimizer:
    """OptimizerSpec's rule, in place, on a list of tensors at a time.

    apply(group, grads) updates only the tensors of that group: all trained tensors
    (parallel) or one layer's W, b (sequential). The global step t is a 0-d float64
    tensor on the device, bumped by begin_step(): no host value changes per step, so a
    compiled step is not re-specialised on t and nothing is copied to the device. It is
    kept with shape (1,): torch 2.13's inductor drops in-place updates of a 0-d float64
    CPU input (t.add_(1) inside a compiled step left t at 0).
    """

    def __init__(self, spec: OptimizerSpec, params: list[torch.Tensor], device: torch.device):
        self.spec = spec
        n_state = {"sgd": 0, "momentum": 1, "adam": 2}[spec.name]
        # momentum: [v]; adam: [m, v], one zero tensor per parameter
        self.state = {id(p): [torch.zeros_like(p) for _ in range(n_state)] for p in params}
        self.t = torch.zeros(1, dtype=torch.float64, device=device)

    def begin_step(self) -> None:
        self.t.add_(1)

    @torch.no_grad()
    def apply(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        s, lr = self.spec, float(self.spec.lr)
        if s.name == "sgd":  # p -= lr g
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        if s.name == "momentum":  # v = mu v + g; p -= lr v
            v = [self.state[id(p)][0] for p in params]
            torch._foreach_mul_(v, s.momentum)
            torch._foreach_add_(v, grads)
            torch._foreach_add_(params, v, alpha=-lr)
            return
        # adam: p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), eps outside the sqrt
        m = [self.state[id(p)][0] for p in params]
        v = [self.state[id(p)][1] for p in params]
        torch._foreach_mul_(m, s.beta1)
        torch._foreach_add_(m, grads, alpha=1.0 - s.beta1)
        torch._foreach_mul_(v, s.beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - s.beta2)
        bc1 = (1.0 - torch.pow(s.beta1, self.t))[0]  # 0-d float64 on the device
        bc2 = (1.0 - torch.pow(s.beta2, self.t))[0]
        denom = torch._foreach_div(v, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, s.eps)
        step = torch._foreach_div(m, denom)
        torch._foreach_mul_(step, lr / bc1)  # (lr / (1 - b1^t)) m / denom, as the NumPy backend
        torch._foreach_sub_(params, step)


# ---------------------------------------------------------------- the backend


class TorchBackend:
    """MLP on PyTorch tensors (cpu or cuda). See backends/base.py for the contract."""

    framework = "torch"

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
        self.device = resolve_device(device)
        self.spec, self.strategy, self.compile = spec, strategy, compile
        self.dtype = getattr(torch, dtype)
        self.record_steps = record_steps
        self.step_losses: np.ndarray | None = None
        self._dev = torch.device(self.device)
        # W (in, out), b (out,): leaves that autograd differentiates when trained
        self.W = [self._tensor(w).requires_grad_() for w, _ in init]
        self.b = [self._tensor(b).requires_grad_(spec.train_biases) for _, b in init]
        self._act, self._act_grad = HIDDEN[spec.hidden_activation]
        # what each update touches: per layer [W, b] (or [W]); parallel takes them all at once
        self._layer_params = [[w, b] if spec.train_biases else [w] for w, b in zip(self.W, self.b)]
        self._all_params = [p for group in self._layer_params for p in group]
        self.optimizer = _Optimizer(optimizer, self._all_params, self._dev)
        step = self._parallel_step if strategy == "parallel" else self._sequential_step
        self._step: Callable = _compiled(step, strategy) if compile else step
        self._x = self._t = None  # the resident train set

    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype).to(self._dev).clone()

    # ------------------------------------------------------------ data

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        """Move the train set to the device once: x (N, in), y (N,) labels or (N, K) targets."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.spec.sizes[0]:
            raise ValueError(f"x must have shape (N, {self.spec.sizes[0]}), got {x.shape}")
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self._x = torch.as_tensor(np.ascontiguousarray(x), dtype=self.dtype).to(self._dev)
        targets = as_targets(np.asarray(y), self.spec.sizes[-1], str(self.dtype).removeprefix("torch."))
        self._t = torch.as_tensor(targets, dtype=self.dtype).to(self._dev)

    # ------------------------------------------------------------ one step

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[a_0 = x, a_1, ..., a_{L-1}, z_L]: every layer's input, then the output's z."""
        acts = [x]
        for l, (w, b) in enumerate(zip(self.W, self.b)):
            z = torch.addmm(b, acts[-1], w)  # (n, out) = a (n, in) @ W (in, out) + b
            acts.append(z if l == len(self.W) - 1 else self._act(z))
        return acts

    def _parallel_step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """All gradients from the pre-step weights (one autograd pass), then every update."""
        with torch.enable_grad():
            _, loss = output_and_loss(self.spec, self._forward(x)[-1], t)
            grads = torch.autograd.grad(loss, self._all_params)
        self.optimizer.begin_step()
        self.optimizer.apply(self._all_params, list(grads))
        return loss.detach()

    def _sequential_step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Output layer first: update W[l], b[l], then send the error down through the new W[l]."""
        with torch.no_grad():
            acts = self._forward(x)  # the step's single forward pass, no graph kept
        with torch.enable_grad():  # autograd on the local head: z_L -> output -> loss
            z_out = acts[-1].requires_grad_()
            _, loss = output_and_loss(self.spec, z_out, t)
            (d,) = torch.autograd.grad(loss, z_out)  # dL/dz_L (n, K)
        self.optimizer.begin_step()
        with torch.no_grad():
            for l in range(len(self.W) - 1, -1, -1):
                a_in = acts[l]  # (n, in_l)
                grads = [a_in.T @ d, d.sum(0)] if self.spec.train_biases else [a_in.T @ d]
                self.optimizer.apply(self._layer_params[l], grads)
                if l > 0:  # dL/dz_{l-1} = (d @ W_new^T) * f'(z_{l-1}), f' read off a_l
                    d = (d @ self.W[l].T) * self._act_grad(a_in)
        return loss.detach()

    # ------------------------------------------------------------ protocol

    def train_epoch(self, order: np.ndarray, batch_size: int) -> float:
        """One pass over ``order`` in slices of ``batch_size``; sample-weighted mean batch loss."""
        order = check_batch(order, None if self._x is None else len(self._x), batch_size)
        n_total = len(order)
        idx_all = torch.as_tensor(order, dtype=torch.int64).to(self._dev)  # one copy per epoch
        total = torch.zeros((), dtype=torch.float64, device=self._dev)  # sum_b n_b * loss_b
        step_losses = []
        for start in range(0, n_total, batch_size):
            idx = idx_all[start : start + batch_size]
            loss = self._step(self._x.index_select(0, idx), self._t.index_select(0, idx))
            total.add_(loss, alpha=idx.shape[0])
            if self.record_steps:
                step_losses.append(loss.item())  # a device read per step: tests only
        if self.record_steps:
            self.step_losses = np.asarray(step_losses, dtype=np.float64)
        return total.item() / n_total  # the one read of the epoch

    @torch.inference_mode()
    def _eval_chunks(self, x: np.ndarray, y: np.ndarray | None):
        """Yield (p (n, K) on the device, summed loss of the chunk or None) per chunk."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.spec.sizes[0]:
            raise ValueError(f"x must have shape (N, {self.spec.sizes[0]}), got {x.shape}")
        dtype_name = str(self.dtype).removeprefix("torch.")
        t_all = None if y is None else as_targets(np.asarray(y), self.spec.sizes[-1], dtype_name)
        for start in range(0, len(x), EVAL_CHUNK):
            xc = torch.as_tensor(np.ascontiguousarray(x[start : start + EVAL_CHUNK]), dtype=self.dtype).to(self._dev)
            z = self._forward(xc)[-1]
            if t_all is None:
                p, _ = output_and_loss(self.spec, z, torch.zeros_like(z))
                yield p, None
            else:
                t = torch.as_tensor(t_all[start : start + EVAL_CHUNK]).to(self._dev)
                p, loss = output_and_loss(self.spec, z, t)
                yield p, loss * len(xc)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) over x, y; no update."""
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        total, probs = 0.0, []
        for p, loss_sum in self._eval_chunks(x, y):
            total += float(loss_sum)
            probs.append(p.cpu().numpy())
        return total / len(x), accuracy(np.concatenate(probs), np.asarray(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, K) output activations as NumPy, in the backend's dtype."""
        return np.concatenate([p.cpu().numpy() for p, _ in self._eval_chunks(x, None)])

    def params(self) -> Params:
        return [(w.detach().cpu().numpy().copy(), b.detach().cpu().numpy().copy()) for w, b in zip(self.W, self.b)]

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize(self._dev)

    def info(self) -> dict[str, str]:
        on_gpu = self.device == "cuda"
        return {
            "framework": "torch",
            "framework_version": torch.__version__,
            "device_name": torch.cuda.get_device_name(self._dev) if on_gpu else cpu_name(),
            "blas": f"cuBLAS (CUDA {torch.version.cuda})" if on_gpu else _torch_blas(),
            "compile": "torch.compile(inductor, fullgraph=True)" if self.compile else "eager",
        }


# ---------------------------------------------------------------- helpers


def _compiled(step: Callable, strategy: str) -> Callable:
    """torch.compile(step) that fails loudly: fullgraph=True turns a graph break into an
    error, and a compiler failure is re-raised naming the option to turn off.

    trace_autograd_ops lets dynamo trace torch.autograd.grad into the graph (off by
    default in torch 2.13, where it would be a graph break).
    """
    compiled = torch.compile(step, fullgraph=True, dynamic=False)

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True, fail_on_recompile_limit_hit=True):
                return compiled(x, t)
        except Exception as err:  # dynamo/inductor raise many types; all mean "compile failed"
            raise RuntimeError(
                f"torch.compile of the {strategy} step failed with torch {torch.__version__} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "set compile=false to run eager"
            ) from err

    return run


def _torch_blas() -> str:
    """torch's own BLAS (linked statically, so threadpoolctl cannot see it), e.g.
    'mkl 2024.2 (torch BLAS_INFO), 2 threads'."""
    config = torch.__config__.show()
    name = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    version = f" {mkl.group(1)}" if mkl and name and name.group(1) == "mkl" else ""
    return f"{name.group(1) if name else 'unknown'}{version}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- benchmark hooks
# The benchmark measures torch's own matmul peak beside the backends; it reaches torch
# only through here, so nothing outside backends/ imports a framework.


def matmul_call(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    """A zero-argument call computing out = a @ b with torch.mm on the NumPy buffers (no copy).

    NumPy's transposed views (a.T of a C-contiguous array) stay transposed views in torch.
    """

    def view(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(arr) if arr.flags.c_contiguous else torch.from_numpy(arr.T).T

    ta, tb, tout = view(a), view(b), torch.from_numpy(out)
    return lambda: torch.mm(ta, tb, out=tout)


def num_threads() -> int:
    return torch.get_num_threads()
