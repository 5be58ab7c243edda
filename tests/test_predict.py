"""predict.py: a run's weights, from a file or from MLflow, give the run's own test accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_in_process

from backprop_bench.data.formats import write_canonical_csv
from backprop_bench.predict import main, predict


@pytest.fixture
def test_csv(tiny_npz, tmp_path):
    """The tiny set's test split as a canonical CSV (its pixels are integers / 255)."""
    npz = np.load(tiny_npz)
    pixels = np.rint(npz["x_test"] * 255).astype(np.int64)
    path = tmp_path / "test.csv"
    write_canonical_csv(path, pixels, npz["y_test"])
    return path


def test_predict_from_weights_matches_the_runs_test_accuracy(small_cfg, tmp_path, test_csv, capsys):
    metrics = run_in_process(small_cfg("train.epochs=3"), tmp_path)
    out = tmp_path / "preds.csv"
    assert main(["--weights", str(tmp_path / "out" / "weights.npz"), "--csv", str(test_csv), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {metrics['test_accuracy']:.4f}" in printed
    lines = out.read_text().splitlines()
    assert lines[0] == "prediction"
    assert [int(v) for v in lines[1:]] == np.load(tmp_path / "out" / "predictions.npy").tolist()


def test_predict_from_an_mlflow_run_id(small_cfg, tracking_uri, tmp_path, test_csv, capsys):
    metrics = run_in_process(small_cfg(uri=tracking_uri), tmp_path)
    args = ["--run-id", metrics["mlflow_run_id"], "--tracking-uri", tracking_uri, "--csv", str(test_csv)]
    assert main(args) == 0
    assert f"accuracy {metrics['test_accuracy']:.4f}" in capsys.readouterr().out


def test_predict_refuses_a_run_that_did_not_finish_unless_asked(small_cfg, tracking_uri, tmp_path, test_csv, capsys):
    from mlflow.tracking import MlflowClient

    run_id = run_in_process(small_cfg(uri=tracking_uri), tmp_path)["mlflow_run_id"]
    args = ["--run-id", run_id, "--tracking-uri", tracking_uri, "--csv", str(test_csv)]
    client = MlflowClient(tracking_uri)
    for status in ("FAILED", "RUNNING"):  # failed after its weights were logged; lost (killed, never ended)
        client.update_run(run_id, status=status)
        with pytest.raises(SystemExit, match=f"run {run_id} is {status}, not FINISHED.*--allow-unfinished"):
            main(args)
    assert main([*args, "--allow-unfinished"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_predict_rejects_weights_of_another_shape(tmp_path):
    from backprop_bench.core.specs import InitSpec, MLPSpec, init_params
    from backprop_bench.results.weights import save_weights

    spec = MLPSpec((2, 2, 1), "sigmoid", "sigmoid", "mse")
    save_weights(tmp_path / "w.npz", spec, init_params(spec, InitSpec()))
    with pytest.raises(ValueError, match="784 pixel columns.*takes 2"):
        predict(tmp_path / "w.npz", np.zeros((3, 784)))


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "tensorflow", "keras"])
def test_any_backend_predicts_what_numpy_trained(framework, small_cfg, tmp_path, tiny_npz):
    pytest.importorskip(framework)
    run_in_process(small_cfg(), tmp_path)
    weights = tmp_path / "out" / "weights.npz"
    x = np.load(tiny_npz)["x_test"]
    expected = predict(weights, x, "numpy")
    np.testing.assert_allclose(predict(weights, x, framework), expected, rtol=1e-4, atol=1e-6)
