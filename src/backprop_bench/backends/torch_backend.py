"""The MLP in PyTorch: autograd on plain tensors, OptimizerSpec's rule written by hand.

No nn.Module, DataLoader or torch.optim (its Adam puts eps elsewhere). A step is three
pieces: ``_forward`` (addmm per layer), the gradients (parallel: one autograd pass over
the batch loss; sequential: autograd of the output head, then dW = a^T d layer by layer
with the error sent down through the *updated* W), and ``Optimizer.apply``.
compile=True runs the step through torch.compile(fullgraph=True), never falling back to eager.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator

import numpy as np
import torch

from backprop_bench.backends.base import Backend, DeviceUnavailable, PhaseFns, as_params, cpu_name, n_steps
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params

# Each hidden activation beside its derivative, written from its output a = f(z)
# (relu: a > 0 iff z > 0), so the sequential step needs only the forward's activations.
HIDDEN = {
    "relu": (torch.relu, lambda a: a > 0),
    "sigmoid": (torch.sigmoid, lambda a: a * (1 - a)),
    "tanh": (torch.tanh, lambda a: 1 - a * a),
}


def resolve_device(device: str, framework: str = "torch") -> str:
    """ "cpu" or "cuda"; "auto" takes cuda when torch sees a GPU. No silent CPU fallback."""
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
    raise DeviceUnavailable(f"device=cuda for framework={framework}: torch {torch.__version__} here is {found}")


def output_and_loss(spec: MLPSpec, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output layer: z, t (n, K) -> (p (n, K), mean loss). cross_entropy uses log_softmax (stable)."""
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


class Optimizer:
    """OptimizerSpec's rule, in place, on a list of tensors at a time (torch._foreach_* ops).

    The global step t and the learning rate in effect are (1,) float64 tensors on the
    device: no host value changes per step or per set_lr, so a compiled step is not
    re-specialised on them. Not 0-d: torch 2.13's inductor drops in-place updates of a 0-d
    float64 CPU input.
    """

    def __init__(self, spec: OptimizerSpec, params: list[torch.Tensor], device: torch.device):
        self.spec = spec
        # momentum: [v]; adam: [m, v]; rmsprop: [v]
        self.state = {id(p): [torch.zeros_like(p) for _ in range(spec.n_slots)] for p in params}
        self.t = torch.zeros(1, dtype=torch.float64, device=device)
        self.lr = torch.full((1,), spec.lr, dtype=torch.float64, device=device)

    def begin_step(self) -> None:
        self.t.add_(1)

    @torch.no_grad()
    def reset(self) -> None:
        """Back to step 0 with zero state, in place (a compiled step keeps reading the same tensors)."""
        self.t.zero_()
        for tensors in self.state.values():
            torch._foreach_zero_(tensors)

    @torch.no_grad()
    def apply(self, params: list[torch.Tensor], grads: list[torch.Tensor], weights: list[bool]) -> None:
        """weights[i]: params[i] is a W (AdamW decays those only)."""
        s, lr = self.spec, self.lr[0]  # lr: 0-d float64; products stay in the params' dtype
        if s.name == "sgd":  # p -= lr g
            torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
            return
        state = [self.state[id(p)] for p in params]
        if s.name == "momentum":  # v = mu v + g; p -= lr v
            v = [st[0] for st in state]
            torch._foreach_mul_(v, s.momentum)
            torch._foreach_add_(v, grads)
            torch._foreach_sub_(params, torch._foreach_mul(v, lr))
            return
        if s.name == "rmsprop":  # v = rho v + (1 - rho) g^2; p -= lr g / (sqrt(v) + eps)
            v = [st[0] for st in state]
            torch._foreach_mul_(v, s.rho)
            torch._foreach_addcmul_(v, grads, grads, value=1.0 - s.rho)
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, s.eps)
            step = torch._foreach_mul(grads, lr)
            torch._foreach_div_(step, denom)
            torch._foreach_sub_(params, step)
            return
        if s.weight_decay:  # AdamW: W -= lr wd W, before the Adam step
            decayed = [p for p, w in zip(params, weights) if w]
            torch._foreach_sub_(decayed, torch._foreach_mul(decayed, lr * s.weight_decay))
        m, v = [st[0] for st in state], [st[1] for st in state]  # adam, eps outside the sqrt
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


