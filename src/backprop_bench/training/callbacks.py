"""Reduce-on-plateau and early stopping: decisions taken at the end of an epoch, from one
monitored validation metric, written once for every backend (the trainer calls them).

Both count patience as Keras does (act when `patience` epochs in a row have not improved);
reduce-on-plateau's cooldown epochs are ignored altogether, as in PyTorch. An epoch
*improves* when its value beats the best so far by more than min_delta (below it in mode
min, above it in mode max); mode auto is min for val_loss and max for val_accuracy. The
epoch-by-epoch walk-through is in docs/training.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backprop_bench.core.checks import check, check_choice
from backprop_bench.training.schedules import CONSTANT, ScheduleSpec

MONITORS = ("val_loss", "val_accuracy")
MONITOR_MODES = ("auto", "min", "max")  # improvement is a fall (min) or a rise (max); auto: by the monitor


def resolve_mode(monitor: str, mode: str) -> str:
    return ("min" if monitor == "val_loss" else "max") if mode == "auto" else mode


def _check_monitor(option: str, monitor: str, mode: str, min_delta: float) -> None:
    check_choice(f"{option}.monitor", monitor, MONITORS)
    check_choice(f"{option}.mode", mode, MONITOR_MODES)
    check(min_delta >= 0, f"{option}.min_delta", min_delta, "must be >= 0")


class _Best:
    """The best monitored value so far, and whether a new one improves on it."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        self.sign = 1.0 if resolve_mode(monitor, mode) == "min" else -1.0  # compare sign * value, lower wins
        self.min_delta, self.best = min_delta, math.inf

    def improves(self, value: float) -> bool:
        if not math.isfinite(value) or self.sign * value >= self.best - self.min_delta:
            return False
        self.best = self.sign * value
        return True


@dataclass(frozen=True)
class PlateauSpec:
    """Multiply the lr by factor when monitor has not improved for patience epochs; then wait
    cooldown epochs before counting again; never below min_lr."""

    monitor: str = "val_loss"
    mode: str = "auto"
    factor: float = 0.1
    patience: int = 3
    cooldown: int = 0
    min_lr: float = 0.0
    min_delta: float = 1e-4

    def __post_init__(self) -> None:
        _check_monitor("callbacks.reduce_on_plateau", self.monitor, self.mode, self.min_delta)
        check(0 < self.factor < 1, "callbacks.reduce_on_plateau.factor", self.factor, "must be in (0, 1)")
        check(self.patience >= 1, "callbacks.reduce_on_plateau.patience", self.patience, "must be >= 1")
        check(self.cooldown >= 0, "callbacks.reduce_on_plateau.cooldown", self.cooldown, "must be >= 0")
        check(self.min_lr >= 0, "callbacks.reduce_on_plateau.min_lr", self.min_lr, "must be >= 0")


class ReduceOnPlateau:
    """scale (starts at 1) multiplies the schedule's lr; ``lr(scheduled)`` is the lr in effect."""

    def __init__(self, spec: PlateauSpec) -> None:
        self.spec, self.best = spec, _Best(spec.monitor, spec.mode, spec.min_delta)
        self.scale, self.wait, self.cooldown_left = 1.0, 0, 0
        self.reductions: list[int] = []  # the epochs whose end reduced the lr

    def lr(self, scheduled: float) -> float:
        return scheduled if self.scale == 1.0 else max(scheduled * self.scale, self.spec.min_lr)

    def end_epoch(self, epoch: int, value: float, lr_now: float) -> None:
        """After epoch's validation: maybe reduce the lr of the epochs that follow. The cooldown
        epochs after a reduction do not count towards patience (an improvement still sets the best)."""
        improved = self.best.improves(value)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return
        if improved:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.spec.patience and lr_now > self.spec.min_lr:
            self.scale *= self.spec.factor
            self.reductions.append(epoch)
            self.cooldown_left, self.wait = self.spec.cooldown, 0


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop when monitor has not improved for patience epochs; restore_best: end with the
    weights of the best epoch (also when no stop happened)."""

    monitor: str = "val_loss"
    mode: str = "auto"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        _check_monitor("callbacks.early_stopping", self.monitor, self.mode, self.min_delta)
        check(self.patience >= 1, "callbacks.early_stopping.patience", self.patience, "must be >= 1")


class EarlyStopping:
    def __init__(self, spec: EarlyStoppingSpec) -> None:
        self.spec, self.best = spec, _Best(spec.monitor, spec.mode, spec.min_delta)
        self.wait, self.best_epoch, self.stopped_epoch = 0, 0, None
        self.best_params = None  # the best epoch's weights, kept when restore_best

    def end_epoch(self, epoch: int, value: float, params_now) -> bool:
        """After epoch's validation; params_now() gives the current weights. True: stop now."""
        if self.best.improves(value):
            self.wait, self.best_epoch = 0, epoch
            if self.spec.restore_best:
                self.best_params = params_now()
            return False
        self.wait += 1
        if self.wait >= self.spec.patience:
            self.stopped_epoch = epoch
            return True
        return False


@dataclass(frozen=True)
class Training:
    """How the weights are trained beyond the optimizer: the lr schedule and the callbacks
    (None: off). Regularization travels with the backend (Backend.reg)."""

    schedule: ScheduleSpec = CONSTANT
    plateau: PlateauSpec | None = None
    early_stopping: EarlyStoppingSpec | None = None

    @property
    def monitors(self) -> list[tuple[str, str]]:
        """(option, monitored metric) of every callback that is on."""
        on = [
            ("callbacks.reduce_on_plateau.monitor", self.plateau),
            ("callbacks.early_stopping.monitor", self.early_stopping),
        ]
        return [(option, spec.monitor) for option, spec in on if spec is not None]


PLAIN = Training()


def check_monitors(training: Training, n_val: int) -> None:
    """A callback that watches a validation metric needs validation rows."""
    for option, monitor in training.monitors:
        check(n_val > 0, option, monitor, "needs a validation split, and the data has none (data.val_fraction=0?)")
