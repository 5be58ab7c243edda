"""dataset.py: the processed .npz is validated key by key; the toy sets are the references'."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_npz

from backprop_bench.core.dataset import load_dataset
from backprop_bench.core.files import sha256_file


def test_the_processed_npz_loads_with_its_sha256(tiny_npz):
    data = load_dataset("mnist", tiny_npz)
    assert data.x_train.shape == (64, 784) and data.y_test.shape == (32,) and data.n_features == 784
    assert data.sha256 == sha256_file(tiny_npz) and len(data.sha256) == 64


def test_missing_keys_are_named_with_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((3, 4), np.float32), y_train=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"bad.npz: missing key\(s\) x_val, y_val, x_test, y_test"):
        load_dataset("mnist", path)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("y_val", lambda a: a.astype(np.float32), r"y_val must be int labels"),
        ("x_test", lambda a: a[:, :10], r"x_test must be a float \(N, 784\) array"),
        ("y_train", lambda a: a[:-1], r"y_train must be int labels of shape \(64,\)"),
        ("y_train", lambda a: a - 5, r"y_train row \d+: label -\d, expected 0..9 \(the model's classes\)"),
        ("y_test", lambda a: np.where(np.arange(len(a)) == 7, 10, a), r"y_test row 7: label 10, expected 0..9"),
        (
            "x_val",
            lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3 * 784 + 5, np.nan, a),
            r"x_val row 3: value nan",
        ),
        (
            "x_train",
            lambda a: np.where(np.arange(a.size).reshape(a.shape) == 9, np.inf, a),
            r"x_train row 0: value inf",
        ),
        ("x_test", lambda a: a * 255, r"x_test row \d+: value \d+\.\d+, expected pixels in \[0, 1\] \(finite\)"),
    ],
)
def test_bad_arrays_are_named_with_the_file_and_key(tmp_path, key, value, message):
    path = make_tiny_npz(tmp_path / "bad.npz")
    arrays = dict(np.load(path))
    arrays[key] = value(arrays[key])
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"bad.npz: {message}"):
        load_dataset("mnist", path)


def test_labels_are_checked_against_the_model_s_classes(tiny_npz):
    with pytest.raises(ValueError, match=r"y_train row \d+: label [3-9], expected 0..2 \(the model's classes\)"):
        load_dataset("mnist", tiny_npz, n_classes=3)


def test_a_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.npz: processed data not found \(run `dvc repro"):
        load_dataset("mnist", tmp_path / "nope.npz")


def test_toy_sets_are_the_references_samples():
    toy = load_dataset("toy_221", None)
    assert toy.x_train.tolist() == [[1, 1], [0, 0], [1, 0], [0, 1]]
    assert toy.y_train.tolist() == [[1.0], [0.0], [0.5], [0.5]]
    worked = load_dataset("worked_example_222", None)
    assert worked.x_train.tolist() == [[0.05, 0.10]] and worked.y_train.tolist() == [[0.01, 0.99]]
    assert worked.x_test is worked.x_train  # no held-out data, on purpose
