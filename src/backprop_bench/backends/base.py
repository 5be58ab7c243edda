"""The one base class every backend extends: it owns the plumbing, a framework its math.

A framework module implements the hooks under "what a framework writes" (device, set-up,
the epoch of steps, a forward pass for evaluation, the weights back as NumPy); this class
does the argument checks, loading, the epoch loss, step recording, chunked
evaluate/predict and ``info()``. The contract is written out in docs/backends.md.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from backprop_bench.core.checks import check, check_choice
from backprop_bench.core.specs import (
    DEVICES,
    DTYPES,
    NO_REGULARIZATION,
    STRATEGIES,
    MLPSpec,
    OptimizerSpec,
    Params,
    Regularization,
    accuracy,
    as_targets,
)

# (forward, forward_backward, step): Backend.phase_fns's zero-argument calls, each returning what wait() blocks on
PhaseFns = tuple[Callable[[], object], Callable[[], object], Callable[[], object]]


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used by this backend here. The trainer skips the run."""


class Backend:
    """One framework's MLP. Shapes: x (N, in), y (N,) labels or (N, K) targets, W (in, out)."""

    framework = ""  # "numpy", "torch", "tensorflow", "keras"
    compile_mode = ""  # what compile=True means here ("" = the backend has no fast mode)
    EVAL_CHUNK = 4096  # rows per forward pass in evaluate/predict: bounds the work memory

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
        record_steps: bool = False,
        regularization: Regularization = NO_REGULARIZATION,
    ) -> None:
        check_args(self.framework, spec, init, strategy, dtype, device)
        if compile and not self.compile_mode:
            raise ValueError(f"compile=True has no meaning for framework={self.framework}")
        n_hidden = spec.n_layers - 1
        check(
            len(regularization.dropout) in (0, n_hidden),
            "regularizer.dropout",
            list(regularization.dropout),
            f"needs one rate per hidden layer ({n_hidden})",
        )
        self.spec, self.opt_spec, self.strategy, self.dtype = spec, optimizer, strategy, dtype
        self.reg = regularization
        self.lr = float(optimizer.lr)  # the learning rate in effect: set_lr changes it between epochs
        self.compile, self.record_steps = compile, record_steps
        self.step_losses: np.ndarray | None = None  # (n_steps,) float64 of the last epoch, if recorded
        self.n_loaded: int | None = None
        self.device = self._resolve_device(device)
        self._setup(init)

    # ------------------------------------------------------------ what a framework writes

    def _resolve_device(self, device: str) -> str:
        """ "cpu" or "cuda"; "auto" takes cuda when usable. cuda without a GPU: DeviceUnavailable."""
        raise NotImplementedError

    def _setup(self, init: Params) -> None:
        """Make the parameters (from init, in self.dtype, on self.device) and optimizer state."""
        raise NotImplementedError

    def _load(self, x: np.ndarray, t: np.ndarray) -> None:
        """Keep x (N, in) and targets t (N, K), both in self.dtype, resident on the device."""
        raise NotImplementedError

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        """One optimizer step per slice of order; the (n_steps,) pre-update batch losses
        (data loss + penalty), read back from the device once. masks: None, or per hidden
        layer (len(order), hidden_l) in self.dtype, sliced like order (Regularization)."""
        raise NotImplementedError

    def _set_lr(self, lr: float) -> None:
        """Make the optimizer use lr from the next step on."""
        raise NotImplementedError

    def _assign(self, params: Params) -> None:
        """Overwrite every W and b with params (NumPy, self.dtype); optimizer state untouched."""
        raise NotImplementedError

    def _reset_optimizer(self) -> None:
        """Optimizer state back to a new one's: step 0, zero slots (the lr is set by restart)."""
        raise NotImplementedError

    def _outputs(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        """(output activations (n, K) as NumPy, summed loss over the n rows or nan when t is None)."""
        raise NotImplementedError

    def params(self) -> Params:
        """Current (W, b) of every layer, copied back to NumPy."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Block until queued device work is done, so a clock read after it is honest."""

    def _info(self) -> dict[str, str]:
        """framework_version, device_name, blas (and anything else worth a tag)."""
        raise NotImplementedError

    def _phase_fns(self, x_rows: np.ndarray) -> PhaseFns:
        """phase_fns's calls on the loaded rows x_rows (B,) int64, gathered onto the device once, here."""
        raise NotImplementedError(f"framework={self.framework} ({type(self).__name__}) has no phase functions")

    def wait(self, out: object) -> None:
        """Block until the work behind out (the last value a phase function returned) is done."""
        self.synchronize()

    # ------------------------------------------------------------ native mode (docs/native.md)
    # Class-level: the trainer asks for the weights and the orders before any backend exists.

    @classmethod
    def native_init(cls, spec: MLPSpec, seed: int, dtype: str) -> Params:
        """The framework's own default initial weights for spec, as NumPy [(W (in, out), b (out,))]
        in dtype: drawn from the framework's own RNG seeded with seed, deterministic, and without
        touching any global RNG state."""
        raise NotImplementedError

    @classmethod
    def native_orders(cls, n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
        """One permutation of range(n) per epoch (int64 NumPy), made by the framework's own
        shuffling machinery seeded with seed: deterministic, no global RNG state touched."""
        raise NotImplementedError

    # ------------------------------------------------------------ the protocol, shared

    def load(self, x: np.ndarray, y: np.ndarray) -> None:
        """Move the train set to the device once."""
        x = self._check_x(x)
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self._load(np.ascontiguousarray(x, dtype=self.dtype), self._targets(y))
        self.n_loaded = len(x)

    def train_epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None = None) -> float:
        """Walk order in slices of batch_size (the last may be short), one step each; returns
        the sample-weighted mean of the pre-update batch losses. masks: the epoch's dropout
        masks (core.specs.dropout_masks), required exactly when the regularization has dropout."""
        order = check_batch(order, self.n_loaded, batch_size)
        masks = self._check_masks(masks, len(order))
        losses = np.asarray(self._epoch(order, batch_size, masks), dtype=np.float64)
        self.step_losses = losses if self.record_steps else None
        return epoch_loss(losses, len(order), batch_size)

    def phase_fns(self, rows: np.ndarray) -> PhaseFns:
        """Where a step's time goes (bench/phases.py): (forward, forward_backward, step), zero-argument
        calls on one fixed batch, the loaded rows `rows` (B,), selected once before any call.

        forward: the forward pass and the loss; forward_backward: that and every gradient, no update;
        step: one whole optimizer step (the weights change), as train_epoch runs it but for selecting its
        batch. Each runs the way this mode runs its step (compiled where the mode compiles). Parallel
        strategy only: the sequential one interleaves the backward pass and the updates."""
        check(self.strategy == "parallel", "strategy", self.strategy, "has no separate phases (parallel only)")
        rows = check_batch(rows, self.n_loaded, max(len(rows), 1))
        return self._phase_fns(rows)

    def set_lr(self, lr: float) -> None:
        """The learning rate for the next steps (a schedule calls this between epochs)."""
        check(math.isfinite(lr) and lr > 0, "learning rate", lr, "must be a finite number > 0")
        self.lr = float(lr)
        self._set_lr(self.lr)

    def restart(self, init: Params) -> None:
        """Start over from init exactly as a new backend would (weights, optimizer state, lr),
        keeping what is costly to build: traced or compiled steps and the loaded data. The
        study reuses one backend per strategy this way (TensorFlow would otherwise retrace)."""
        self.set_params(init)
        self._reset_optimizer()
        self.set_lr(self.opt_spec.lr)
        self.step_losses = None

    def set_params(self, params: Params) -> None:
        """Overwrite the weights, e.g. with the best epoch's (early stopping's restore)."""
        check_params(self.spec, params, "params")
        self._assign([(np.asarray(w, self.dtype), np.asarray(b, self.dtype)) for w, b in params])

    def _check_masks(self, masks: list[np.ndarray] | None, n: int) -> list[np.ndarray] | None:
        if masks is None:
            if self.reg.has_dropout:
                raise ValueError("regularizer.dropout is set: train_epoch needs the epoch's masks (dropout_masks)")
            return None
        if not self.reg.has_dropout:
            raise ValueError("train_epoch got dropout masks, but the regularization has no dropout")
        widths = self.spec.sizes[1:-1]
        if len(masks) != len(widths) or any(np.shape(m) != (n, w) for m, w in zip(masks, widths)):
            got = [np.shape(m) for m in masks]
            raise ValueError(f"dropout masks must be one (N={n}, hidden) array per hidden layer {widths}, got {got}")
        return [np.ascontiguousarray(m, dtype=self.dtype) for m in masks]

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) over x, y; no update."""
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        probs, loss_sum = self._chunked(x, self._targets(y))
        return loss_sum / len(x), accuracy(probs, np.asarray(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, K) output activations (class probabilities for softmax) as NumPy."""
        return self._chunked(x, None)[0]

    def info(self) -> dict[str, str]:
        """Versions and hardware for run tags."""
        return {"framework": self.framework, "compile": self.compile_mode if self.compile else "off", **self._info()}

    def _chunked(self, x: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, float]:
        x = self._check_x(x)
        probs, total = [], 0.0
        for start in range(0, len(x), self.EVAL_CHUNK):
            rows = slice(start, start + self.EVAL_CHUNK)
            p, loss_sum = self._outputs(np.ascontiguousarray(x[rows], dtype=self.dtype), None if t is None else t[rows])
            probs.append(p)
            total += float(loss_sum)
        return np.concatenate(probs), total

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.spec.sizes[0]:
            raise ValueError(f"x must have shape (N, {self.spec.sizes[0]}), got {x.shape}")
        return x

    def _targets(self, y: np.ndarray) -> np.ndarray:
        return as_targets(np.asarray(y), self.spec.sizes[-1], self.dtype)


