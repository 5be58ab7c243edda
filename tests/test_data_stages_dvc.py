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


@pytest.mark.slow
def test_an_in_place_edit_of_a_local_data_file_makes_the_data_stages_stale(tmp_path):
    """data.source=file reads data.file.dir (data/local), a DVC dependency of download: an edit
    to a CSV or IDX file there shows in `dvc status` and reruns the stages; its README does not."""
    import yaml
    from conftest import make_split

    from backprop_bench.data import formats

    repo = copy_repo(tmp_path / "repo")
    local = repo / "data/local"
    assert (local / "README.md").is_file()  # the folder exists in a clean clone
    train, test = make_split(20, 1), make_split(10, 2)
    formats.write_canonical_csv(local / "train.csv", *train)
    formats.write_canonical_csv(local / "test.csv", *test)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = "file"
    params["data"]["file"].update(format="csv", train_csv="train.csv", test_csv="test.csv")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    done = dvc(["repro", "download"], repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in dvc(["status", "download"], repo).stdout

    (local / "README.md").write_text("notes\n")  # ignored by .dvcignore: no rerun
    assert "up to date" in dvc(["status", "download"], repo).stdout

    lines = (local / "train.csv").read_text().splitlines()
    lines[1] = "9" + lines[1][1:]  # the first image's label, edited in place
    (local / "train.csv").write_text("\n".join(lines) + "\n")
    status = dvc(["status"], repo).stdout
    assert "download:" in status and "modified:           data/local" in status, status
    again = dvc(["repro", "download"], repo)
    assert again.returncode == 0 and "Running stage 'download'" in again.stdout, again.stdout + again.stderr
    assert formats.read_csv(repo / "data/raw/train.csv")[1][0] == 9

    # The same for the IDX quartet, under the catalog's names
    names = {r: f["name"] for r, f in params["data"]["catalog"]["mnist"]["url"]["files"].items()}
    arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}
    for role, array in arrays.items():
        formats.write_idx(local / names[role], array.reshape(-1, 28, 28) if role.endswith("images") else array)
    params["data"]["file"]["format"] = "idx"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert dvc(["repro", "download"], repo).returncode == 0
    assert "up to date" in dvc(["status", "download"], repo).stdout
    formats.write_idx(local / names["test_labels"], (test[1] + 1) % 10)
    status = dvc(["status", "download"], repo).stdout
    assert "modified:           data/local" in status, status
