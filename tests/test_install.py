"""The package installs and runs outside the checkout: a wheel of the project, installed into
a fresh virtual environment, runs `backprop-bench train.epochs=1 tracking=off` from an empty
folder (the Hydra configs ship inside the package; the default data is made from the embedded
sample, as the pipeline's defaults make it).

The fresh environment borrows the project venv's third-party packages through a .pth line, so
the test installs no framework again and needs no network; backprop_bench itself comes only
from the wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PURELIB = Path(sysconfig.get_paths()["purelib"])  # the project venv's site-packages


def test_the_embedded_defaults_are_params_yaml_s():
    shipped = yaml.safe_load((ROOT / "src/backprop_bench/data/embedded.yaml").read_text())["data"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]
    assert {k: params[k] for k in shipped} == shipped


def test_the_wheel_ships_the_configs_and_py_typed(tmp_path):
    wheel = build_wheel(tmp_path)
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "backprop_bench/conf/config.yaml" in names and "backprop_bench/conf/train/default.yaml" in names
    assert "backprop_bench/py.typed" in names and "backprop_bench/data/embedded.yaml" in names


def build_wheel(tmp_path: Path) -> Path:
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("backprop_bench-*.whl")
    return wheel


@pytest.mark.slow
def test_pip_install_then_train_from_an_empty_folder(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "borrowed.pth").write_text(f"{PURELIB}\n")  # numpy, hydra, ... but not the editable backprop_bench
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    empty = tmp_path / "somewhere"
    empty.mkdir()
    where = subprocess.check_output(
        [python, "-c", "import backprop_bench; print(backprop_bench.__file__)"], cwd=empty, text=True
    )
    assert Path(where.strip()).is_relative_to(site), where  # the installed copy, not the checkout
    app = venv / "bin" / "backprop-bench"
    done = subprocess.run(
        [str(app), "train.epochs=1", "tracking=off"], cwd=empty, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "making it from the embedded MNIST sample" in done.stdout + done.stderr
    (found,) = (empty / "outputs").rglob("metrics.json")  # Hydra's run folder: out_dir is null by default
    metrics = json.loads(found.read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 1 and metrics["test_accuracy"] > 0.5


def test_pyproject_requires_the_mlflow_major_version_the_code_uses():
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (mlflow,) = [Requirement(d) for d in deps if Requirement(d).name == "mlflow"]
    # logged models (tracking/columns.py) exist from MLflow 3 on; no 2.x may satisfy the range
    assert not mlflow.specifier.contains("2.99.0") and mlflow.specifier.contains("3.17.2")
