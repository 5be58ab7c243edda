"""RunKey: one name per run, rendered the same way everywhere."""

from __future__ import annotations

import dataclasses

import pytest

from backprop_bench.results.key import RunKey


def test_every_form_of_a_runs_name():
    key = RunKey("torch", "cpu", "sequential", "native", 1)
    assert key.cell == "torch-sequential-cpu"
    assert key.name == "torch-sequential-cpu-native-s1"
    assert key.stage == "torch-cpu"
    assert key.folder == "runs/torch-cpu/sequential-native-s1"
    assert key.fields() == {
        "cell": "torch-sequential-cpu",
        "framework": "torch",
        "device": "cpu",
        "strategy": "sequential",
        "mode": "native",
        "seed": 1,
    }


def test_a_key_is_frozen_and_hashable():
    key = RunKey("numpy", "cpu", "parallel", "controlled", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.seed = 1
    assert len({key, RunKey("numpy", "cpu", "parallel", "controlled", 0)}) == 1


def test_the_composed_config_names_its_run(small_cfg):
    from backprop_bench.training.config import to_components

    c = to_components(small_cfg("strategy=sequential", "train.seed=3", "train.mode=native"))
    assert c.key == RunKey("numpy", "cpu", "sequential", "native", 3)