# ---------------------------------------------------------------- shared helpers


def check_args(framework: str, spec: MLPSpec, init: Params, strategy: str, dtype: str, device: str) -> None:
    """The constructor checks: reject what a backend does not have, and name the option."""
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("train.dtype", dtype, DTYPES)
    check_choice("device", device, DEVICES)
    check_params(spec, init, "init")


def check_params(spec: MLPSpec, params: Params, name: str) -> None:
    """One (W (in, out), b (out,)) per layer of spec; the error names `name` and the layer."""
    if len(params) != spec.n_layers:
        raise ValueError(f"{name} has {len(params)} layers, model.sizes {list(spec.sizes)} needs {spec.n_layers}")
    for layer, ((i, o), (w, b)) in enumerate(zip(spec.shapes(), params)):
        if np.shape(w) != (i, o) or np.shape(b) != (o,):
            raise ValueError(
                f"{name} layer {layer}: W must be ({i}, {o}) and b ({o},), got {np.shape(w)} and {np.shape(b)}"
            )


def as_params(layers: Iterable[tuple], dtype: str) -> Params:
    """[(W, b)] in any array type NumPy reads -> C-contiguous NumPy arrays in dtype (native_init's return)."""
    check_choice("train.dtype", dtype, DTYPES)
    return [(np.ascontiguousarray(w, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)) for w, b in layers]


