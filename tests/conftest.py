"""Shared fixtures: a tiny processed dataset, a temp MLflow store, the real config shrunk.

Like lightning-hydra-template: tests compose the project's real conf/ and then shrink it
(tiny data, 2 epochs, a temp sqlite tracking store, a temp out_dir), so the config the
tests run is the config users run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_npz(path: Path, n_train: int = 64, n_val: int = 16, n_test: int = 32, seed: int = 0) -> Path:
    """A learnable 784-pixel, 10-class set in the processed format (docs/architecture.md).

    Each class lights up its own block of pixels; pixels are integers/255 like preprocess
    makes them, so the test split can be written back to a canonical CSV exactly.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        y = np.arange(n) % 10
        rng.shuffle(y)
        pixels = rng.integers(0, 60, size=(n, 784))
        for row, label in enumerate(y):
            pixels[row, label * 78 : label * 78 + 78] += 180
        arrays[f"x_{split}"] = (pixels.astype(np.float32) / np.float32(255.0)).astype(np.float32)
        arrays[f"y_{split}"] = y.astype(np.int64)
    np.savez(path, **arrays)
    return path


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One raw split as the data stages read and write it: x (n, 784) uint8 pixels 0-255, y (n,) labels 0-9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 784)).astype(np.uint8), np.arange(n) % 10


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return make_tiny_npz(tmp_path / "tiny.npz")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """The backend tests' tiny set, for their 6-5-4-3 models (backend_cases.fit trains on it):
    x (10, 6) standard normal, y (10,) labels 0-2. Ten rows: batch 4 ends on a short batch."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 6)), rng.integers(0, 3, 10)


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite file, made once: creating the schema takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, empty_mlflow_db) -> str:
    """A fresh sqlite store of its own; $MLFLOW_TRACKING_URI is cleared so nothing leaks to a real server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(empty_mlflow_db, db)
    return f"sqlite:///{db}"


def compose(*overrides: str, hydra_node: bool = False):
    """The real config from conf/, with overrides (no Hydra app, no HydraConfig)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from backprop_bench.training.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def shrunk(npz: Path, out_dir: Path, uri: str | None, *overrides: str) -> list[str]:
    """Overrides that make the default config tiny and keep every output under tmp."""
    tracking = [f"tracking.uri={uri}"] if uri else ["tracking=off"]
    return [
        f"data.path={npz}",
        "train.epochs=2",
        "train.batch_size=16",
        f"out_dir={out_dir}",
        *tracking,
        *overrides,
    ]


@pytest.fixture
def small_cfg(tiny_npz, tmp_path):
    """compose() of the shrunk default config; extra overrides as arguments, tracking off by default."""

    def make(*overrides: str, uri: str | None = None):
        return compose(*shrunk(tiny_npz, tmp_path / "out", uri, *overrides))

    return make


def run_app(module: str, *args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 600):
    """`python -m <module> args...` in a subprocess; returns CompletedProcess (never raises on rc)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_in_process(cfg, root: Path, sweep: dict | None = None) -> dict:
    """What the Hydra entry point does, minus Hydra: validate, listen, run; metrics.json's dict."""
    from omegaconf import OmegaConf

    from backprop_bench.tracking.listener import for_run
    from backprop_bench.training.config import to_components
    from backprop_bench.training.run import run

    c = to_components(cfg)
    listener = for_run(c, root, OmegaConf.to_container(cfg, resolve=True), sweep or {})
    return run(c, Path(c.out_dir), root, listener).to_dict()


FRAMEWORK_NAMES = ("torch", "tensorflow", "keras", "jax")  # what a NumPy run must never import


def frameworks_imported_by(code: str, timeout: float = 300) -> list[str]:
    """Run code in a fresh interpreter; the frameworks (FRAMEWORK_NAMES) it left imported, sorted."""
    names = list(FRAMEWORK_NAMES)
    probe = (
        f"\nimport json as _j, sys as _s\nprint('IMPORTED', _j.dumps(sorted(m for m in {names!r} if m in _s.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    last = [line for line in out.stdout.splitlines() if line.startswith("IMPORTED ")][-1]
    return json.loads(last.removeprefix("IMPORTED "))


class LoopbackHTTP:
    """Base of the tests' web servers: a ThreadingHTTPServer on 127.0.0.1 and a free port, served
    from a daemon thread inside a with block. A subclass calls listen(Handler) in __init__."""

    def listen(self, handler: type) -> None:
        from http.server import ThreadingHTTPServer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def stop_session(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM a server started with start_new_session=True, and its workers (its session);
    SIGKILL what is left after grace_s."""
    import signal

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def services():
    """The team stack (scripts/services.sh), up in a private state folder on free ports for the
    module that asks for it; down after. Skips with the reason where it cannot run."""
    from services_stack import cannot_run, running_stack

    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    with running_stack() as stack:
        yield stack


# make test runs the suite on two pytest-xdist workers (--dist loadgroup). The modules that
# start the team stack share one state folder, its fixed ports and the DVC remote, so they run
# on one worker, one after another.
ONE_WORKER_MODULES = {"test_services", "test_cluster", "test_load", "test_dvc_team"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group("team-stack"))
    heavy_first(items)


def heavy_first(items: list) -> None:
    """The modules with slow tests first, each kept whole (its module fixtures set up once), in place:
    xdist hands out tests in this order, so the long ones start early and the many short ones fill
    in at the end, and the two workers finish together rather than one waiting on a late long test."""
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in heavy)  # stable: the order within stays