class TorchBackend(Backend):
    """MLP on PyTorch tensors (cpu or cuda)."""

    framework = "torch"
    compile_mode = "torch.compile(inductor, fullgraph=True)"
    EVAL_CHUNK = 8192

    def _resolve_device(self, device: str) -> str:
        return resolve_device(device, self.framework)

    def _setup(self, init: Params) -> None:
        self._dev, self._dtype = torch.device(self.device), getattr(torch, self.dtype)
        # W (in, out), b (out,): leaves that autograd differentiates when trained
        self.W = [self._tensor(w).requires_grad_() for w, _ in init]
        self.b = [self._tensor(b).requires_grad_(self.spec.train_biases) for _, b in init]
        self._setup_step()

    def _setup_step(self) -> None:
        """The activation, the update groups, the optimizer and the step, over self.W and self.b."""
        self._act, self._act_grad = HIDDEN[self.spec.hidden_activation]
        # what each update touches: per layer [W, b] (or [W]); parallel takes them all at once
        self._layer_params = [[w, b] if self.spec.train_biases else [w] for w, b in zip(self.W, self.b)]
        self._all_params = [p for group in self._layer_params for p in group]
        self._is_weight = [[True, False][: len(group)] for group in self._layer_params]  # AdamW decays W only
        self._all_is_weight = [w for flags in self._is_weight for w in flags]
        self.optimizer = Optimizer(self.opt_spec, self._all_params, self._dev)
        step = self._parallel_step if self.strategy == "parallel" else self._sequential_step
        self._step: Callable = compiled(step, self.strategy) if self.compile else step

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self._dtype).to(self._dev).clone()

    def _load(self, x: np.ndarray, t: np.ndarray) -> None:
        self._x, self._t = torch.as_tensor(x).to(self._dev), torch.as_tensor(t).to(self._dev)  # never written

    # ------------------------------------------------------------ one step

    def _forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> tuple[list, list]:
        """(acts, hs): acts = [a_0 = x, a_1, ..., a_{L-1}, z_L], every layer's input (hidden ones
        after their dropout mask), then the output's z; hs[l] = f(z_l) before the mask."""
        acts, hs = [x], [x]
        for l, (w, b) in enumerate(zip(self.W, self.b)):
            z = torch.addmm(b, acts[-1], w)  # (n, out) = a (n, in) @ W (in, out) + b
            if l == len(self.W) - 1:
                acts.append(z)
                break
            hs.append(self._act(z))
            acts.append(hs[-1] if masks is None else hs[-1] * masks[l])
        return acts, hs

    def _penalty(self) -> torch.Tensor:
        """l1 sum |W| + l2 sum W^2 (Regularization); 0-d, differentiable."""
        r = self.reg
        return sum(r.l1 * w.abs().sum() + r.l2 * w.square().sum() for w in self.W)

    def _loss(self, z_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The training loss: data loss, plus the penalty when there is one."""
        loss = output_and_loss(self.spec, z_out, t)[1]
        return loss + self._penalty() if self.reg.has_penalty else loss

    def _gradients(self, x: torch.Tensor, t: torch.Tensor, masks: list[torch.Tensor] | None) -> tuple:
        """(the training loss (0-d, detached), dL/dp for every trained p): one autograd pass."""
        with torch.enable_grad():
            loss = self._loss(self._forward(x, masks)[0][-1], t)
            return loss.detach(), torch.autograd.grad(loss, self._all_params)

    def _train_loss(self, x: torch.Tensor, t: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """The step's forward pass and loss, autograd recording as in the step (eager), detached."""
        with torch.enable_grad():
            return self._loss(self._forward(x, masks)[0][-1], t).detach()

    def _parallel_step(self, x: torch.Tensor, t: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """All gradients from the pre-step weights (one autograd pass), then every update."""
        loss, grads = self._gradients(x, t, masks)
        self.optimizer.begin_step()
        self.optimizer.apply(self._all_params, list(grads), self._all_is_weight)
        return loss

    def _sequential_step(self, x: torch.Tensor, t: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """Output layer first: update W[l], b[l], then send the error down through the new W[l]."""
        r = self.reg
        with torch.no_grad():
            acts, hs = self._forward(x, masks)  # the step's single forward pass, no graph kept
            penalty = self._penalty() if r.has_penalty else 0.0  # at the pre-step weights
        # dL/dz_L (n, K) and the loss, by autograd on the local head z_L -> output -> loss
        # (torch.func, not z.requires_grad_(): torch.compile of torch 2.11 refuses that call)
        d, loss = torch.func.grad_and_value(lambda z: output_and_loss(self.spec, z, t)[1])(acts[-1])
        self.optimizer.begin_step()
        with torch.no_grad():
            for l in range(len(self.W) - 1, -1, -1):
                a_in, w = acts[l], self.W[l]  # (n, in_l)
                dw = a_in.T @ d
                if r.has_penalty:  # at W[l] before its update
                    dw = dw + r.l1 * torch.sign(w) + (2 * r.l2) * w
                grads = [dw, d.sum(0)] if self.spec.train_biases else [dw]
                self.optimizer.apply(self._layer_params[l], grads, self._is_weight[l])
                if l > 0:  # dL/dz_{l-1} = (d @ W_new^T) * m_{l-1} * f'(z_{l-1}), f' read off f(z_{l-1})
                    up = d @ w.T
                    d = (up if masks is None else up * masks[l - 1]) * self._act_grad(hs[l])
        return (loss + penalty).detach()

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        idx_all = torch.as_tensor(order).to(self._dev)  # one copy per epoch; batches picked on the device
        masks_dev = None if masks is None else [torch.as_tensor(m).to(self._dev) for m in masks]
        losses = torch.empty(n_steps(len(order), batch_size), dtype=self._dtype, device=self._dev)
        for step, start in enumerate(range(0, len(order), batch_size)):
            idx, rows = idx_all[start : start + batch_size], slice(start, start + batch_size)
            batch_masks = None if masks_dev is None else [m[rows] for m in masks_dev]
            losses[step] = self._step(self._x.index_select(0, idx), self._t.index_select(0, idx), batch_masks)
        return losses.cpu().numpy()  # the one read of the epoch

    def _phase_fns(self, x_rows: np.ndarray) -> PhaseFns:
        """forward: _train_loss; forward_backward: _gradients; step: _phase_step. With compile=True
        the first two are torch.compile'd each on its own, as the step is."""
        idx = torch.as_tensor(x_rows).to(self._dev)
        x, t = self._x.index_select(0, idx), self._t.index_select(0, idx)
        forward, gradients = self._train_loss, self._gradients
        if self.compile:
            forward, gradients = compiled(forward, "forward-only"), compiled(gradients, "forward+backward")
        return lambda: forward(x, t, None), lambda: gradients(x, t, None)[0], self._phase_step(x, t)

    def _phase_step(self, x: torch.Tensor, t: torch.Tensor) -> Callable[[], object]:
        """One whole step on the batch: the step _epoch calls."""
        return lambda: self._step(x, t, None)

    def _set_lr(self, lr: float) -> None:
        self.optimizer.lr.fill_(lr)

    def _reset_optimizer(self) -> None:
        self.optimizer.reset()

    @torch.no_grad()
    def _assign(self, params: Params) -> None:
        for w, b, (w_new, b_new) in zip(self.W, self.b, params):
            w.copy_(torch.as_tensor(w_new)), b.copy_(torch.as_tensor(b_new))

    # ------------------------------------------------------------ evaluation and state

    @torch.inference_mode()
    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        z = self._forward(torch.as_tensor(x).to(self._dev))[0][-1]
        p, loss = output_and_loss(self.spec, z, torch.zeros_like(z) if t is None else torch.as_tensor(t).to(self._dev))
        return p.cpu().numpy(), float("nan") if t is None else float(loss * len(x))

    def params(self) -> Params:
        return [(w.detach().cpu().numpy().copy(), b.detach().cpu().numpy().copy()) for w, b in zip(self.W, self.b)]

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize(self._dev)

    # ------------------------------------------------------------ native mode (docs/native.md)
    # A local torch.Generator replaces torch.manual_seed: same stream, no global state touched.

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        """nn.Linear(in, out)'s reset_parameters, layer by layer from one generator seeded with seed:
        kaiming_uniform_(a=sqrt(5)) on the (out, in) weight, i.e. U(-1/sqrt(in), 1/sqrt(in)), then the
        bias from the same U. Drawn in float32 (torch's default dtype, cast to dtype as .double() would):
        the weights of Linear layers built after torch.manual_seed(seed), W transposed to (in, out)."""
        g, f32 = torch.Generator().manual_seed(seed), torch.float32
        layers = []
        for fan_in, fan_out in spec.shapes():
            w = torch.nn.init.kaiming_uniform_(torch.empty(fan_out, fan_in, dtype=f32), a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(fan_in)
            b = torch.nn.init.uniform_(torch.empty(fan_out, dtype=f32), -bound, bound, generator=g)
            layers.append((w.T.numpy(), b.numpy()))
        return as_params(layers, dtype)

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        """The order of DataLoader(data, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        epoch by epoch: each iter() draws the workers' base seed from g (even with no workers), then
        RandomSampler yields torch.randperm(n, generator=g) and, once exhausted, draws one more
        randperm(n) for its empty tail. All three draws are made here, so the stream stays in step."""
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            torch.empty((), dtype=torch.int64).random_(generator=g)  # _BaseDataLoaderIter's base seed
            order = torch.randperm(n, generator=g)
            torch.randperm(n, generator=g)  # RandomSampler's tail, randperm(n)[: num_samples % n] = []
            yield order.numpy().astype(np.int64)

    def _info(self) -> dict[str, str]:
        on_gpu = self.device == "cuda"
        return {
            "framework_version": torch.__version__,
            "device_name": torch.cuda.get_device_name(self._dev) if on_gpu else cpu_name(),
            "blas": f"cuBLAS (CUDA {torch.version.cuda})" if on_gpu else torch_blas(),
        }


def compiled(step: Callable, strategy: str) -> Callable:
    """torch.compile(step) that fails loudly: fullgraph=True turns a graph break into an
    error, and a compiler failure is re-raised naming the option to turn off.
    trace_autograd_ops lets dynamo trace torch.autograd.grad into the graph."""
    compiled_step = torch.compile(step, fullgraph=True, dynamic=False)

    def run(x: torch.Tensor, t: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True, fail_on_recompile_limit_hit=True):
                return compiled_step(x, t, masks)
        except Exception as err:  # dynamo/inductor raise many types; all mean "compile failed"
            first = str(err).splitlines()[0] if str(err) else ""
            raise RuntimeError(
                f"torch.compile of the {strategy} step failed with torch {torch.__version__} "
                f"({type(err).__name__}: {first}); set compile=false to run eager"
            ) from err

    return run


def torch_blas() -> str:
    """torch's own BLAS (linked statically, invisible to threadpoolctl), e.g. 'mkl 2024.2, 2 threads'."""
    config = torch.__config__.show()
    name = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    version = f" {mkl.group(1)}" if mkl and name and name.group(1) == "mkl" else ""
    return f"{name.group(1) if name else 'unknown'}{version}, {torch.get_num_threads()} threads"
