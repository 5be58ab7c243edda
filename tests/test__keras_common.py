"""_keras_common's own logic: choosing Keras's backend, the import hook, the small helpers.

The Keras parts that need Keras loaded (native mode, fit) are tested through the backends:
test_keras_backend.py and test_native.py in this process (Keras on TensorFlow), and
test_keras_on.py for Keras on JAX and torch, each in a process of its own.
"""

import importlib.util
import sys
import types

import pytest

from backprop_bench.backends import _keras_common as kc


def fake_keras(backend: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: backend))


def test_use_backend_sets_keras_backend_before_the_first_import(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    kc.use_backend("keras-jax")
    assert kc.os.environ["KERAS_BACKEND"] == "jax"  # the framework decides, not a stale environment
    kc.use_backend("keras-torch")
    assert kc.os.environ["KERAS_BACKEND"] == "torch"


def test_use_backend_refuses_a_second_backend_in_one_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", fake_keras("tensorflow"))
    kc.use_backend("keras")  # the loaded one: fine
    with pytest.raises(ImportError, match=r"framework=keras-jax runs Keras on jax, .* loaded keras on tensorflow"):
        kc.use_backend("keras-jax")
    with pytest.raises(ImportError, match="a process runs Keras on one backend"):
        kc.use_backend("keras-torch")


def test_the_hook_hides_a_package_from_import_but_not_from_find_spec():
    """What load_keras puts on sys.meta_path while keras loads: `import name` fails as if not installed;
    find_spec still answers (torch's dynamo probes third-party names with it as it loads)."""
    hide = kc._NotInstalled({"json"})
    saved = sys.modules.pop("json")
    sys.meta_path.insert(0, hide)
    try:
        with pytest.raises(ModuleNotFoundError, match="No module named 'json'"):
            import json  # noqa: F401
        assert importlib.util.find_spec("json").origin is None
        assert "json" not in sys.modules
        import csv  # noqa: F401  (others import as usual)
    finally:
        sys.meta_path.remove(hide)
        sys.modules["json"] = saved


def test_steps_per_execution_and_inputs():
    assert kc.check_steps_per_execution(3) == 3
    with pytest.raises(ValueError, match="steps_per_execution must be >= 1, got 0"):
        kc.check_steps_per_execution(0)
    assert kc.split_inputs("x") == ("x", None)
    assert kc.split_inputs(("x", "m1", "m2")) == ("x", ["m1", "m2"])
    assert kc.native_seed(3, kc.SHUFFLE_SLOT) == 3999 and kc.native_seed(3, 1) == 3001
