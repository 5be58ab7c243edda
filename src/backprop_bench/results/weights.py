"""weights.npz, the framework-neutral weights of a run: any backend can load it to predict.

Keys: ``W0, b0, W1, b1, ...`` with W as (in, out) and b as (out,), plus ``spec``, the
MLPSpec as a JSON string. A skipped run writes the spec and no layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from backprop_bench.core.files import write_npz
from backprop_bench.core.specs import MLPSpec, Params


def save_weights(path: str | Path, spec: MLPSpec, params: Params) -> Path:
    """Write spec and params (one (W, b) per layer, any float dtype) atomically."""
    arrays = {"spec": np.array(json.dumps(asdict(spec)))}
    for layer, (w, b) in enumerate(params):
        arrays[f"W{layer}"], arrays[f"b{layer}"] = np.asarray(w), np.asarray(b)
    return write_npz(path, arrays)


def load_weights(path: str | Path) -> tuple[MLPSpec, Params]:
    """(spec, [(W, b), ...]) from a weights.npz; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    with np.load(path, allow_pickle=False) as npz:
        if "spec" not in npz.files:
            raise ValueError(f"{path}: no 'spec' key; not a backprop-bench weights.npz")
        spec = MLPSpec(**json.loads(str(npz["spec"])))
        params = []
        for layer, (i, o) in enumerate(spec.shapes()):
            for key, shape in ((f"W{layer}", (i, o)), (f"b{layer}", (o,))):
                if key not in npz.files:
                    raise ValueError(f"{path}: missing key {key} (a skipped run leaves no weights)")
                if npz[key].shape != shape:
                    raise ValueError(f"{path}: {key} has shape {npz[key].shape}, the spec needs {shape}")
            params.append((npz[f"W{layer}"], npz[f"b{layer}"]))
    return spec, params
