"""Every config option composes and validates; mistakes fail early with a useful message."""

from __future__ import annotations

import pytest
from conftest import compose
from hydra.errors import ConfigCompositionException, MissingConfigException

from backprop_bench.training.config import CONF_DIR, to_components

GROUPS = ("data", "model", "framework", "strategy", "device", "optimizer", "train", "tracking", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose(f"{group}={option}")
    c = to_components(cfg)
    if group in ("framework", "strategy", "device"):
        assert getattr(cfg, group).name == option
        assert getattr(c.key, group) == option  # framework names may hold a "-" (keras-jax)
        assert c.key.cell == f"{c.key.framework}-{c.key.strategy}-{c.key.device}"
    if group == "data":
        assert c.data.name == option


def test_defaults_are_the_study_model():
    c = to_components(compose())
    assert c.spec.sizes == (784, 128, 64, 10)
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum) == ("momentum", 0.01, 0.9)
    assert c.train.batch_size == 64 and c.train.dtype == "float32"
    assert c.init.seed == c.train.seed  # the weights follow train.seed by default
    assert c.key.cell == "numpy-parallel-cpu"


def test_init_seed_follows_train_seed():
    assert to_components(compose("train.seed=7")).init.seed == 7
    assert to_components(compose("train.seed=7", "model.init.seed=3")).init.seed == 3


def test_worked_example_preset_spells_out_the_tutorial():
    c = to_components(compose("experiment=worked_example_222"))
    assert c.spec.sizes == (2, 2, 2) and c.spec.loss == "half_sse" and not c.spec.train_biases
    assert c.init.weights == [[[0.15, 0.25], [0.20, 0.30]], [[0.40, 0.50], [0.45, 0.55]]]
    assert c.init.biases == [0.35, 0.60]
    assert (c.optimizer.name, c.optimizer.lr) == ("sgd", 0.5)
    assert (c.train.batch_size, c.train.dtype, c.train.shuffle) == (1, "float64", False)


def test_preset_values_can_still_be_overridden():
    c = to_components(compose("experiment=mnist_784_128_64_10", "train.epochs=3", "framework=torch"))
    assert c.train.epochs == 3 and c.framework.name == "torch" and c.train.batch_size == 64


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as err:
        compose("framework=foo")
    msg = str(err.value)
    assert "framework/foo" in msg and "Available options in 'framework'" in msg
    for name in ("numpy", "torch", "tensorflow", "keras"):
        assert name in msg


def test_typo_in_a_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="train.epoch"):
        compose("train.epoch=3")


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="train.epochs=abc"):
        compose("train.epochs=abc")


@pytest.mark.parametrize(
    "override,field,rule",
    [
        ("train.epochs=-1", "train.epochs=-1", ">= 1"),
        ("train.batch_size=0", "train.batch_size=0", ">= 1"),
        ("train.dtype=float16", "train.dtype='float16'", "float32, float64"),
        ("optimizer.lr=0", "optimizer.lr=0.0", "> 0"),
        ("framework.name=mxnet", "framework.name='mxnet'", "numpy, torch, tensorflow, keras, jax"),
        ("data.path=null", "data.path=None", "needs the processed .npz"),
        ("optimizer.momentum=1.0", "optimizer.momentum=1.0", "in [0, 1)"),
        ("strategy.name=diagonal", "strategy.name='diagonal'", "parallel, sequential"),
        ("device.name=tpu", "device.name='tpu'", "cpu, cuda, auto"),
        ("framework.steps_per_execution=4", "framework.steps_per_execution=4", "is a Keras option"),
        ("framework.steps_per_execution=0", "framework.steps_per_execution=0", ">= 1"),
        ("regularizer.dropout=1.0", "regularizer.dropout[0]=1.0", "in [0, 1)"),
        ("regularizer.dropout=[0.2,-0.1]", "regularizer.dropout[1]=-0.1", "in [0, 1)"),
        ("regularizer.dropout=[0.2]", "regularizer.dropout=[0.2]", "one rate, or one per hidden layer (2)"),
        ("regularizer.l1=-0.01", "regularizer.l1=-0.01", ">= 0"),
        ("regularizer.l2=-1", "regularizer.l2=-1.0", ">= 0"),
        ("schedule.name=linear", "schedule.name='linear'", "constant, step, exponential, cosine"),
        ("schedule.warmup_epochs=10", "schedule.warmup_epochs=10", "below train.epochs=10"),
        ("callbacks.early_stopping.monitor=loss", "callbacks.early_stopping.monitor='loss'", "val_loss, val_accuracy"),
        ("callbacks.reduce_on_plateau.factor=2", "callbacks.reduce_on_plateau.factor=2.0", "in (0, 1)"),
        ("optimizer.weight_decay=0.1", "optimizer.weight_decay=0.1", "decoupled decay for adam"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(override, field, rule):
    cfg = compose(override)  # composes: the rule is a value rule, checked first thing by the app
    with pytest.raises(ValueError) as err:
        to_components(cfg)
    assert field in str(err.value) and rule in str(err.value)


def test_advanced_training_composes_into_specs():
    c = to_components(compose("experiment=mnist_advanced"))
    assert c.regularization.dropout == (0.2, 0.0) and c.optimizer.name == "adam"
    assert c.training.early_stopping.monitor == c.training.plateau.monitor == "val_loss"
    c = to_components(compose("regularizer=l2", "schedule=cosine", "optimizer=adamw", "regularizer.dropout=0.1"))
    assert (c.regularization.l2, c.regularization.dropout) == (1e-4, (0.1, 0.1))
    assert (c.training.schedule.name, c.training.plateau, c.optimizer.weight_decay) == ("cosine", None, 0.01)


@pytest.mark.parametrize("framework", ["keras", "keras-jax", "keras-torch"])
def test_steps_per_execution_is_fine_for_keras(framework):
    """A Keras option, for Keras on each backend (KerasTorchBackend itself refuses more than 1)."""
    c = to_components(compose(f"framework={framework}", "framework.steps_per_execution=4"))
    assert c.framework.steps_per_execution == 4


def test_the_schema_holds_no_rules():
    """Value rules run once, in to_components: building the schema objects checks only types."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_object(compose("train.epochs=-1", "optimizer.lr=0", "framework.name=mxnet"))
    assert (c.train.epochs, c.optimizer.lr, c.framework.name) == (-1, 0.0, "mxnet")


def test_model_rules_come_from_mlpspec():
    with pytest.raises(ValueError, match="model.hidden_activation='gelu'"):
        to_components(compose("model.hidden_activation=gelu"))


def test_launcher_configs_compose():
    launcher = compose("hydra/launcher=joblib_local", hydra_node=True).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2
    assert compose("hydra/launcher=joblib_local", "hydra.launcher.n_jobs=4", hydra_node=True).hydra.launcher.n_jobs == 4
    callbacks = compose(hydra_node=True).hydra.callbacks
    assert callbacks.mlflow_sweep._target_ == "backprop_bench.tracking.sweep.SweepCallback"
    # The SLURM preset extends the submitit plugin's node (the cluster extra), which types its fields.
    slurm = compose("hydra/launcher=slurm", hydra_node=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.timeout_min >= 5


def test_every_framework_has_its_config_option():
    from backprop_bench.backends import FRAMEWORKS

    assert options("framework") == sorted(FRAMEWORKS)
