"""gpu-check's probe (scripts/gpu_check.sh): which frameworks can run on a device here.

    python scripts/gpu_check_probe.py cuda            (every framework, each in a process of its own)
    python scripts/gpu_check_probe.py cuda keras-jax  (one)

One line per framework: "not installed", "runs on cuda: <GPU>" or why not, then the
framework's own view of CUDA (torch.cuda, jax.devices(), CuPy, TensorFlow's GPUs). Each
backend is built the way a run builds it, so a framework listed here can run the study.
Last line: FRAMEWORKS <the ones that can>. Exit 1 if a backend failed other than by
lacking the device (DeviceUnavailable) or its packages (ImportError).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from backprop_bench.backends import FRAMEWORKS, DeviceUnavailable, backend_class
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

NEEDS = {
    "numpy": "cupy",  # numpy runs on cuda through CuPy
    "torch": "torch",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "jax": "jax",
    "keras-jax": "keras",  # and jax, which the backend imports (an ImportError is "not installed")
    "keras-torch": "keras",
}


def view(framework: str) -> str:
    """The framework's own answer to "which CUDA GPUs?" (its backend imported it already)."""
    if framework == "numpy":
        if importlib.util.find_spec("cupy") is None:
            return "cupy: not installed"
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        names = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
        return f"cupy {cupy.__version__}: {n} CUDA device(s) {names}"
    if framework == "torch":
        import torch

        ok = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if ok else "-"
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}): cuda.is_available()={ok}, {name}"
    if framework.startswith("keras-"):
        import keras

        return f"{framework} (keras {keras.__version__} on {keras.backend.backend()}): {view(framework[6:])}"
    if framework == "jax":
        import jax

        return f"jax {jax.__version__}: devices()={jax.devices()}"
    import tensorflow as tf

    return f"{framework} (tensorflow {tf.__version__}): GPUs {tf.config.list_physical_devices('GPU')}"


def probe(framework: str, device: str) -> tuple[bool, bool]:
    """Print what `framework` does on `device`; (it runs there, it failed unexpectedly)."""
    needs = "numpy" if framework == "numpy" and device == "cpu" else NEEDS[framework]
    if importlib.util.find_spec(needs) is None:
        print(f"{framework}: not installed ({needs})")
        return False, False
    spec = MLPSpec((4, 3, 2))
    runs = error = False
    try:
        backend = backend_class(framework)(spec, init_params(spec, InitSpec()), OptimizerSpec("sgd"), device=device)
        print(f"{framework}: runs on {backend.device}: {backend.info().get('device_name', '?')}")
        runs = backend.device == device
    except ImportError as err:  # e.g. keras without TensorFlow
        print(f"{framework}: not installed ({err})")
        return False, False
    except DeviceUnavailable as err:
        print(f"{framework}: no {device}: {err}")
    except Exception as err:  # a bug or a broken install: the check fails on it
        print(f"{framework}: ERROR building the backend on {device}: {type(err).__name__}: {err}")
        error = True
    try:
        print(f"    {view(framework)}")
    except Exception as err:
        print(f"    {framework}'s view: {type(err).__name__}: {err}")
    return runs, error


def main(device: str) -> int:
    """Each framework in a process of its own: Keras picks its backend once per process (keras on
    TensorFlow, keras-jax, keras-torch), and one framework's import cannot hide another's."""
    usable, errors = [], 0
    for framework in FRAMEWORKS:
        out = subprocess.run([sys.executable, __file__, device, framework], capture_output=True, text=True)
        lines = out.stdout.splitlines()
        print("\n".join(line for line in lines if line not in ("RUNS", "FAILED")) or out.stderr.strip()[-2000:])
        usable += [framework] if "RUNS" in lines else []
        errors += out.returncode != 0 or "FAILED" in lines
    print("FRAMEWORKS", *usable)
    return 1 if errors else 0


def main_one(device: str, framework: str) -> int:
    runs, error = probe(framework, device)
    print("RUNS" if runs else "", "FAILED" if error else "", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else main_one(*sys.argv[1:3]))
