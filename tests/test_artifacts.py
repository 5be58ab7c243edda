"""artifacts.py: atomic writes, and weights.npz that round-trips with its spec."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from backprop_bench.artifacts import atomic_write, atomic_write_text, load_weights, save_weights, write_json
from backprop_bench.model import InitSpec, MLPSpec, init_params


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "old")
    assert path.read_text() == "old"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()

    def half_then_crash(f):
        f.write(b"new but half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old"  # the old file is untouched
    assert os.listdir(path.parent) == ["f.txt"]  # no temp file left


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_weights_round_trip_with_their_spec(tmp_path):
    spec = MLPSpec((4, 3, 2), "tanh", "softmax", "cross_entropy", train_biases=False)
    params = init_params(spec, InitSpec("glorot_normal", seed=3), "float32")
    save_weights(tmp_path / "w.npz", spec, params)
    spec2, params2 = load_weights(tmp_path / "w.npz")
    assert spec2 == spec
    for (w, b), (w2, b2) in zip(params, params2):
        assert w2.dtype == np.float32 and np.array_equal(w, w2) and np.array_equal(b, b2)


def test_weights_errors_name_the_file_and_key(tmp_path):
    np.savez(tmp_path / "nospec.npz", W0=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="nospec.npz: no 'spec' key"):
        load_weights(tmp_path / "nospec.npz")
    spec = MLPSpec((4, 3, 2))
    params = init_params(spec, InitSpec())
    save_weights(tmp_path / "w.npz", spec, [params[0], (params[1][0][:2], params[1][1])])
    with pytest.raises(ValueError, match=r"w.npz: W1 has shape \(2, 2\), the spec needs \(3, 2\)"):
        load_weights(tmp_path / "w.npz")
