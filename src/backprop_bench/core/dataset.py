"""The arrays one run trains on: the processed .npz, or a toy set made in code.

The processed file's keys and shapes are docs/architecture.md's "Processed data" table.
The toy sets (docs/reference.md) let each reference preset run by name, with no file:

    toy_221             the 2-2-1 toy's four samples, float targets (4, 1)
    worked_example_222  the 2-2-2 worked example's one sample, float targets (1, 2)

A toy set's val and test splits are its train split, on purpose: the reference numbers
are about fitting these samples, not about generalising.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backprop_bench.core.files import sha256_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # (N, in) float
    y_train: np.ndarray  # (N,) int64 labels, or (N, out) float targets
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sha256: str  # of the .npz file, or of the toy arrays' bytes

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def load_dataset(name: str, path: str | Path | None) -> Dataset:
    """A toy set by name, else the processed .npz at ``path``."""
    if name in TOYS:
        return TOYS[name]()
    if path is None:
        raise ValueError(f"data.name={name} needs data.path (the processed .npz)")
    return load_npz(name, Path(path))


def load_npz(name: str, path: Path) -> Dataset:
    """Read and validate a processed .npz; errors name the file and the key."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: processed data not found (run `dvc repro preprocess` first?)")
    with np.load(path, allow_pickle=False) as npz:
        missing = [f"{p}_{s}" for s in SPLITS for p in ("x", "y") if f"{p}_{s}" not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {', '.join(missing)}; has {', '.join(sorted(npz.files))}")
        arrays = {k: npz[k] for k in (f"{p}_{s}" for s in SPLITS for p in ("x", "y"))}
    n_features = arrays["x_train"].shape[1] if arrays["x_train"].ndim == 2 else None
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 2 or x.shape[1] != n_features or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{path}: x_{split} must be a float (N, {n_features}) array, got {x.dtype} {x.shape}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: y_{split} must be int labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        if y.size and y.min() < 0:
            raise ValueError(f"{path}: y_{split} has a negative label {y.min()}")
    if arrays["x_train"].shape[0] == 0:
        raise ValueError(f"{path}: x_train has no rows")
    return Dataset(name=name, **arrays, sha256=sha256_file(path))


def _toy(name: str, x: list, y: list) -> Dataset:
    x, y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
    sha = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return Dataset(name, x, y, x, y, x, y, sha)


def toy_221() -> Dataset:
    """The 2-2-1 toy's samples, in its order: (1,1)->1, (0,0)->0, (1,0)->0.5, (0,1)->0.5."""
    return _toy("toy_221", [[1, 1], [0, 0], [1, 0], [0, 1]], [[1.0], [0.0], [0.5], [0.5]])


def worked_example_222() -> Dataset:
    """The 2-2-2 worked example: inputs (0.05, 0.10), targets (0.01, 0.99)."""
    return _toy("worked_example_222", [[0.05, 0.10]], [[0.01, 0.99]])


TOYS = {"toy_221": toy_221, "worked_example_222": worked_example_222}
