"""The MLflow model every run logs: its weights.npz behind the NumPy backend's forward pass.

This module and the few it imports are copied into the model (tracking/columns.py, MODEL_CODE),
so that it loads where backprop_bench is not installed: it imports no framework but NumPy.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class WeightsModel(mlflow.pyfunc.PythonModel):
    """A weights.npz as a pyfunc model: the NumPy backend's forward pass, on CPU.

    Input: (N, in) float64, the processed pixels; output: (N, out) output activations,
    computed in the precision the run trained in.
    """

    def load_context(self, context) -> None:
        from backprop_bench.backends import make_backend
        from backprop_bench.core.specs import OptimizerSpec
        from backprop_bench.results.weights import load_weights

        spec, params = load_weights(context.artifacts["weights"])
        self.dtype = str(params[0][0].dtype)
        # the optimizer is never used to predict; the backend's constructor just needs one
        self.backend = make_backend("numpy", spec, params, OptimizerSpec(), device="cpu", dtype=self.dtype)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return np.asarray(self.backend.predict(np.asarray(model_input, dtype=self.dtype)))
