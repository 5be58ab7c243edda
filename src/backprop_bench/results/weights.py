"""weights.npz, the framework-neutral weights of a run: any backend can load it to predict.

Keys: ``W0, b0, W1, b1, ...`` with W as (in, out) and b as (out,), plus ``spec``, the
MLPSpec as a JSON string. A skipped run writes the spec and no layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from backprop_bench.core.files import NpzError, read_npz, write_npz
from backprop_bench.core.specs import MLPSpec, Params

# The most bytes of arrays a weights.npz may hold: the project's MLPs have ~10^5 params, so
# a spec or header that claims more is crafted, and is refused before memory is taken.
MAX_BYTES = 1 << 30


def save_weights(path: str | Path, spec: MLPSpec, params: Params) -> Path:
    """Write spec and params (one (W, b) per layer, any float dtype) atomically."""
    arrays = {"spec": np.array(json.dumps(asdict(spec)))}
    for layer, (w, b) in enumerate(params):
        arrays[f"W{layer}"], arrays[f"b{layer}"] = np.asarray(w), np.asarray(b)
    return write_npz(path, arrays)


def load_weights(path: str | Path, max_bytes: int = MAX_BYTES) -> tuple[MLPSpec, Params]:
    """(spec, [(W, b), ...]) from a weights.npz; errors name the file and what is wrong.

    The spec is read first, then only the arrays it names, each checked (``read_npz``)
    before it is loaded: float, finite, the spec's shape, in all at most max_bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    spec = _read_spec(path)
    keys = [f"{kind}{layer}" for layer in range(spec.n_layers) for kind in ("W", "b")]
    try:
        arrays = read_npz(path, keys, max_bytes)
    except NpzError as err:
        if err.missing:
            raise ValueError(f"{path}: missing key {err.missing[0]} (a skipped run leaves no weights)") from None
        raise
    params = []
    for layer, (i, o) in enumerate(spec.shapes()):
        for key, shape in ((f"W{layer}", (i, o)), (f"b{layer}", (o,))):
            a = arrays[key]
            if a.shape != shape:
                raise ValueError(f"{path}: {key} has shape {a.shape}, the spec needs {shape}")
            if a.dtype.kind != "f":
                raise ValueError(f"{path}: {key} has dtype {a.dtype}, expected float")
            if not np.isfinite(a).all():
                raise ValueError(f"{path}: {key} holds NaN or infinite values (a diverged run?)")
        params.append((arrays[f"W{layer}"], arrays[f"b{layer}"]))
    return spec, params


def _read_spec(path: Path) -> MLPSpec:
    """The 'spec' key: a JSON string of MLPSpec's fields."""
    try:
        text = read_npz(path, ["spec"], max_bytes=1 << 20)["spec"]
    except NpzError as err:
        if err.missing:
            raise ValueError(f"{path}: no 'spec' key; not a backprop-bench weights.npz") from None
        raise
    if text.shape != () or text.dtype.kind != "U":
        raise ValueError(f"{path}: spec is {text.dtype} {text.shape}, expected a JSON string")
    try:
        return MLPSpec(**json.loads(str(text)))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: spec is not an MLPSpec's JSON: {err}") from err
