"""Predict the labels of a canonical CSV with a run's final weights, in any backend.

    python -m backprop_bench.predict --weights runs/numpy-cpu/parallel-controlled-s0/weights.npz \
        --csv data/raw/test.csv --framework torch --out preds.csv
    python -m backprop_bench.predict --run-id 3f2c... --csv data/raw/test.csv   # from MLflow

The CSV is the canonical raw format (label,p0..p783, header optional), scaled as
preprocess does, so on the test split the printed accuracy is the run's test_accuracy.
``--out`` writes one column, ``prediction``, one row per CSV row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from backprop_bench.backends import FRAMEWORKS, make_backend
from backprop_bench.core.files import write_csv
from backprop_bench.core.specs import DEVICES, OptimizerSpec, accuracy, predicted_labels, scale_pixels
from backprop_bench.results.weights import load_weights


def predict(weights: Path, x: np.ndarray, framework: str = "numpy", device: str = "cpu") -> np.ndarray:
    """(N, out) output activations of the network stored in ``weights`` on x (N, in)."""
    spec, params = load_weights(weights)
    if x.shape[1] != spec.sizes[0]:
        raise ValueError(f"the CSV has {x.shape[1]} pixel columns, the network in {weights} takes {spec.sizes[0]}")
    dtype = str(params[0][0].dtype)  # predict in the precision the run trained in
    # The optimizer is never used to predict; the backend's constructor just needs one.
    backend = make_backend(framework, spec, params, OptimizerSpec(), device=device, dtype=dtype)
    return np.asarray(backend.predict(x.astype(dtype)))


def weights_from_run(run_id: str, tracking_uri: str | None, dst: Path, allow_unfinished: bool = False) -> Path:
    """Download a run's weights.npz artifact into dst (tracking/uri.py resolve_uri picks the store).

    Only a FINISHED run's, unless allow_unfinished: a FAILED run may have logged the weights of
    a network that then diverged, and a RUNNING one may be lost (killed, never ended)."""
    from backprop_bench.tracking.client import download_artifact, run_status

    status = run_status(run_id, tracking_uri, Path.cwd())
    if status != "FINISHED" and not allow_unfinished:
        raise SystemExit(
            f"predict: run {run_id} is {status}, not FINISHED: its weights may be those of a failed or "
            "lost run; pass --allow-unfinished to use them anyway"
        )
    return download_artifact(run_id, "weights.npz", tracking_uri, Path.cwd(), dst)


def main(argv: list[str] | None = None) -> int:
    from backprop_bench.data.formats import read_csv

    p = argparse.ArgumentParser(prog="python -m backprop_bench.predict", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="a run's weights.npz")
    src.add_argument("--run-id", help="an MLflow run id: its weights.npz artifact is used")
    p.add_argument("--tracking-uri", help="with --run-id: default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    p.add_argument("--allow-unfinished", action="store_true", help="with --run-id: also a run not FINISHED")
    p.add_argument("--csv", type=Path, required=True, help="images in the canonical CSV format")
    p.add_argument("--framework", default="numpy", choices=FRAMEWORKS)
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--out", type=Path, help="write the predicted labels here (CSV)")
    args = p.parse_args(argv)

    x_raw, y = read_csv(args.csv)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or weights_from_run(args.run_id, args.tracking_uri, Path(tmp), args.allow_unfinished)
        probs = predict(weights, scale_pixels(x_raw), args.framework, args.device)
    labels = predicted_labels(probs)
    if args.out:
        write_csv(args.out, ["prediction"], labels[:, None].tolist())
    print(f"{len(labels)} rows, framework {args.framework}: accuracy {accuracy(probs, y):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
