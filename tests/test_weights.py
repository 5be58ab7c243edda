"""weights.py: weights.npz round-trips with its spec; errors name the file and the key."""

from __future__ import annotations

import numpy as np
import pytest

from backprop_bench.core.specs import InitSpec, MLPSpec, init_params
from backprop_bench.results.weights import load_weights, save_weights


def test_weights_round_trip_with_their_spec(tmp_path):
    spec = MLPSpec((4, 3, 2), "tanh", "softmax", "cross_entropy", train_biases=False)
    params = init_params(spec, InitSpec("glorot_normal", seed=3), "float32")
    save_weights(tmp_path / "w.npz", spec, params)
    spec2, params2 = load_weights(tmp_path / "w.npz")
    assert spec2 == spec
    for (w, b), (w2, b2) in zip(params, params2):
        assert w2.dtype == np.float32 and np.array_equal(w, w2) and np.array_equal(b, b2)


def test_the_same_weights_give_the_same_bytes(tmp_path):
    spec = MLPSpec((4, 3, 2))
    params = init_params(spec, InitSpec(seed=1))
    save_weights(tmp_path / "a.npz", spec, params)
    save_weights(tmp_path / "b.npz", spec, params)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_weights_errors_name_the_file_and_key(tmp_path):
    np.savez(tmp_path / "nospec.npz", W0=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="nospec.npz: no 'spec' key"):
        load_weights(tmp_path / "nospec.npz")
    spec = MLPSpec((4, 3, 2))
    params = init_params(spec, InitSpec())
    save_weights(tmp_path / "w.npz", spec, [params[0], (params[1][0][:2], params[1][1])])
    with pytest.raises(ValueError, match=r"w.npz: W1 has shape \(2, 2\), the spec needs \(3, 2\)"):
        load_weights(tmp_path / "w.npz")
    save_weights(tmp_path / "skipped.npz", spec, [])
    with pytest.raises(ValueError, match=r"skipped.npz: missing key W0 \(a skipped run leaves no weights\)"):
        load_weights(tmp_path / "skipped.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz: no such weights file"):
        load_weights(tmp_path / "nope.npz")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: [(p[0][0] * np.nan, p[0][1]), p[1]], r"w.npz: W0 holds NaN or infinite values"),
        (lambda p: [p[0], (p[1][0], p[1][1].astype(np.int32))], r"w.npz: b1 has dtype int32, expected float"),
    ],
)
def test_weights_must_be_finite_floats(tmp_path, change, message):
    spec = MLPSpec((4, 3, 2))
    save_weights(tmp_path / "w.npz", spec, change(init_params(spec, InitSpec())))
    with pytest.raises(ValueError, match=message):
        load_weights(tmp_path / "w.npz")


def test_a_weights_file_with_a_pickle_is_refused(tmp_path):
    np.savez(tmp_path / "pickle.npz", spec=np.array([{"sizes": [4, 2]}], dtype=object))
    with pytest.raises(ValueError, match=r"pickle.npz: spec: dtype object holds Python objects \(a pickle\)"):
        load_weights(tmp_path / "pickle.npz")
