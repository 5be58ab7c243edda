"""Keras 3 on JAX and on PyTorch (keras-jax, keras-torch): parity, the worked example, native mode,
devices, options and imports.

Keras picks its backend once per process, and this process may have Keras on TensorFlow
loaded already, so each framework's cases run in a subprocess of their own
(tests/keras_on_cases.py), one per framework and group, computed once per module and
returned as JSON; the parametrized tests below assert them one by one.
keras-jax compiles its train_step with XLA once per model: its groups are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from backend_cases import STRATEGIES
from conftest import frameworks_imported_by
from keras_on_cases import PARITY
from test_reference import FIRST_LOSS, LOSS_AT_1000

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TOL = 1e-9
FRAMEWORKS = [pytest.param("keras-jax", marks=pytest.mark.slow), "keras-torch"]
_CACHE: dict = {}  # per process: under pytest-xdist, per worker
# One worker for the module (make test: --dist loadgroup), so each group's subprocess runs once
# rather than once on each worker that draws one of its tests (about 50 s for keras-jax's parity).
pytestmark = pytest.mark.xdist_group("keras-on-cases")


def cases(framework: str, group: str) -> dict:
    """The JSON result of `keras_on_cases.py framework group`, run once per module in a fresh process."""
    if (framework, group) not in _CACHE:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run(
            [sys.executable, str(HERE / "keras_on_cases.py"), framework, group],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
            cwd=HERE,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")][-1]
        _CACHE[(framework, group)] = json.loads(line.removeprefix("RESULT "))
    return _CACHE[(framework, group)]


@pytest.fixture(scope="module", params=FRAMEWORKS)
def quick(request) -> tuple[str, dict]:
    return request.param, cases(request.param, "quick")


# ---------------------------------------------------------------- parity with NumPy, float64


@pytest.mark.slow  # 20 runs per framework, each its own model (and, on JAX, its own compilation)
@pytest.mark.parametrize("case", PARITY)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", ["keras-jax", "keras-torch"])
def test_parity_with_numpy_step_by_step(framework, strategy, case):
    """Every step's loss and the final weights, 3 epochs (4 steps each, the last short), 1e-9 relative."""
    loss_err, weight_err, steps = cases(framework, "parity")["parity"][f"{strategy}/{case}"]
    assert steps == 12
    assert loss_err <= TOL and weight_err <= TOL


# ---------------------------------------------------------------- the worked example


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_worked_example_losses(quick, strategy):
    first, last, steps = quick[1]["worked"][strategy]
    assert steps == 1000
    assert first == pytest.approx(FIRST_LOSS, abs=1e-9)
    assert last == pytest.approx(LOSS_AT_1000[strategy], abs=1e-9)


# ---------------------------------------------------------------- native mode


def test_native_init_is_keras_dense_default(quick):
    """GlorotUniform kernels seeded per layer (native_seed), zero biases, within the Glorot bound."""
    native = quick[1]["native"]
    assert native["layer1_is_keras_glorot"] and native["biases_zero"]
    for w, (fan_in, fan_out) in zip(native["init"], [(6, 5), (5, 4), (4, 3)]):
        w = np.asarray(w)
        assert w.shape == (fan_in, fan_out) and np.abs(w).max() <= np.sqrt(6 / (fan_in + fan_out))


def test_native_run_differs_from_controlled_and_repeats_bit_for_bit(quick):
    native = quick[1]["native"]
    assert native["repeat_steps"] and native["repeat_weights"]
    init_distance, trajectory_distance = native["native_vs_controlled"]
    assert init_distance > 0.1 and trajectory_distance > 1e-3
    orders = np.asarray(native["orders"])
    assert all(sorted(o) == list(range(24)) for o in orders.tolist()) and not np.array_equal(orders[0], orders[1])


