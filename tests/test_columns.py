"""mlflow_logging.py: a run's Dataset inputs, Source tags and pyfunc model, read back from MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_in_process

from backprop_bench.core.files import sha256_file
from backprop_bench.core.specs import scale_pixels as scale
from backprop_bench.data.formats import read_csv, write_canonical_csv
from backprop_bench.predict import main as predict_main
from backprop_bench.predict import predict
from backprop_bench.tracking import columns as mlflow_logging

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

ENV_FILES = ("requirements.txt", "conda.yaml", "python_env.yaml", "MLmodel")


@pytest.fixture
def test_csv(tiny_npz, tmp_path) -> Path:
    """The tiny set's test split as a canonical CSV (its pixels are integers / 255)."""
    npz = np.load(tiny_npz)
    path = tmp_path / "test.csv"
    write_canonical_csv(path, np.rint(npz["x_test"] * 255).astype(np.int64), npz["y_test"])
    return path


@pytest.fixture
def model_env(tracking_uri, monkeypatch) -> str:
    """$MLFLOW_TRACKING_URI set to the test's store, so that runs:/ URIs resolve there."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    return tracking_uri


def _predict_labels(weights: Path, csv: Path, tmp_path: Path) -> list[int]:
    """`python -m backprop_bench.predict --weights ... --csv ... --out ...`'s labels."""
    out = tmp_path / "predict_labels.csv"
    assert predict_main(["--weights", str(weights), "--csv", str(csv), "--out", str(out)]) == 0
    return [int(v) for v in out.read_text().splitlines()[1:]]


def _features(csv: Path) -> np.ndarray:
    """The CSV's pixels as the model takes them: scaled like preprocess, float64."""
    x_raw, _ = read_csv(csv)
    return scale(x_raw).astype(np.float64)


# ---------------------------------------------------------------- Dataset and Source


def test_a_run_shows_its_dataset_splits_and_source(small_cfg, model_env, tmp_path, tiny_npz):
    metrics = run_in_process(small_cfg(uri=model_env), tmp_path)
    client = MlflowClient(model_env)
    run = client.get_run(metrics["mlflow_run_id"])
    digest = sha256_file(tiny_npz)[: mlflow_logging.DIGEST_CHARS]

    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"mnist-train", "mnist-val", "mnist-test"}
    rows = {"train": 64, "val": 16, "test": 32}  # conftest.make_tiny_npz
    for split, n in rows.items():
        ds = inputs[f"mnist-{split}"]
        assert {(t.key, t.value) for t in ds.tags} == {("mlflow.data.context", split)}
        assert ds.dataset.digest == digest
        assert json.loads(ds.dataset.source) == {"uri": str(tiny_npz.resolve())}
        assert ds.dataset.source_type == "local"
        profile = json.loads(ds.dataset.profile)
        assert profile["features_shape"] == [n, 784] and profile["targets_shape"] == [n]
        assert "float32" in ds.dataset.schema and "784" in ds.dataset.schema

    exp = [run.info.experiment_id]
    found = client.search_runs(exp, filter_string=f"dataset.digest = '{digest}'")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    assert client.search_runs(exp, filter_string="dataset.digest = '000000000000'") == []
    both = f"dataset.name = 'mnist-train' AND dataset.context = 'train' AND dataset.digest = '{digest}'"
    assert len(client.search_runs(exp, filter_string=both)) == 1
    # the fluent API the README shows ($MLFLOW_TRACKING_URI picks the store)
    df = mlflow.search_runs(exp, filter_string=f"dataset.digest = '{digest}'")
    assert df["run_id"].tolist() == [run.info.run_id]

    tags = run.data.tags
    assert tags["mlflow.source.name"] == "backprop_bench.train"  # pytest is the __main__ here
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags.get("mlflow.source.git.commit", "") == tags["git_commit"]
    if not mlflow_logging.git_remote_url(ROOT):
        assert "mlflow.source.git.repoURL" not in tags


