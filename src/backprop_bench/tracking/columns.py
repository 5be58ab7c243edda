"""What fills the MLflow UI's standard columns of a run: Dataset, Source and Models.

The tracker (tracking/listener.py) calls one function of it, ``log_standard_columns``, when
a finished run's files are logged:

- **Dataset**: each split of the data (train, val, test) as an MLflow dataset input of the
  run, named ``<data>-<split>`` (MLflow keeps one input per name and digest), with digest
  the first 12 hex digits of the processed file's sha256 (all three splits share it, so
  ``dataset.digest = '...'`` finds every run on one file), the file as source, the arrays'
  schema and shapes as profile, and context ``train``/``val``/``test``.
- **Source**: ``mlflow.source.name`` (the entry point), ``.type`` (LOCAL), ``.git.commit``,
  and ``.git.repoURL`` when the checkout has an ``origin`` remote.
- **Models**: the final weights as an MLflow ``pyfunc`` model named ``model`` (an MLflow 3
  logged model of the run: ``runs:/<run id>/model``), predicting with the NumPy backend's
  forward pass. Input: an (N, 784) array or table (a DataFrame, a CSV without its label
  column) of float32/float64 pixels scaled to [0, 1] or integer pixels 0-255 (scaled as
  preprocess scales them); output: the (N, 10) output activations (probabilities). It is saved "from code" (a
  three-line script, no pickle), carries its own copy of the few project modules it needs
  and requires only numpy (besides mlflow), never torch or TensorFlow.
  ``tracking.register_model`` registers it in the Model Registry.

Everything goes through the run's own ``MlflowClient`` (no global active run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np

from backprop_bench.tracking.client import retry  # sqlite "database is locked": retried with backoff
from backprop_bench.tracking.pyfunc import input_contract

if TYPE_CHECKING:
    from backprop_bench.core.dataset import Dataset
    from backprop_bench.tracking.run import MlflowRun
    from backprop_bench.training.config import Components

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name: runs:/<run id>/model
DIGEST_CHARS = 12  # of the data's sha256; MLflow stores at most 36
N_EXAMPLE_ROWS = 2  # rows of the test split saved as the model's input example
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/backprop_bench
# The project files the pyfunc model imports (and nothing else: no torch, no TensorFlow),
# copied into the model so that it loads where backprop_bench is not installed.
MODEL_CODE = (
    "__init__.py",
    "core/__init__.py",
    "core/checks.py",
    "core/specs.py",
    "core/files.py",
    "results/__init__.py",
    "results/weights.py",
    "backends/__init__.py",
    "backends/base.py",
    "backends/numpy_backend.py",
    "tracking/__init__.py",
    "tracking/pyfunc.py",
)


def log_standard_columns(
    tracker: MlflowRun,
    weights: Path,
    c: Components,
    data: Dataset,
    project_root: Path,
    git_commit: str,
) -> None:
    """Dataset inputs, source tags and the pyfunc model of one finished run (tracking on)."""
    client, run_id = tracker.client, tracker.run_id
    data_path = _under(project_root, c.data.path) if c.data.path else None
    log_dataset_inputs(client, run_id, data, data_path)
    tracker.set_tags(source_tags(project_root, git_commit))
    log_pyfunc_model(client, run_id, weights, data, c.tracking.register_model)


# ---------------------------------------------------------------- Dataset


def dataset_digest(data: Dataset) -> str:
    """The digest MLflow shows and filters on: the start of the data's sha256."""
    return data.sha256[:DIGEST_CHARS]


def log_dataset_inputs(client: Any, run_id: str, data: Dataset, path: Path | None) -> None:
    """The train, val and test splits as dataset inputs of the run, one context each."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.numpy_dataset import NumpyDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from backprop_bench.core.dataset import SPLITS

    if path is not None:
        with warnings.catch_warnings():  # two registered local sources fit a path: either will do
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(Path(path).resolve()))
    else:  # a toy set made in code
        source = CodeDatasetSource(tags={"mlflow.source.name": f"backprop_bench.core.dataset.{data.name}"})
    inputs = []
    for split in SPLITS:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        dataset = NumpyDataset(x, source, targets=y, name=f"{data.name}-{split}", digest=dataset_digest(data))
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, split)]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    retry(client.log_inputs, run_id, datasets=inputs)


# ---------------------------------------------------------------- Source


def source_tags(project_root: Path, git_commit: str) -> dict[str, str]:
    """MLflow's standard source tags: entry point, LOCAL, git commit, origin's URL if any."""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_REPO_URL,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    tags = {MLFLOW_SOURCE_NAME: entry_point(), MLFLOW_SOURCE_TYPE: "LOCAL"}
    if git_commit:  # a git checkout
        tags[MLFLOW_GIT_COMMIT] = git_commit
        if url := git_remote_url(project_root):
            tags[MLFLOW_GIT_REPO_URL] = url
    return tags


def entry_point() -> str:
    """The module run with ``python -m`` when it is one of ours (backprop_bench.study for a
    study stage), else backprop_bench.train (whose ``run`` trained the model)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    return name if name.startswith("backprop_bench.") else "backprop_bench.train"


