"""Backends, imported lazily: asking for "numpy" must never import torch or TensorFlow."""

from __future__ import annotations

import importlib

from backprop_bench.backends.base import Backend, DeviceUnavailable

FRAMEWORKS = ("numpy", "torch", "tensorflow", "keras")

# (framework, compile) -> (module, class). compile=True means each framework's fast path:
# numpy's preallocated buffers, torch.compile, XLA; the backend records which in info().
_CLASSES = {
    ("numpy", False): ("numpy_backend", "NumpyBackend"),
    ("numpy", True): ("numpy_fast", "NumpyFastBackend"),
    ("torch", False): ("torch_backend", "TorchBackend"),
    ("tensorflow", False): ("tensorflow_backend", "TensorflowBackend"),
    ("keras", False): ("keras_backend", "KerasBackend"),
}


def backend_class(framework: str, compile: bool = False) -> type[Backend]:
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not one of {', '.join(FRAMEWORKS)}")
    module, name = _CLASSES.get((framework, compile), _CLASSES[(framework, False)])
    return getattr(importlib.import_module(f"backprop_bench.backends.{module}"), name)


def make_backend(framework: str, *args, compile: bool = False, **kwargs) -> Backend:
    """backend_class(framework, compile)(spec, init, optimizer, strategy=..., device=..., ...)."""
    return backend_class(framework, compile)(*args, compile=compile, **kwargs)


__all__ = ["Backend", "DeviceUnavailable", "FRAMEWORKS", "backend_class", "make_backend"]
