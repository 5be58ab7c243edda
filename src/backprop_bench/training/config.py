"""The Hydra schema of conf/ (field names, types, defaults; no rules) and ``to_components``.

``register_configs()`` stores ``Config`` as ``schema``, which conf/config.yaml lists first,
so a typo'd key or a wrong type fails when the config is composed. ``to_components(cfg)``,
the entry point's first call, checks every value rule once and hands the run plain objects:
MLPSpec, InitSpec and OptimizerSpec (their own rules) and the nodes below. How the pieces
fit: docs/architecture.md, "Config".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from backprop_bench.backends import FRAMEWORKS, KERAS_BACKENDS
from backprop_bench.core.checks import check, check_choice
from backprop_bench.core.dataset import TOYS
from backprop_bench.core.specs import (
    DEVICES,
    DTYPES,
    MODES,
    STRATEGIES,
    InitSpec,
    MLPSpec,
    OptimizerSpec,
    Regularization,
)
from backprop_bench.results.key import RunKey
from backprop_bench.training.callbacks import EarlyStoppingSpec, PlateauSpec, Training
from backprop_bench.training.schedules import ScheduleSpec

# Each node's defaults are its spec's, so that a value is written down once.


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs ship inside the package


@dataclass
class DataConfig:
    name: str = MISSING  # mnist, fashion_mnist, ... or a toy set made in code (dataset.TOYS)
    path: Optional[str] = None  # the processed .npz, relative to the project root; null for a toy set


@dataclass
class InitConfig:  # -> model.InitSpec
    scheme: str = InitSpec.scheme
    seed: int = II("train.seed")  # one seed for the weights and the batch order, unless overridden
    bias: float = InitSpec.bias
    weights: Optional[Any] = None  # scheme=explicit: one (in, out) nested list per layer
    biases: Optional[Any] = None  # scheme=explicit: one (out,) list or a scalar per layer


@dataclass
class ModelConfig:  # -> model.MLPSpec
    sizes: list[int] = MISSING  # (in, hidden..., out)
    hidden_activation: str = MLPSpec.hidden_activation
    output_activation: str = MLPSpec.output_activation
    loss: str = MLPSpec.loss
    train_biases: bool = MLPSpec.train_biases
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class FrameworkConfig:
    name: str = MISSING  # backends.FRAMEWORKS
    compile: bool = False  # the fast path: torch.compile, XLA, Keras jit_compile, NumPy buffers, a jitted jax epoch
    steps_per_execution: int = 1  # Keras only (keras, keras-jax; keras-torch takes 1): steps per compiled call


@dataclass
class StrategyConfig:
    name: str = MISSING  # core.specs.STRATEGIES


@dataclass
class DeviceConfig:
    name: str = MISSING  # core.specs.DEVICES


@dataclass
class OptimizerConfig:  # -> model.OptimizerSpec, whose docstring is the update rule
    name: str = MISSING
    lr: float = OptimizerSpec.lr
    momentum: float = OptimizerSpec.momentum
    beta1: float = OptimizerSpec.beta1
    beta2: float = OptimizerSpec.beta2
    eps: float = OptimizerSpec.eps
    rho: float = OptimizerSpec.rho
    weight_decay: float = OptimizerSpec.weight_decay


@dataclass
class RegularizerConfig:  # -> model.Regularization, whose docstring is the rule
    dropout: Any = 0.0  # one rate for every hidden layer, or a list with one rate per hidden layer
    l1: float = 0.0
    l2: float = 0.0


@dataclass
class ScheduleConfig:  # -> schedules.ScheduleSpec, whose docstring has the formulas
    name: str = ScheduleSpec.name
    warmup_epochs: int = ScheduleSpec.warmup_epochs
    step_size: int = ScheduleSpec.step_size
    gamma: float = ScheduleSpec.gamma
    min_lr: float = ScheduleSpec.min_lr


@dataclass
class EarlyStoppingConfig:  # -> callbacks.EarlyStoppingSpec
    enabled: bool = False
    monitor: str = EarlyStoppingSpec.monitor
    mode: str = EarlyStoppingSpec.mode
    patience: int = EarlyStoppingSpec.patience
    min_delta: float = EarlyStoppingSpec.min_delta
    restore_best: bool = EarlyStoppingSpec.restore_best


@dataclass
class PlateauConfig:  # -> callbacks.PlateauSpec
    enabled: bool = False
    monitor: str = PlateauSpec.monitor
    mode: str = PlateauSpec.mode
    factor: float = PlateauSpec.factor
    patience: int = PlateauSpec.patience
    cooldown: int = PlateauSpec.cooldown
    min_lr: float = PlateauSpec.min_lr
    min_delta: float = PlateauSpec.min_delta


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    reduce_on_plateau: PlateauConfig = field(default_factory=PlateauConfig)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0  # batch order (one permutation per epoch) and, by default, the initial weights
    dtype: str = "float32"  # model.DTYPES
    shuffle: bool = True  # False: every epoch walks the samples in file order (the 2-2-1 toy)
    eval_train: bool = True  # evaluate the whole train set after each epoch (train_accuracy)
    mode: str = "controlled"  # core.specs.MODES: shared init and batch order, or each framework's own


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<project root>/mlflow.db.
    # A value here wins over both (e.g. http://mlflow.example:5000, postgresql://...).
    uri: Optional[str] = None
    experiment: str = "backprop-bench"
    plots: bool = True  # the per-run curves and confusion-matrix PNGs (~0.8 s a run); the study's report has them all
    register_model: Optional[str] = None  # a name: the run's pyfunc model becomes a new version of it in the registry


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    framework: FrameworkConfig = MISSING
    strategy: StrategyConfig = MISSING
    device: DeviceConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    regularizer: RegularizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    callbacks: CallbacksConfig = MISSING
    train: TrainConfig = MISSING
    tracking: TrackingConfig = MISSING
    # metrics.json, history.csv, weights.npz, predictions.npy go here (relative: to the
    # project root); null = Hydra's run directory.
    out_dir: Optional[str] = None


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent); train.py calls it at import."""
    ConfigStore.instance().store(name="schema", node=Config)


