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

from backprop_bench.core.files import read_npz, sha256_file

SPLITS = ("train", "val", "test")
N_CLASSES = 10  # the processed data's classes, digits or Fashion-MNIST's ten kinds (data/formats.py)


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


def load_dataset(name: str, path: str | Path | None, n_classes: int = N_CLASSES) -> Dataset:
    """A toy set by name, else the processed .npz at ``path``, its labels 0..n_classes-1."""
    if name in TOYS:
        return TOYS[name]()
    if path is None:
        raise ValueError(f"data.name={name} needs data.path (the processed .npz)")
    return load_npz(name, Path(path), n_classes)


def load_npz(name: str, path: Path, n_classes: int = N_CLASSES) -> Dataset:
    """Read and validate a processed .npz (preprocess's pixels: x in [0, 1], labels
    0..n_classes-1); errors name the file, the key and, for values, the first bad row.

    The headers are checked before anything is loaded (``read_npz``), so a crafted or
    truncated file fails here, not as an IndexError or a "diverged" run later on.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: processed data not found (run `dvc repro preprocess` first?)")
    arrays = read_npz(path, [f"{p}_{s}" for s in SPLITS for p in ("x", "y")])
    n_features = arrays["x_train"].shape[1] if arrays["x_train"].ndim == 2 else None
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 2 or x.shape[1] != n_features or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{path}: x_{split} must be a float (N, {n_features}) array, got {x.dtype} {x.shape}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: y_{split} must be int labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        check_values(path, split, x, y, n_classes)
    if arrays["x_train"].shape[0] == 0:
        raise ValueError(f"{path}: x_train has no rows")
    return Dataset(name=name, **arrays, sha256=sha256_file(path))


def check_values(path: Path, split: str, x: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    """x finite and in [0, 1] (pixels / 255), y in 0..n_classes-1; the error names the first bad row."""
    # min/max first: no full-size boolean temporaries on good data (NaN makes both comparisons fail)
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        row = int(np.argmax(~((x >= 0) & (x <= 1)).all(axis=1)))
        value = x[row][~((x[row] >= 0) & (x[row] <= 1))][0]
        raise ValueError(f"{path}: x_{split} row {row}: value {value}, expected pixels in [0, 1] (finite)")
    bad_y = (y < 0) | (y >= n_classes)
    if bad_y.any():
        row = int(np.argmax(bad_y))
        raise ValueError(
            f"{path}: y_{split} row {row}: label {y[row]}, expected 0..{n_classes - 1} (the model's classes)"
        )


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
