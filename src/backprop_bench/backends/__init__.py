"""Backends, imported lazily: asking for "numpy" must never import torch or TensorFlow."""

from __future__ import annotations

import importlib

from backprop_bench.backends.base import Backend, DeviceUnavailable

FRAMEWORKS = ("numpy", "torch", "tensorflow", "keras")

_MODULES = {
    "numpy": ("backprop_bench.backends.numpy_backend", "NumpyBackend"),
    "torch": ("backprop_bench.backends.torch_backend", "TorchBackend"),
    "tensorflow": ("backprop_bench.backends.tensorflow_backend", "TensorflowBackend"),
    "keras": ("backprop_bench.backends.keras_backend", "KerasBackend"),
}


def backend_class(framework: str) -> type[Backend]:
    if framework not in _MODULES:
        raise ValueError(f"framework={framework!r} is not one of {', '.join(FRAMEWORKS)}")
    module, name = _MODULES[framework]
    return getattr(importlib.import_module(module), name)


def make_backend(framework: str, *args, **kwargs) -> Backend:
    return backend_class(framework)(*args, **kwargs)


__all__ = ["Backend", "DeviceUnavailable", "FRAMEWORKS", "backend_class", "make_backend"]
