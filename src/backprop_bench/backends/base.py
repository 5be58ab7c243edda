"""The one small protocol every framework implements.

A backend owns the math and its device, nothing else: the trainer owns seeding, the
batch order, epochs, timing and logging. Backends never see Hydra or MLflow.

Shared contract (every backend, both strategies):

- ``load(x, y)`` moves the train set to the device once. x is (N, in) float; y is (N,)
  int labels (one-hot encoded to the output width) or (N, out) float targets.
- ``train_epoch(order, batch_size)`` walks ``order`` (a permutation of range(N), made by
  the trainer) in consecutive slices of ``batch_size``; the last batch may be short.
  Each slice is one optimizer step. It returns the sample-weighted mean of the batch
  losses, each measured before that batch's update, read back from the device once.
  With ``record_steps=True`` the per-step losses are kept in ``step_losses`` (a float64
  NumPy array, one entry per step of the last epoch); this is for tests and costs a
  device read per step, so it is off by default.
- Strategies (see DESIGN.md):
    parallel:   all gradients from the pre-step weights, then every layer is updated.
    sequential: from the output layer back, update layer l as soon as its gradient is
                known, then send the error to layer l-1 through the *updated* W[l].
                Activations are those of the step's single forward pass.
- The optimizer rule is OptimizerSpec's docstring, exactly.
- ``device``: "cpu", "cuda" or "auto". "cuda" with no GPU raises DeviceUnavailable,
  never a silent CPU run.
"""

from __future__ import annotations

import platform
from typing import Protocol

import numpy as np

from backprop_bench.model import DTYPES, STRATEGIES, MLPSpec, OptimizerSpec, Params, _check_choice


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used by this backend here. The trainer skips the run."""


class Backend(Protocol):
    framework: str  # "numpy", "torch", "tensorflow", "keras"
    device: str  # the resolved device: "cpu" or "cuda"

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
    ) -> None: ...

    step_losses: np.ndarray | None

    def load(self, x: np.ndarray, y: np.ndarray) -> None: ...

    def train_epoch(self, order: np.ndarray, batch_size: int) -> float: ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) over x, y; no update."""
        ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, out) output activations (class probabilities for softmax), as NumPy."""
        ...

    def params(self) -> Params:
        """Current (W, b) of every layer, copied back to NumPy."""
        ...

    def synchronize(self) -> None:
        """Block until queued device work is done, so a clock read after it is honest."""
        ...

    def info(self) -> dict[str, str]:
        """Versions and hardware for tags: framework_version, device_name, blas, ..."""
        ...


def check_args(
    framework: str,
    spec: MLPSpec,
    init: Params,
    strategy: str,
    dtype: str,
    compile: bool,
    steps_per_execution: int,
) -> None:
    """The constructor checks every backend shares: reject what a backend does not have,
    instead of ignoring it, and name the option."""
    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("train.dtype", dtype, DTYPES)
    if steps_per_execution < 1:
        raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
    if steps_per_execution != 1 and framework != "keras":
        raise ValueError(
            f"steps_per_execution={steps_per_execution} is a Keras option; framework={framework} takes 1"
        )
    if compile and framework == "numpy":
        raise ValueError("compile=True has no meaning for framework=numpy (there is nothing to compile)")
    if len(init) != spec.n_layers:
        raise ValueError(f"init has {len(init)} layers, model.sizes {list(spec.sizes)} needs {spec.n_layers}")
    for layer, ((i, o), (w, b)) in enumerate(zip(spec.shapes(), init)):
        if np.shape(w) != (i, o) or np.shape(b) != (o,):
            raise ValueError(
                f"init layer {layer}: W must be ({i}, {o}) and b ({o},), got {np.shape(w)} and {np.shape(b)}"
            )


def check_batch(order: np.ndarray, n_loaded: int | None, batch_size: int) -> np.ndarray:
    """Validate train_epoch's arguments, the same way in every backend; returns order as int64.

    n_loaded is the number of loaded train samples, None before load().
    """
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
