"""The same config and seed twice gives identical results on the CPU, in every backend.

Identical means bit for bit: same initial weights (NumPy, from the seed), same batch
order (one permutation per epoch from the seed), and no nondeterministic kernel on CPU.
Run in float32, the default dtype.
"""

import numpy as np
import pytest
from backend_cases import BACKENDS, STRATEGIES, make_backend, mnist_like, train

from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params


def run(framework: str, strategy: str, seed: int):
    spec = MLPSpec((784, 32, 16, 10))
    params = init_params(spec, InitSpec("he_normal", seed=seed), "float32")
    x, y = mnist_like(384, seed=seed)
    backend = make_backend(
        framework, spec, params, OptimizerSpec("momentum", lr=0.05), strategy=strategy, dtype="float32"
    )
    epoch_losses, steps = train(backend, x.astype(np.float32), y, epochs=2, batch=64, seed=seed)
    return epoch_losses, steps, backend.params()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", BACKENDS)
def test_same_seed_same_results(framework, strategy):
    first, second = run(framework, strategy, seed=5), run(framework, strategy, seed=5)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    for (w1, b1), (w2, b2) in zip(first[2], second[2]):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    # and the seed matters: otherwise the test above would prove nothing
    other = run(framework, strategy, seed=6)
    assert not np.array_equal(first[0], other[0])
