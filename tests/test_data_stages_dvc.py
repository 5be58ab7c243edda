"""End to end: `dvc repro preprocess` in a temporary copy of the repository, on the embedded
data (no network); a second `dvc repro preprocess` must be a cached no-op, and a failing
run must leave the previous outputs in place."""

from __future__ import annotations

import json

import numpy as np
import pytest
from repo_copy import copy_repo, dvc


@pytest.mark.slow
def test_dvc_repro_data_stages_in_a_copy_of_the_repo(tmp_path):
    repo = copy_repo(tmp_path / "repo")

    first = dvc(["repro", "preprocess"], repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'download'" in first.stdout and "Running stage 'preprocess'" in first.stdout

    header = (repo / "data/raw/train.csv").open().readline().strip().split(",")
    assert header == ["label"] + [f"p{i}" for i in range(784)]
    with np.load(repo / "data/processed/mnist.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert sorted(arrays) == ["x_test", "x_train", "x_val", "y_test", "y_train", "y_val"]
    rows = {s: len(arrays[f"y_{s}"]) for s in ("train", "val", "test")}
    assert rows == {"train": 3600, "val": 400, "test": 1000}  # 5,000 digits: 1,000 test, 10 % val
    for split in ("train", "val", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        assert x.dtype == np.float32 and x.shape == (rows[split], 784)
        assert y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0  # real digits reach full ink
        assert np.bincount(y, minlength=10).tolist() == [rows[split] // 10] * 10
    stats = json.loads((repo / "data/processed/stats.json").read_text())
    assert stats["rows"] == rows
    assert stats["class_counts"]["test"] == [100] * 10

    outputs = ["data/raw/train.csv", "data/raw/test.csv", "data/processed/mnist.npz", "data/processed/stats.json"]
    stamps = {p: (repo / p).stat().st_mtime_ns for p in outputs}
    second = dvc(["repro", "preprocess"], repo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout, second.stdout
    assert "didn't change, skipping" in second.stdout
    assert {p: (repo / p).stat().st_mtime_ns for p in outputs} == stamps

    # A run that fails (here on a bad option) exits non-zero and keeps the good outputs.
    before = {p: (repo / p).read_bytes() for p in outputs}
    params = (repo / "params.yaml").read_text()
    assert "\n  subset: null" in params
    (repo / "params.yaml").write_text(params.replace("\n  subset: null", "\n  subset: 99999", 1))
    failed = dvc(["repro", "preprocess"], repo)
    assert failed.returncode != 0
    assert "data.subset=99999: must be null or an integer 1..4000" in failed.stdout + failed.stderr
    assert {p: (repo / p).read_bytes() for p in outputs} == before