def git_remote_url(root: Path) -> str:
    """origin's URL (``git config --get remote.origin.url``) without any user:password part,
    or "" (no remote, not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "config", "--get", "remote.origin.url"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    url = out.stdout.strip() if out.returncode == 0 else ""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)  # https://user:token@host -> https://host


# ---------------------------------------------------------------- Models


# The model "from code": mlflow runs this file to get the model (no pickle).
MODEL_SCRIPT = """\
import mlflow.models

from backprop_bench.tracking.pyfunc import WeightsModel

mlflow.models.set_model(WeightsModel())
"""


def model_signature(n_out: int, dtype: str) -> Any:
    """Outputs: an (N, n_out) tensor of the run's dtype. No input schema: MLflow's enforcement
    takes one dtype, and the model takes float or integer pixels (tracking/pyfunc.py says which,
    in the MLmodel's metadata ``input``, and checks them itself)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(dtype), (-1, n_out))]))


def pip_requirements() -> list[str]:
    """What the model needs to load, given explicitly (no inference): mlflow adds itself."""
    return [f"numpy=={np.__version__}"]


def log_pyfunc_model(client: Any, run_id: str, weights: Path, data: Dataset, register_model: str | None = None) -> str:
    """Log weights as the run's pyfunc model ``model``; returns its model id.

    Done by hand with the client rather than with ``mlflow.pyfunc.log_model``, which needs
    a global active run (and the global tracking URI).
    """
    import tempfile

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from backprop_bench.results.weights import load_weights

    spec, params = load_weights(weights)
    dtype = str(params[0][0].dtype)
    experiment_id = retry(client.get_run, run_id).info.experiment_id
    model = retry(client.create_logged_model, experiment_id, name=MODEL_NAME, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
            code = _copy_model_code(Path(tmp) / "code-src")
            script = Path(tmp) / "weights_model.py"
            script.write_text(MODEL_SCRIPT)
            example = np.asarray(data.x_test[:N_EXAMPLE_ROWS], dtype=np.float64) if len(data.x_test) else None
            meta = Model(
                artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id, model_id=model.model_id
            )
            local = Path(tmp) / MODEL_NAME
            with _no_progress_bars(), _no_requirement_check():
                mlflow.pyfunc.save_model(
                    str(local),
                    python_model=str(script),
                    artifacts={"weights": str(weights)},
                    code_paths=[str(code)],
                    signature=model_signature(spec.sizes[-1], dtype),
                    input_example=example,
                    metadata={"input": input_contract(spec.sizes[0])},
                    pip_requirements=pip_requirements(),
                    mlflow_model=meta,
                )
            retry(client.log_model_artifacts, model.model_id, str(local))
        retry(client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step=0)])
    except BaseException:
        retry(client.finalize_logged_model, model.model_id, LoggedModelStatus.FAILED)
        raise
    retry(client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
    if register_model:
        register(client, register_model, model.model_id, run_id)
    return model.model_id


def register(client: Any, name: str, model_id: str, run_id: str) -> Any:
    """A new version of registered model ``name`` (created if needed) from a logged model,
    linked both ways as ``mlflow.register_model`` links them (source ``models:/<id>``, and
    the logged model's ``mlflow.modelVersions`` tag)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        retry(client.create_registered_model, name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # A database registry looks a models:/ source up through the *global* tracking URI:
    # point it at this run's store for the call (restored after).
    with _use_tracking_uri(client.tracking_uri):
        version = retry(client.create_model_version, name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    versions = json.loads(retry(client.get_logged_model, model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    versions.append({"name": name, "version": str(version.version)})
    retry(client.set_logged_model_tags, model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
    log.info("registered model %s version %s", name, version.version)
    return version


def _copy_model_code(dst: Path) -> Path:
    """MODEL_CODE copied under dst/backprop_bench; returns that package folder."""
    package = dst / "backprop_bench"
    for name in MODEL_CODE:
        target = package / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / name, target)
    return package


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow's artifact progress bars off for the block, unless the user chose otherwise."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


@contextlib.contextmanager
def _no_requirement_check() -> Iterator[None]:
    """MLflow's check that this environment satisfies the model's pip requirements, skipped for the
    block: pip_requirements() pins the versions this interpreter has loaded, so it cannot fail, and
    it costs about 0.1 s a model (MLflow rebuilds its map of every installed distribution's modules
    for each requirement), a second per study stage."""
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def _under(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p