def test_a_toy_set_is_a_code_dataset(tracking_uri):
    from backprop_bench.core.dataset import toy_221
    from backprop_bench.tracking.run import MlflowRun

    data = toy_221()
    with MlflowRun(tracking_uri, "backprop-bench", "toy") as run:
        mlflow_logging.log_dataset_inputs(run.client, run.run_id, data, None)
    inputs = MlflowClient(tracking_uri).get_run(run.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["toy_221-test", "toy_221-train", "toy_221-val"]
    assert {i.dataset.source_type for i in inputs} == {"code"}
    assert {i.dataset.digest for i in inputs} == {data.sha256[:12]}


def test_entry_point_names_our_python_m_module(monkeypatch):
    class Spec:
        name = "backprop_bench.study"

    class Main:
        __spec__ = Spec()

    monkeypatch.setitem(sys.modules, "__main__", Main())
    assert mlflow_logging.entry_point() == "backprop_bench.study"
    Spec.name = "pytest"
    assert mlflow_logging.entry_point() == "backprop_bench.train"


def test_git_remote_url_drops_credentials(monkeypatch, tmp_path):
    repo = tmp_path / "checkout"  # a checkout of its own: the project's may or may not have a remote
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")  # no machine-wide config can add an origin
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-config"))
    assert mlflow_logging.git_remote_url(repo) == ""  # no remote: no tag
    assert "mlflow.source.git.repoURL" not in mlflow_logging.source_tags(repo, "abc")
    assert mlflow_logging.git_remote_url(Path("/")) == ""  # not a checkout
    subprocess.run(
        ["git", "remote", "add", "origin", "https://user:secret@example.org/group/backprop-bench.git"],
        cwd=repo,
        check=True,
    )
    assert mlflow_logging.git_remote_url(repo) == "https://example.org/group/backprop-bench.git"
    assert mlflow_logging.source_tags(repo, "abc")["mlflow.source.git.repoURL"] == (
        "https://example.org/group/backprop-bench.git"
    )
    assert "mlflow.source.git.repoURL" not in mlflow_logging.source_tags(repo, "")  # not a checkout


# ---------------------------------------------------------------- Models


def test_the_pyfunc_model_predicts_what_predict_does(small_cfg, model_env, tmp_path, test_csv):
    metrics = run_in_process(small_cfg("train.epochs=3", uri=model_env), tmp_path)
    run_id = metrics["mlflow_run_id"]
    weights = tmp_path / "out" / "weights.npz"
    expected = _predict_labels(weights, test_csv, tmp_path)

    client = MlflowClient(model_env)
    run = client.get_run(run_id)
    [output] = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run_id and model.status.to_proto() == 2  # READY

    import pandas as pd

    x = _features(test_csv)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probs = pyfunc.predict(pd.DataFrame(x))
    assert probs.shape == (len(x), 10)
    assert np.argmax(probs, axis=1).tolist() == expected
    np.testing.assert_allclose(probs, predict(weights, x), rtol=1e-6, atol=1e-7)
    assert np.argmax(pyfunc.predict(x), axis=1).tolist() == expected  # an ndarray too

    meta = pyfunc.metadata
    assert meta.run_id == run_id and meta.model_id == output.model_id
    sig = meta.signature.to_dict()
    assert sig["inputs"] is None  # MLflow's schema takes one dtype; the model takes several (below)
    assert json.loads(sig["outputs"]) == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]
    assert meta.metadata["input"] == (
        "an (N, 784) array or table of 784 pixel columns (the label column dropped): "
        "float32/float64 scaled to [0, 1], or integers 0-255"
    )
    _the_model_takes_what_users_have(pyfunc, x, expected)

    # the environment: numpy and mlflow, never torch or TensorFlow
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "dl")))
    requirements = (local / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy"]
    # pinned to what this interpreter runs: why logging may skip MLflow's mismatch check
    assert f"numpy=={np.__version__}" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    for name in ENV_FILES:
        text = (local / name).read_text().lower()
        assert "torch" not in text and "tensorflow" not in text and "keras" not in text, name
    assert (local / "input_example.json").is_file()
    assert sorted(p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")) == sorted(
        f"backprop_bench/{name}" for name in mlflow_logging.MODEL_CODE
    )


def test_the_requirement_check_is_skipped_only_inside_the_block():
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    with mlflow_logging._no_requirement_check():
        assert environment.warn_dependency_requirement_mismatches is not check
        assert environment.warn_dependency_requirement_mismatches(["numpy==0.0.1"]) is None
    assert environment.warn_dependency_requirement_mismatches is check
    with pytest.raises(KeyError), mlflow_logging._no_requirement_check():
        raise KeyError("a failed save")
    assert environment.warn_dependency_requirement_mismatches is check


def _the_model_takes_what_users_have(pyfunc, x: np.ndarray, expected: list[int]) -> None:
    """float32 arrays, and integer pixels 0-255 (Kaggle's test.csv: pixel0..pixel783, no label),
    predict as the processed float64 pixels do; anything else is refused by name."""
    import pandas as pd

    pixels = np.rint(x * 255).astype(np.int64)  # the raw pixels these processed ones came from
    kaggle = pd.DataFrame(pixels, columns=[f"pixel{i}" for i in range(784)])
    for given in (x.astype(np.float32), kaggle, pixels.astype(np.uint8)):
        assert np.argmax(pyfunc.predict(given), axis=1).tolist() == expected
    expect = "expected an \\(N, 784\\) array or table of 784 pixel columns"
    bad = {
        "got shape \\(5, 785\\)": pd.DataFrame(np.hstack([np.zeros((5, 1), np.int64), pixels[:5]])),  # label kept
        "integer pixels range -1..300": np.tile([-1, 300], (2, 392)),
        "float pixels range 0.0..255.0": pixels[:2].astype(np.float64) * 0 + 255.0 * (np.arange(784) % 2),
        "float pixels range nan": np.full((2, 784), np.nan),
        "got dtype <U1": np.full((2, 784), "a"),
    }
    for message, given in bad.items():
        with pytest.raises(Exception, match=f"{message}.*; {expect}"):
            pyfunc.predict(given)


def test_the_model_loads_from_its_own_code_without_torch_or_tensorflow(small_cfg, model_env, tmp_path, test_csv):
    """In a fresh interpreter: the project's modules come from the model's code/ copy, and
    predicting imports neither torch nor TensorFlow."""
    metrics = run_in_process(small_cfg(uri=model_env), tmp_path)
    local = mlflow.artifacts.download_artifacts(f"runs:/{metrics['mlflow_run_id']}/model", dst_path=str(tmp_path))
    x_path = tmp_path / "x.npy"
    np.save(x_path, _features(test_csv))
    script = (
        "import sys, numpy as np, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model({str(local)!r})\n"
        f"labels = np.argmax(m.predict(np.load({str(x_path)!r})), axis=1)\n"
        "import backprop_bench\n"
        "print(backprop_bench.__file__)\n"
        "print(sorted(k for k in ('torch', 'tensorflow', 'keras', 'jax') if k in sys.modules))\n"
        "print(labels.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    file, imported, labels = out.stdout.strip().splitlines()[-3:]
    assert Path(file).is_relative_to(Path(local) / "code"), file
    assert imported == "[]"
    assert json.loads(labels) == _predict_labels(tmp_path / "out" / "weights.npz", test_csv, tmp_path)


@pytest.mark.slow
def test_mlflow_models_predict_cli_gives_predicts_labels(small_cfg, model_env, tmp_path, test_csv):
    import pandas as pd

    metrics = run_in_process(small_cfg("train.epochs=3", uri=model_env), tmp_path)
    features = tmp_path / "features.csv"  # 784 columns with a header row: pandas reads it as a DataFrame
    pd.DataFrame(_features(test_csv), columns=[f"p{i}" for i in range(784)]).to_csv(features, index=False)
    out = tmp_path / "cli.json"
    cmd = [sys.executable, "-m", "mlflow", "models", "predict", "-m", f"runs:/{metrics['mlflow_run_id']}/model"]
    cmd += ["-i", str(features), "-t", "csv", "-o", str(out), "--env-manager", "local"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads(out.read_text())["predictions"]
    expected = _predict_labels(tmp_path / "out" / "weights.npz", test_csv, tmp_path)
    assert np.argmax(np.array(predictions), axis=1).tolist() == expected


def test_register_model_makes_a_registered_version(small_cfg, tracking_uri, tmp_path):
    metrics = run_in_process(small_cfg("tracking.register_model=bb-digits", uri=tracking_uri), tmp_path)
    run_id = metrics["mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    [version] = client.search_model_versions("name = 'bb-digits'")
    [output] = client.get_run(run_id).outputs.model_outputs
    assert str(version.version) == "1" and version.run_id == run_id
    assert version.source == f"models:/{output.model_id}"
    # a second registration of the same name is its next version, not an error
    again = mlflow_logging.register(client, "bb-digits", output.model_id, run_id)
    assert str(again.version) == "2"
    tag = json.loads(client.get_logged_model(output.model_id).tags["mlflow.modelVersions"])
    assert tag == [{"name": "bb-digits", "version": "1"}, {"name": "bb-digits", "version": "2"}]
    assert mlflow.get_tracking_uri() != tracking_uri  # the global URI is left as it was


def test_no_registration_by_default(small_cfg, tracking_uri, tmp_path):
    run_in_process(small_cfg(uri=tracking_uri), tmp_path)
    assert MlflowClient(tracking_uri).search_registered_models() == []
