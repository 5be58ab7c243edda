"""The preprocess stage: scaling, stratified subset and validation split, the .npz and
stats.json it writes, and that a failure leaves the previous outputs as they were."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from conftest import make_split

from backprop_bench.core.checks import ParamsError
from backprop_bench.data import formats, preprocess
from backprop_bench.data.formats import N_PIXELS


def test_preprocess_scales_splits_and_stratifies():
    (x, y), (xt, yt) = make_split(200, 0), make_split(50, 1)
    out = preprocess.preprocess(x, y, xt, yt, subset=None, val_fraction=0.25, seed=3)
    assert {k: v.shape for k, v in out.items()} == {
        "x_train": (150, N_PIXELS),
        "y_train": (150,),
        "x_val": (50, N_PIXELS),
        "y_val": (50,),
        "x_test": (50, N_PIXELS),
        "y_test": (50,),
    }
    for split in ("train", "val", "test"):
        assert out[f"x_{split}"].dtype == np.float32 and out[f"y_{split}"].dtype == np.int64
        assert 0.0 <= out[f"x_{split}"].min() and out[f"x_{split}"].max() <= 1.0
    assert np.bincount(out["y_val"]).tolist() == [5] * 10
    assert np.bincount(out["y_train"]).tolist() == [15] * 10
    # Every train row lands in exactly one of train/val, scaled by 1/255.
    joined = np.concatenate([out["x_train"], out["x_val"]]) * 255
    assert sorted(map(bytes, np.rint(joined).astype(np.uint8))) == sorted(map(bytes, x))
    np.testing.assert_allclose(out["x_test"], xt / 255.0, rtol=1e-7)


def test_subset_is_stratified_and_the_seed_decides_the_rows():
    (x, y), (xt, yt) = make_split(1000, 0), make_split(20, 1)
    a = preprocess.preprocess(x, y, xt, yt, subset=100, val_fraction=0.1, seed=5)
    b = preprocess.preprocess(x, y, xt, yt, subset=100, val_fraction=0.1, seed=5)
    c = preprocess.preprocess(x, y, xt, yt, subset=100, val_fraction=0.1, seed=6)
    assert np.bincount(a["y_train"]).tolist() == [9] * 10 and np.bincount(a["y_val"]).tolist() == [1] * 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["x_train"], c["x_train"])
    no_val = preprocess.preprocess(x, y, xt, yt, subset=None, val_fraction=0.0, seed=5)
    assert no_val["x_val"].shape == (0, N_PIXELS) and len(no_val["y_train"]) == 1000


@pytest.mark.parametrize(
    "subset, val_fraction, pattern",
    [
        (0, 0.1, r"data.subset=0: must be null or an integer 1..100"),
        (101, 0.1, r"data.subset=101: must be null or an integer 1..100"),
        (2.5, 0.1, r"data.subset=2.5"),
        (None, 1.0, r"data.val_fraction=1.0: must be a number in \[0, 1\)"),
        (None, -0.1, r"data.val_fraction=-0.1"),
        (None, "lots", r"data.val_fraction='lots'"),
        (1, 0.9, r"data.val_fraction=0.9: leaves no train rows out of 1"),
    ],
)
def test_bad_options_name_the_option(subset, val_fraction, pattern):
    (x, y), (xt, yt) = make_split(100, 0), make_split(10, 1)
    with pytest.raises(ParamsError, match=pattern):
        preprocess.preprocess(x, y, xt, yt, subset=subset, val_fraction=val_fraction, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None])
def test_bad_seed_names_the_option(seed):
    (x, y), (xt, yt) = make_split(100, 0), make_split(10, 1)
    with pytest.raises(ParamsError, match=rf"data.seed={seed!r}: must be an integer >= 0"):
        preprocess.preprocess(x, y, xt, yt, subset=None, val_fraction=0.1, seed=seed)


# ----------------------------------------------------------------------------- main()


@pytest.fixture
def stage(tmp_path):
    """A raw dir with valid CSVs and a params file; returns (argv, raw, out, params path)."""
    raw, out = tmp_path / "raw", tmp_path / "processed"
    formats.write_canonical_csv(raw / "train.csv", *make_split(60, 2))
    formats.write_canonical_csv(raw / "test.csv", *make_split(20, 3))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"subset": 50, "val_fraction": 0.2, "seed": 1}, "train": {"epochs": 1}}))
    return ["--params", str(params), "--raw-dir", str(raw), "--out-dir", str(out)], raw, out, params


def test_main_writes_npz_and_stats(stage, capsys):
    argv, raw, out, _ = stage
    assert preprocess.main(argv) == 0
    assert "train 40, val 10, test 20 rows" in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == {"train": 40, "val": 10, "test": 20}
    assert stats["class_counts"] == {"train": [4] * 10, "val": [1] * 10, "test": [2] * 10}
    for split in ("train", "test"):
        digest = hashlib.sha256((raw / f"{split}.csv").read_bytes()).hexdigest()
        assert stats["inputs"][split]["sha256"] == digest
    assert stats["outputs"]["mnist.npz"] == hashlib.sha256((out / "mnist.npz").read_bytes()).hexdigest()
    assert stats["options"] == {"subset": 50, "val_fraction": 0.2, "seed": 1}
    with np.load(out / "mnist.npz") as npz:
        assert npz["x_train"].shape == (40, N_PIXELS) and npz["x_train"].dtype == np.float32
        assert npz["y_test"].dtype == np.int64


def test_a_failed_run_leaves_the_previous_outputs_untouched(stage, capsys):
    argv, raw, out, params = stage
    assert preprocess.main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    lines = (raw / "train.csv").read_text().splitlines()
    cells = lines[7].split(",")
    cells[300] = "999"
    lines[7] = ",".join(cells)
    (raw / "train.csv").write_text("\n".join(lines) + "\n")
    assert preprocess.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"preprocess: error: {raw / 'train.csv'}: row 8, column 301 (p299): "
        "pixel 999 out of range, expected a pixel, an integer 0-255"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, same bytes, no temp files

    formats.write_canonical_csv(raw / "train.csv", *make_split(60, 2))
    params.write_text(yaml.safe_dump({"data": {"subset": 500, "val_fraction": 0.2, "seed": 1}}))
    assert preprocess.main(argv) == 1
    assert "data.subset=500: must be null or an integer 1..60" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_max_rows_bounds_the_read_and_a_refusal_keeps_the_outputs(stage, capsys):
    argv, raw, out, params = stage
    assert preprocess.main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    params.write_text(yaml.safe_dump({"data": {"subset": None, "val_fraction": 0.2, "seed": 1, "max_rows": 50}}))
    assert preprocess.main(argv) == 1
    limit = "171,822 bytes, more than the limit of 161,146 bytes (data.max_rows=50 rows)"  # before parsing it
    assert f"{raw / 'train.csv'}: {limit}" in capsys.readouterr().err
    params.write_text(yaml.safe_dump({"data": {"val_fraction": 0.2, "seed": 1, "max_rows": 0}}))
    assert preprocess.main(argv) == 1
    assert "data.max_rows=0: must be an integer >= 1" in capsys.readouterr().err
    (raw / "test.csv").write_text(",".join(formats.CANONICAL_HEADER) + "\n")  # zero rows
    params.write_text(yaml.safe_dump({"data": {"val_fraction": 0.2, "seed": 1}}))
    assert preprocess.main(argv) == 1
    assert f"{raw / 'test.csv'}: empty file: a header and no data rows" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
