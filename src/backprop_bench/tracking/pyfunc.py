"""The MLflow model every run logs: its weights.npz behind the NumPy backend's forward pass.

This module and the few it imports are copied into the model (tracking/columns.py, MODEL_CODE),
so that it loads where backprop_bench is not installed: it imports no framework but NumPy.

It takes what users have: an (N, in) array or table (a DataFrame, a CSV read without its label
column, such as Kaggle's test.csv) of float32/float64 pixels already scaled to [0, 1], or of
integer pixels 0-255, which it scales as preprocess does. MLflow's input schema cannot say
"float or integer", so the model logs no input schema (its MLmodel metadata ``input`` says what
it takes) and checks its input itself, naming the expected columns and range on a mismatch.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from backprop_bench.core.specs import PIXEL_MAX, scale_pixels


def input_contract(n_in: int) -> str:
    """What the model takes, in words: the MLmodel's metadata and every input error say it."""
    return (
        f"an (N, {n_in}) array or table of {n_in} pixel columns (the label column dropped): "
        f"float32/float64 scaled to [0, 1], or integers 0-{PIXEL_MAX}"
    )


def as_model_input(model_input, n_in: int, dtype: str) -> np.ndarray:
    """model_input as the (N, n_in) array of the run's dtype the network reads; ValueError if it is
    not one of the forms input_contract names."""
    x = np.asarray(model_input)
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"got shape {x.shape}; expected {input_contract(n_in)}")
    if x.dtype.kind in "iub":
        if x.size and (x.min() < 0 or x.max() > PIXEL_MAX):
            raise ValueError(f"integer pixels range {x.min()}..{x.max()}; expected {input_contract(n_in)}")
        return scale_pixels(x).astype(dtype)
    if x.dtype.kind != "f":
        raise ValueError(f"got dtype {x.dtype}; expected {input_contract(n_in)}")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise ValueError(
            f"float pixels range {np.nanmin(x)}..{np.nanmax(x)} (or are not finite); expected {input_contract(n_in)}"
        )
    return x.astype(dtype, copy=False)


class WeightsModel(mlflow.pyfunc.PythonModel):
    """A weights.npz as a pyfunc model: the NumPy backend's forward pass, on CPU.

    Input: as_model_input's forms; output: (N, out) output activations, computed in the
    precision the run trained in.
    """

    def load_context(self, context) -> None:
        from backprop_bench.backends import make_backend
        from backprop_bench.core.specs import OptimizerSpec
        from backprop_bench.results.weights import load_weights

        spec, params = load_weights(context.artifacts["weights"])
        self.dtype, self.n_in = str(params[0][0].dtype), spec.sizes[0]
        # the optimizer is never used to predict; the backend's constructor just needs one
        self.backend = make_backend("numpy", spec, params, OptimizerSpec(), device="cpu", dtype=self.dtype)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return np.asarray(self.backend.predict(as_model_input(model_input, self.n_in, self.dtype)))