def check_batch(order: np.ndarray, n_loaded: int | None, batch_size: int) -> np.ndarray:
    """Validate train_epoch's arguments; returns order as int64. n_loaded is None before load()."""
    if n_loaded is None:
        raise RuntimeError("train_epoch() before load(x, y): call load(x, y) first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.asarray(order)
    if order.ndim != 1 or order.size == 0 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"order must be a non-empty 1-D integer array, got {order.dtype} {order.shape}")
    if order.min() < 0 or order.max() >= n_loaded:
        raise ValueError(
            f"order holds indices outside [0, {n_loaded}): {order.min()}..{order.max()}; "
            f"it must hold indices into the {n_loaded} loaded samples"
        )
    return order.astype(np.int64)


def epoch_loss(step_losses: np.ndarray, n_samples: int, batch_size: int) -> float:
    """Sample-weighted mean of the per-step losses: every step holds batch_size but the last."""
    sizes = np.full(len(step_losses), batch_size, dtype=np.float64)
    sizes[-1] = n_samples - batch_size * (len(step_losses) - 1)
    return float(np.dot(step_losses, sizes) / n_samples)


def timed_epoch(
    backend: Backend, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None = None
) -> tuple[float, float]:
    """(epoch loss, seconds): the one clock rule of the trainer and the bench.

    Only train_epoch sits between the two clock reads, each after synchronize(); garbage
    collection is off in between (as timeit does), so a collection never lands in one epoch.
    """
    gc.disable()
    try:
        backend.synchronize()
        start = time.perf_counter()
        loss = backend.train_epoch(order, batch_size, masks)
        backend.synchronize()
        return float(loss), time.perf_counter() - start
    finally:
        gc.enable()


def n_steps(n_samples: int, batch_size: int) -> int:
    return -(-n_samples // batch_size)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one: taskset, cgroups)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU model, for the device_name tag of CPU runs (e.g. 'AMD EPYC 9R14')."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
