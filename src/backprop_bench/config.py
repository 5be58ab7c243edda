"""Config schemas (Hydra structured configs) and the one place config becomes plain objects.

Every config group under ``conf/`` is typed by a dataclass below. ``register_configs()``
stores the top-level ``Config`` as ``schema`` in Hydra's ConfigStore; ``conf/config.yaml``
lists ``schema`` first in its defaults, so each YAML option is merged *into* the typed
node and a typo'd key or a wrong type fails when the config is composed. A wrong option
name (``framework=foo``) fails there too, with Hydra's own "Available options" list.

Value rules (``train.epochs >= 1``, ...) live in the dataclasses' ``__post_init__``; they
run in ``to_components(cfg)``, the first thing the entry point does, before any work.
Messages name the field and the rule, e.g. ``train.epochs=-1: must be >= 1``.

Components never see ``cfg``: ``to_components`` hands them MLPSpec, InitSpec,
OptimizerSpec and these dataclasses as plain, validated Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from backprop_bench.model import DEVICES, DTYPES, STRATEGIES, InitSpec, MLPSpec, OptimizerSpec

FRAMEWORKS = ("numpy", "torch", "tensorflow", "keras")  # same as backends.FRAMEWORKS, no import cost
TOY_DATASETS = ("toy_221", "worked_example_222")  # made in code (dataset.py), no file


def _rule(ok: bool, option: str, value: Any, rule: str) -> None:
    if not ok:
        raise ValueError(f"{option}={value!r}: {rule}")


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    _rule(value in allowed, option, value, f"must be one of {', '.join(allowed)}")


@dataclass
class DataConfig:
    name: str = MISSING  # mnist, fashion_mnist, ... or a toy set made in code (TOY_DATASETS)
    path: Optional[str] = None  # the processed .npz (docs/architecture.md), relative to the project root

    def __post_init__(self) -> None:
        if self.name not in TOY_DATASETS:
            _rule(bool(self.path), "data.path", self.path, f"data.name={self.name} needs the processed .npz path")


@dataclass
class InitConfig:
    scheme: str = "he_uniform"  # model.INITS
    seed: int = II("train.seed")  # one seed for the weights and the batch order, unless overridden
    bias: float = 0.0  # constant initial bias of the random schemes
    weights: Optional[Any] = None  # scheme=explicit: one (in, out) nested list per layer
    biases: Optional[Any] = None  # scheme=explicit: one (out,) list or a scalar per layer


@dataclass
class ModelConfig:
    sizes: List[int] = MISSING  # (in, hidden..., out)
    hidden_activation: str = "relu"
    output_activation: str = "softmax"
    loss: str = "cross_entropy"
    train_biases: bool = True
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class FrameworkConfig:
    name: str = MISSING
    compile: bool = False  # torch.compile / XLA jit / Keras jit_compile, where the backend has one
    steps_per_execution: int = 1  # Keras only

    def __post_init__(self) -> None:
        _choice("framework.name", self.name, FRAMEWORKS)
        _rule(self.steps_per_execution >= 1, "framework.steps_per_execution", self.steps_per_execution, "must be >= 1")


@dataclass
class StrategyConfig:
    name: str = MISSING  # parallel | sequential (DESIGN.md)

    def __post_init__(self) -> None:
        _choice("strategy.name", self.name, STRATEGIES)


@dataclass
class DeviceConfig:
    name: str = MISSING  # cpu | cuda | auto

    def __post_init__(self) -> None:
        _choice("device.name", self.name, DEVICES)


@dataclass
class OptimizerConfig:
    name: str = MISSING  # sgd | momentum | adam: the rule is OptimizerSpec's docstring
    lr: float = 0.01
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _choice("optimizer.name", self.name, ("sgd", "momentum", "adam"))
        _rule(self.lr > 0, "optimizer.lr", self.lr, "must be > 0")
        _rule(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must be in [0, 1)")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0  # batch order (one permutation per epoch) and, by default, the initial weights
    dtype: str = "float32"
    shuffle: bool = True  # False: every epoch walks the samples in file order (seed 000's toy)
    eval_train: bool = True  # evaluate the whole train set after each epoch (train_accuracy)

    def __post_init__(self) -> None:
        _rule(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _rule(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _choice("train.dtype", self.dtype, DTYPES)


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<project root>/mlflow.db.
    # A value here wins over both (e.g. http://mlflow.example:5000, postgresql://...).
    uri: Optional[str] = None
    experiment: str = "backprop-bench"


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    framework: FrameworkConfig = MISSING
    strategy: StrategyConfig = MISSING
    device: DeviceConfig = MISSING
    optimizer: OptimizerConfig = MISSING
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
    framework: FrameworkConfig
    strategy: str
    device: str
    train: TrainConfig
    data: DataConfig
    tracking: TrackingConfig
    out_dir: Optional[str]

    @property
    def cell(self) -> str:
        """The study cell's name, as in docs/architecture.md."""
        return f"{self.framework.name}-{self.strategy}-{self.device}"


def to_components(cfg: DictConfig) -> Components:
    """Validate a composed config and turn it into plain objects. Raises ValueError naming the field."""
    c: Config = OmegaConf.to_object(cfg)  # builds the dataclasses: every __post_init__ rule runs here
    m = c.model
    spec = MLPSpec(tuple(m.sizes), m.hidden_activation, m.output_activation, m.loss, m.train_biases)
    init = InitSpec(m.init.scheme, m.init.seed, m.init.bias, m.init.weights, m.init.biases)
    o = c.optimizer
    optimizer = OptimizerSpec(o.name, o.lr, o.momentum, o.beta1, o.beta2, o.eps)
    return Components(
        spec=spec,
        init=init,
        optimizer=optimizer,
        framework=c.framework,
        strategy=c.strategy.name,
        device=c.device.name,
        train=c.train,
        data=c.data,
        tracking=c.tracking,
        out_dir=c.out_dir,
    )
