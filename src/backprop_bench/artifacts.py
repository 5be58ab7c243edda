"""Files a run leaves behind, written atomically, and the framework-neutral weights format.

Atomic: write a temp file in the target's directory, then ``os.replace`` it over the
target, so a reader (DVC, compare, a crashed rerun) sees the old file or the new one,
never half of one.

weights.npz (docs/architecture.md): ``W0, b0, W1, b1, ...`` with W as (in, out), plus
``spec``, the MLPSpec as a JSON string. Any backend can load it to predict.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from backprop_bench.model import MLPSpec, Params


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: dict) -> Path:
    # allow_nan=False: NaN is not JSON; callers put None where a number does not exist.
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_weights(path: str | Path, spec: MLPSpec, params: Params) -> Path:
    arrays = {"spec": np.array(json.dumps(asdict(spec)))}
    for layer, (w, b) in enumerate(params):
        arrays[f"W{layer}"], arrays[f"b{layer}"] = np.asarray(w), np.asarray(b)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


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
