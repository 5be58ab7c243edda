"""Keras 3 on PyTorch: a keras.Model of Dense layers trained with compile/fit, around the torch backend's math.

fit() owns the loop (its DataLoader-driven batching, callbacks). The model's train_step(data)
runs torch_backend.py's step (TorchBackend's parallel or sequential step and its Optimizer,
in place, under its own autograd calls) on the Dense layers' parameters: on Keras's torch
backend a keras Variable's value is a torch.nn.Parameter, the very tensor the step updates.
Keras adds its layers, variables and loop, the math is the `torch` framework's, so a paired
comparison of the two measures what Keras costs. Each step writes its pre-update loss into a
device tensor read once per epoch, as TorchBackend does (reading fit's per-step logs would sync
per step). The shared order reaches fit as pre-permuted data (gathered on the device),
shuffle=False; dropout masks ride along as extra inputs (_keras_common.fit_epoch).
Keras on torch runs one step per call: steps_per_execution must be 1.
"""

from __future__ import annotations

from collections.abc import Callable

from backprop_bench.backends import _keras_common as kc

kc.load_keras("keras-torch")  # Keras on its backend, before anything else imports keras

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from backprop_bench.backends import torch_backend as tb  # noqa: E402
from backprop_bench.backends.base import n_steps  # noqa: E402
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Params  # noqa: E402


class _MLP(keras.Model):
    """Dense layers (built, holding the weights) and a train_step that runs the backend's step on them."""

    def __init__(self, spec: MLPSpec, dtype: str) -> None:
        super().__init__(dtype=dtype, name="mlp")
        self.dense = [keras.layers.Dense(o, dtype=dtype, name=f"dense_{i}") for i, (_, o) in enumerate(spec.shapes())]
        for layer, (n_in, _) in zip(self.dense, spec.shapes()):
            layer.build((None, n_in))
        self.built = True
        self.step_fn: Callable | None = None  # (x, t, masks) -> the pre-update loss (0-d)
        self.predict_fn: Callable | None = None  # x -> output activations, for call()
        self.loss_buffer: torch.Tensor | None = None  # (n_steps,) pre-update loss of each step of the epoch
        self.step_index = 0  # next slot in loss_buffer

    def call(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_fn(x)

    def train_step(self, data: tuple) -> dict[str, torch.Tensor]:
        inputs, t = data  # inputs: x (B, in), or (x, mask per hidden layer (B, hidden_l)) with dropout
        x, masks = kc.split_inputs(inputs)
        loss = self.step_fn(x, t, masks)
        self.loss_buffer[self.step_index] = loss
        self.step_index += 1
        return {"loss": loss}  # the raw step loss (Keras would log a running mean)


class KerasTorchBackend(kc.KerasNative, tb.TorchBackend):
    """TorchBackend's step math and plumbing, its W and b the Keras Dense layers' parameters, driven by fit()."""

    framework = "keras-torch"
    compile_mode = ""  # Keras's jit_compile on torch (torch.compile with graph breaks) is not offered here

    def __init__(
        self, spec: MLPSpec, init: Params, optimizer: OptimizerSpec, *, steps_per_execution: int = 1, **options
    ) -> None:
        if kc.check_steps_per_execution(steps_per_execution) != 1:
            raise ValueError(
                f"framework.steps_per_execution={steps_per_execution}: Keras's torch backend runs one step "
                "per call and takes 1 (keras and keras-jax take more)"
            )
        self.steps_per_execution = 1
        super().__init__(spec, init, optimizer, **options)

    def _setup(self, init: Params) -> None:
        self._dev, self._dtype = torch.device(self.device), getattr(torch, self.dtype)
        with keras.device(self.device):
            self.model = _MLP(self.spec, self.dtype)
        for layer, (w, b) in zip(self.model.dense, init):
            layer.kernel.assign(np.asarray(w, self.dtype))  # (in, out), as Keras and TorchBackend store it
            layer.bias.assign(np.asarray(b, self.dtype))
        # the Parameters behind the Keras variables: TorchBackend's step reads and updates them in place
        self.W = [layer.kernel.value for layer in self.model.dense]
        self.b = [layer.bias.value.requires_grad_(self.spec.train_biases) for layer in self.model.dense]
        self._setup_step()
        self.model.step_fn = self._step
        self.model.predict_fn = self._predict
        self.model.compile(optimizer=None, jit_compile=False, steps_per_execution=1)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self._forward(x)[0][-1]
        return tb.output_and_loss(self.spec, z, torch.zeros_like(z))[0]

    def _phase_step(self, x: torch.Tensor, t: torch.Tensor) -> Callable[[], object]:
        """One train_step of the model, eager, as fit's train function calls it (fit's loop, data
        adapter and callbacks are left out: the bench reports them in the rest)."""
        self.model.loss_buffer = torch.empty(1, dtype=self._dtype, device=self._dev)

        def step() -> torch.Tensor:
            self.model.step_index = 0  # one slot, reused: the buffer is the epoch's, not the phases'
            return self.model.train_step((x, t))["loss"]

        return step

    def _epoch(self, order: np.ndarray, batch_size: int, masks: list[np.ndarray] | None) -> np.ndarray:
        idx = torch.as_tensor(order).to(self._dev)  # one copy per epoch; the rows are gathered on the device
        x, t = self._x.index_select(0, idx), self._t.index_select(0, idx)
        masks = None if masks is None else [torch.as_tensor(m).to(self._dev) for m in masks]  # per position already
        self.model.loss_buffer = torch.empty(n_steps(len(order), batch_size), dtype=self._dtype, device=self._dev)
        self.model.step_index = 0
        with keras.device(self.device):
            kc.fit_epoch(self.model, x, t, masks, batch_size, self.dtype)
        return self.model.loss_buffer.cpu().numpy()  # the one read of the epoch

    def _info(self) -> dict[str, str]:
        return super()._info() | {
            "framework_version": f"keras {keras.__version__} / torch {torch.__version__}",
            "keras_version": keras.__version__,
            "steps_per_execution": "1",
        }
