"""The 2-2-2 worked example (docs/reference.md), in every backend under each strategy, float64.

The same sample is presented 1000 times (batch 1), so one epoch is the tutorial's 1000
iterations and ``step_losses`` holds the loss of each, measured before its update.
"""

import numpy as np
import pytest
from backend_cases import BACKENDS, STRATEGIES, make_backend, worked_example

FIRST_LOSS = 0.298371109  # the tutorial's E_total after the first forward pass
LOSS_AT_1000 = {"sequential": 0.0011153760, "parallel": 0.0011157856}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", BACKENDS)
def test_worked_example_losses(framework, strategy):
    spec, params, optimizer, x, t = worked_example()
    backend = make_backend(framework, spec, params, optimizer, strategy=strategy)
    backend.load(np.repeat(x, 1000, axis=0), np.repeat(t, 1000, axis=0))
    mean_loss = backend.train_epoch(np.arange(1000), 1)

    losses = backend.step_losses
    assert losses.shape == (1000,)
    assert losses[0] == pytest.approx(FIRST_LOSS, abs=1e-9)
    assert losses[999] == pytest.approx(LOSS_AT_1000[strategy], abs=1e-9)
    assert mean_loss == pytest.approx(losses.mean(), rel=1e-12)
    # the biases are constant in the worked example
    for (_, b), (_, b0) in zip(backend.params(), params):
        np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("framework", BACKENDS)
def test_worked_example_first_update(framework):
    """After one step both strategies agree on the output layer (the tutorial's w5+ = 0.35891648)
    but not below it: sequential sends the error through the updated W2."""
    spec, params, optimizer, x, t = worked_example()
    after = {}
    for strategy in STRATEGIES:
        backend = make_backend(framework, spec, params, optimizer, strategy=strategy)
        backend.load(x, t)
        backend.train_epoch(np.arange(1), 1)
        after[strategy] = backend.params()
    for strategy in STRATEGIES:
        assert after[strategy][1][0][0, 0] == pytest.approx(0.35891648, abs=1e-8)  # w5+
    assert after["parallel"][0][0][0, 0] == pytest.approx(0.149780716, abs=1e-9)  # w1+ in the tutorial
    assert abs(after["sequential"][0][0][0, 0] - after["parallel"][0][0][0, 0]) > 1e-6