@dataclass(frozen=True)
class Components:
    """Everything a run needs, as plain validated objects: what the trainer works from."""

    spec: MLPSpec
    init: InitSpec
    optimizer: OptimizerSpec
    regularization: Regularization
    training: Training  # lr schedule and callbacks
    framework: FrameworkConfig
    strategy: str
    device: str
    train: TrainConfig
    data: DataConfig
    tracking: TrackingConfig
    out_dir: Optional[str]

    @property
    def key(self) -> RunKey:
        """The run's name in every form: its folder, its MLflow name and tags (results/key.py)."""
        return RunKey(self.framework.name, self.device, self.strategy, self.train.mode, self.train.seed)


def to_components(cfg: DictConfig) -> Components:
    """Check a composed config and turn it into plain objects. Raises ValueError naming the field.

    The one place config values are checked: the specs' constructors check the model,
    init and optimizer fields; the lines below check the rest.
    """
    c: Config = OmegaConf.to_object(cfg)  # the dataclasses above, types already checked by OmegaConf
    m, f, t = c.model, c.framework, c.train
    spec = MLPSpec(tuple(m.sizes), m.hidden_activation, m.output_activation, m.loss, m.train_biases)
    init = InitSpec(m.init.scheme, m.init.seed, m.init.bias, m.init.weights, m.init.biases)
    o = c.optimizer
    optimizer = OptimizerSpec(o.name, o.lr, o.momentum, o.beta1, o.beta2, o.eps, o.rho, o.weight_decay)
    check_choice("framework.name", f.name, FRAMEWORKS)
    check(f.steps_per_execution >= 1, "framework.steps_per_execution", f.steps_per_execution, "must be >= 1")
    check(
        f.steps_per_execution == 1 or f.name in KERAS_BACKENDS,
        "framework.steps_per_execution",
        f.steps_per_execution,
        f"is a Keras option; framework.name={f.name} takes 1",
    )
    check_choice("strategy.name", c.strategy.name, STRATEGIES)
    check_choice("device.name", c.device.name, DEVICES)
    check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    check_choice("train.dtype", t.dtype, DTYPES)
    check_choice("train.mode", t.mode, MODES)
    r = c.regularizer
    dropout = r.dropout if isinstance(r.dropout, (int, float)) else list(r.dropout)
    regularization = Regularization.build(dropout, spec.n_layers - 1, r.l1, r.l2)
    training = to_training(c.schedule, c.callbacks)
    training.schedule.check_run(optimizer.lr, t.epochs)
    check(
        c.data.name in TOYS or bool(c.data.path),
        "data.path",
        c.data.path,
        f"data.name={c.data.name} needs the processed .npz path",
    )
    return Components(
        spec=spec,
        init=init,
        optimizer=optimizer,
        regularization=regularization,
        training=training,
        framework=f,
        strategy=c.strategy.name,
        device=c.device.name,
        train=t,
        data=c.data,
        tracking=c.tracking,
        out_dir=c.out_dir,
    )


def to_training(schedule: ScheduleConfig, callbacks: CallbacksConfig) -> Training:
    """The schedule and the callbacks that are enabled; every value is checked by its spec,
    an off callback's too (a typo there fails now, not when someone turns it on)."""
    e, p = callbacks.early_stopping, callbacks.reduce_on_plateau
    plateau = PlateauSpec(p.monitor, p.mode, p.factor, p.patience, p.cooldown, p.min_lr, p.min_delta)
    stopping = EarlyStoppingSpec(e.monitor, e.mode, e.patience, e.min_delta, e.restore_best)
    return Training(
        ScheduleSpec(schedule.name, schedule.warmup_epochs, schedule.step_size, schedule.gamma, schedule.min_lr),
        plateau if p.enabled else None,
        stopping if e.enabled else None,
    )
