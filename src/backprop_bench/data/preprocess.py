"""Stage `preprocess`: validate the raw CSVs, scale, subset, split off validation, and write
data/processed/mnist.npz and data/processed/stats.json.

    python -m backprop_bench.data.preprocess                  # reads params.yaml `data:`
    python -m backprop_bench.data.preprocess --params my.yaml

Reads data.subset, data.val_fraction and data.seed. mnist.npz: x_train/x_val/x_test
(N, 784) float32 in [0, 1], y_train/y_val/y_test (N,) int64 (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from backprop_bench.core.checks import ParamsError, check, is_integer, is_number
from backprop_bench.core.files import all_or_nothing, sha256_file, write_json, write_npz
from backprop_bench.core.specs import scale_pixels
from backprop_bench.core.split import stratified_split
from backprop_bench.data import formats
from backprop_bench.data.formats import DataError

SPLITS = ("train", "val", "test")


def check_options(
    n_train: int, subset: int | None, val_fraction: float, seed: int, file: str | Path | None = None
) -> None:
    """params.yaml's data.subset, data.val_fraction and data.seed against n_train; file: for errors."""
    ok = subset is None or (is_integer(subset, 1) and subset <= n_train)
    check(ok, "data.subset", subset, f"must be null or an integer 1..{n_train} (the train rows)", file)
    ok = is_number(val_fraction) and 0 <= val_fraction < 1
    check(ok, "data.val_fraction", val_fraction, "must be a number in [0, 1)", file)
    check(is_integer(seed, 0), "data.seed", seed, "must be an integer >= 0", file)
    n = subset if subset is not None else n_train
    check(n - round(val_fraction * n) >= 1, "data.val_fraction", val_fraction, f"leaves no train rows out of {n}", file)


def preprocess(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    subset: int | None,
    val_fraction: float,
    seed: int,
    file: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Subset, split and scale. x_*: (N, 784) uint8, y_*: (N,) ints; file: the params file, for errors.

    Returns the arrays of mnist.npz. One rng (from seed) draws the subset, then the
    validation rows, so the same seed always gives the same rows.
    """
    check_options(len(y_train), subset, val_fraction, seed, file)
    rng = np.random.default_rng(seed)
    if subset is not None:
        keep, _ = stratified_split(y_train, subset, rng)
        x_train, y_train = x_train[keep], y_train[keep]
    val, train = stratified_split(y_train, round(val_fraction * len(y_train)), rng)
    return {
        "x_train": scale_pixels(x_train[train]),
        "y_train": y_train[train].astype(np.int64),
        "x_val": scale_pixels(x_train[val]),
        "y_val": y_train[val].astype(np.int64),
        "x_test": scale_pixels(x_test),
        "y_test": y_test.astype(np.int64),
    }


def make_stats(arrays: dict[str, np.ndarray], inputs: dict[str, str | Path], options: dict) -> dict:
    """Row and per-class counts per split, plus the sha256 of each input file."""
    ys = {s: arrays[f"y_{s}"] for s in SPLITS}
    return {
        "rows": {s: int(len(y)) for s, y in ys.items()},
        "class_counts": {s: np.bincount(y, minlength=formats.N_CLASSES).tolist() for s, y in ys.items()},
        "inputs": {name: {"path": str(p), "sha256": sha256_file(p)} for name, p in inputs.items()},
        "options": options,
        "pixels": "x / 255 as float32, in [0, 1]",
    }


def process_files(
    train_csv: Path,
    test_csv: Path,
    out_npz: Path,
    out_stats: Path,
    subset: int | None,
    val_fraction: float,
    seed: int,
    file: str | Path | None = None,
    max_rows: int = formats.MAX_ROWS,
) -> dict:
    """Read, validate and write. Nothing is written unless everything before succeeded,
    so a bad input leaves the previous outputs as they were. file: the params file, for
    errors; max_rows: the most rows a CSV may have (bounds the memory it takes)."""
    check(is_integer(max_rows, 1), "data.max_rows", max_rows, "must be an integer >= 1", file)
    x_train, y_train = formats.read_csv(train_csv, max_rows=max_rows)
    x_test, y_test = formats.read_csv(test_csv, max_rows=max_rows)
    arrays = preprocess(x_train, y_train, x_test, y_test, subset, val_fraction, seed, file)
    stats = make_stats(
        arrays,
        {"train": train_csv, "test": test_csv},
        {"subset": subset, "val_fraction": val_fraction, "seed": seed},
    )
    if Path(out_npz).parent != Path(out_stats).parent:
        raise ValueError(f"{out_npz} and {out_stats} must be in one folder (they are replaced together)")
    with all_or_nothing(Path(out_npz).parent, [Path(out_npz).name, Path(out_stats).name]) as stage:
        npz = stage / Path(out_npz).name
        write_npz(npz, arrays)  # deterministic bytes: the same arrays leave DVC's hash unchanged
        stats["outputs"] = {npz.name: sha256_file(npz)}
        write_json(stage / Path(out_stats).name, stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="YAML with a data: section")
    parser.add_argument("--raw-dir", default="data/raw", help="holds train.csv and test.csv")
    parser.add_argument("--out-dir", default="data/processed", help="where mnist.npz and stats.json go")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    raw, out = Path(args.raw_dir), Path(args.out_dir)
    try:
        data = formats.read_data_params(args.params)
        stats = process_files(
            raw / "train.csv",
            raw / "test.csv",
            out / "mnist.npz",
            out / "stats.json",
            subset=data.get("subset"),
            val_fraction=data.get("val_fraction", 0.1),
            seed=data.get("seed", 0),
            file=args.params,
            max_rows=data.get("max_rows", formats.MAX_ROWS),
        )
    except (DataError, ParamsError) as err:
        print(f"preprocess: error: {err}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{s} {n}" for s, n in stats["rows"].items())
    print(f"preprocess: {out / 'mnist.npz'}: {rows} rows in {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