@pytest.mark.slow
def test_each_keras_backend_draws_its_own_numbers():
    """The same seed, another backend's RNG: keras-jax and keras-torch draw other weights and orders."""
    jax_native, torch_native = (cases(fw, "quick")["native"] for fw in ("keras-jax", "keras-torch"))
    assert not np.array_equal(np.asarray(jax_native["init"][0]), np.asarray(torch_native["init"][0]))
    assert jax_native["orders"] != torch_native["orders"]


# ---------------------------------------------------------------- options, devices, imports


def test_dtype_info_and_model_call(quick):
    framework, r = quick
    options = r["options"]
    assert options["float32"] == ["float32"] and options["float64"] == ["float64"]
    info = options["info"]
    backend = {"keras-jax": "jax", "keras-torch": "torch"}[framework]
    assert info["framework"] == framework and info["framework_version"].startswith("keras 3")
    assert f" / {backend} " in info["framework_version"]
    assert options["model_call_is_predict"]
    assert options["compile_error"] == f"compile=True has no meaning for framework={framework}"


def test_steps_per_execution(quick):
    """Keras on JAX: 3 steps per call give the same run, exactly; Keras on torch takes 1 and says so."""
    framework, r = quick
    if framework == "keras-jax":
        assert r["options"]["spe3_same_run"] == 0.0
    else:
        assert "framework.steps_per_execution=3" in r["options"]["spe3_error"]


def test_keras_on_jax_compiles_its_step_once(quick):
    """New masks, set_lr and restart reuse the compiled train_step (the lr and t are state, not constants)."""
    framework, r = quick
    assert r["compiles"] == (1 if framework == "keras-jax" else None)


def test_cuda_without_a_gpu_raises_device_unavailable(quick):
    framework, r = quick
    if r["devices"]["cuda"] is not None:
        pytest.skip(f"a GPU is present: {framework} ran on {r['devices']['cuda']}")
    assert r["devices"]["error"].startswith(f"device=cuda for framework={framework}:")


def test_the_run_imports_only_its_backend(quick):
    """keras-jax never imports torch or TensorFlow; keras-torch never TensorFlow or JAX (NumPy's reference
    runs included); a second Keras backend in the same process is refused, naming both."""
    framework, r = quick
    expected = {"keras-jax": ["jax", "keras"], "keras-torch": ["keras", "torch"]}[framework]
    assert r["imported_first"] == r["imported_last"] == expected
    loaded = {"keras-jax": "jax", "keras-torch": "torch"}[framework]
    for other, message in r["other_keras"].items():
        assert message and f"framework={other} runs Keras on" in message and f"loaded keras on {loaded}" in message


def test_keras_on_jax_does_not_import_tensorflow():
    """Keras itself, with KERAS_BACKEND=jax: neither TensorFlow nor torch."""
    code = "import os\nos.environ['KERAS_BACKEND'] = 'jax'\nimport keras\nassert keras.backend.backend() == 'jax'"
    assert frameworks_imported_by(code) == ["jax", "keras"]


def cuda_missing(framework: str) -> str:
    """Why this test process sees no GPU for the framework's backend ("" when it does)."""
    if framework == "keras-torch":
        import torch

        return "" if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA GPU"
    import jax

    try:
        jax.devices("cuda")
        return ""
    except RuntimeError as err:
        return f"jax {jax.__version__} has no CUDA backend here: {str(err).splitlines()[0]}"


@pytest.mark.gpu
@pytest.mark.parametrize("framework", ["keras-jax", "keras-torch"])
def test_cuda_parity_float64(framework):
    """Keras on the GPU (every feature, both strategies) against NumPy on the CPU, in float64."""
    if why := cuda_missing(framework):
        pytest.skip(why)
    r = cases(framework, "cuda")["cuda_parity"]
    assert "skip" not in r, r
    for strategy in STRATEGIES:
        loss_err, weight_err, device = r[strategy]
        print(f"cuda parity {framework} {strategy}: losses {loss_err:.1e}, weights {weight_err:.1e}")
        assert device == "cuda" and loss_err <= TOL and weight_err <= TOL
