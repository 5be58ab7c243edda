"""Reduce-on-plateau and early stopping on crafted validation curves: each fires at the epoch
its rule says (worked out by hand in the comments), and fit() applies them: the lr of every
epoch, the stop, and the best epoch's weights restored."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backprop_bench.core.dataset import Dataset
from backprop_bench.core.specs import MLPSpec, OptimizerSpec, Regularization
from backprop_bench.training.callbacks import (
    EarlyStopping,
    EarlyStoppingSpec,
    PlateauSpec,
    ReduceOnPlateau,
    Training,
    check_monitors,
)
from backprop_bench.training.loop import fit
from backprop_bench.training.schedules import ScheduleSpec


def walk_plateau(spec: PlateauSpec, values: list[float], base: float = 1.0) -> tuple[list[float], list[int]]:
    """The lr of each epoch (what fit sets before it) and the epochs whose end reduced it."""
    plateau, lrs = ReduceOnPlateau(spec), []
    for epoch, value in enumerate(values, start=1):
        lrs.append(plateau.lr(base))
        plateau.end_epoch(epoch, value, lrs[-1])
    return lrs, plateau.reductions


def test_plateau_reduces_after_patience_flat_epochs():
    # patience 2: e1, e2 improve; e3 (0.9, not below 0.9) wait 1; e4 wait 2 -> reduce after e4.
    # e5 improves (0.8); e6, e7 wait 1, 2 -> reduce after e7; e8, e9 -> reduce after e9.
    values = [1.0, 0.9, 0.9, 0.95, 0.8, 0.85, 0.86, 0.87, 0.88]
    lrs, reductions = walk_plateau(PlateauSpec(factor=0.5, patience=2, min_delta=0.0), values)
    assert reductions == [4, 7, 9]
    assert lrs == [1.0] * 4 + [0.5] * 3 + [0.25] * 2


def test_plateau_cooldown_and_min_delta_and_floor():
    flat = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # no cooldown: e2, e3 wait 1, 2 -> reduce after e3; e4, e5 -> after e5; e6, e7 -> after e7
    assert walk_plateau(PlateauSpec(factor=0.5, patience=2, min_delta=0.0), flat)[1] == [3, 5, 7]
    # cooldown 2 after each reduction: e4 and e5 only count down; e6, e7 wait 1, 2 -> after e7
    assert walk_plateau(PlateauSpec(factor=0.5, patience=2, cooldown=2, min_delta=0.0), flat)[1] == [3, 7]
    # min_delta 0.1: e2 (0.95) and e3 (0.91) are not 0.1 below the best 1.0 -> reduce after e3;
    # e4 (0.86) is -> the new best; e5 (0.81) waits 1. Without min_delta every epoch improves.
    slow = [1.0, 0.95, 0.91, 0.86, 0.81]
    assert walk_plateau(PlateauSpec(factor=0.5, patience=2, min_delta=0.1), slow)[1] == [3]
    assert walk_plateau(PlateauSpec(factor=0.5, patience=2, min_delta=0.0), slow)[1] == []
    # min_lr: the lr never goes below it, and no reduction is counted once there
    lrs, reductions = walk_plateau(PlateauSpec(factor=0.1, patience=1, min_lr=0.05, min_delta=0.0), flat[:5])
    assert lrs == [1.0, 1.0, 0.1, 0.05, 0.05] and reductions == [2, 3]
    # mode max (val_accuracy): rising values are improvements
    assert walk_plateau(PlateauSpec(monitor="val_accuracy", patience=1, min_delta=0.0), [0.5, 0.6, 0.7])[1] == []


def walk_stopping(spec: EarlyStoppingSpec, values: list[float]) -> EarlyStopping:
    stopper = EarlyStopping(spec)
    for epoch, value in enumerate(values, start=1):
        if stopper.end_epoch(epoch, value, lambda epoch=epoch: f"weights after epoch {epoch}"):
            break
    return stopper


def test_early_stopping_on_val_accuracy_with_min_delta():
    # max mode, min_delta 0.01: e1, e2 improve; e3 (0.605 < 0.61) wait 1; e4 (0.62) improves;
    # e5, e6, e7 wait 1, 2, 3 -> stop after e7; best epoch 4. e8 is never seen.
    values = [0.5, 0.6, 0.605, 0.62, 0.615, 0.6, 0.625, 0.99]
    stopper = walk_stopping(EarlyStoppingSpec("val_accuracy", patience=3, min_delta=0.01), values)
    assert (stopper.best_epoch, stopper.stopped_epoch) == (4, 7)
    assert stopper.best_params == "weights after epoch 4"


def test_early_stopping_that_never_fires_and_nan():
    stopper = walk_stopping(EarlyStoppingSpec(patience=2), [1.0, 0.9, 0.8])
    assert (stopper.best_epoch, stopper.stopped_epoch) == (3, None)
    # NaN never improves: two NaN epochs after the best one stop with patience 2
    stopper = walk_stopping(EarlyStoppingSpec(patience=2), [1.0, math.nan, math.nan, 0.1])
    assert (stopper.best_epoch, stopper.stopped_epoch) == (1, 3)
    assert walk_stopping(EarlyStoppingSpec(restore_best=False), [1.0]).best_params is None


# ---------------------------------------------------------------- through fit()


class CurveBackend:
    """A stand-in whose validation curve is given; its 'weights' after epoch e are filled with e."""

    spec, reg, dtype = MLPSpec((2, 3, 2)), Regularization(), "float64"
    opt_spec = OptimizerSpec("sgd", lr=0.1)

    def __init__(self, val_losses: list[float]):
        self.val_losses, self.epoch, self.lrs, self.restored = list(val_losses), 0, [], None
        self.step_losses = None

    def synchronize(self):
        pass

    def set_lr(self, lr):
        self.lr = lr
        self.lrs.append(lr)

    def train_epoch(self, order, batch_size, masks=None):
        self.epoch += 1
        return 1.0

    def evaluate(self, x, y):
        return self.val_losses[self.epoch - 1], 0.5

    def params(self):
        return [(np.full((2, 3), float(self.epoch)), np.zeros(3)), (np.full((3, 2), float(self.epoch)), np.zeros(2))]

    def set_params(self, params):
        self.restored = params


def tiny(n_val: int = 4) -> Dataset:
    x, y = np.zeros((8, 2)), np.zeros(8, dtype=np.int64)
    return Dataset("tiny", x, y, x[:n_val], y[:n_val], x, y, "0")


def test_fit_applies_schedule_plateau_and_early_stopping():
    # val_loss: e1, e2 improve; e3, e4 flat -> plateau (patience 2) halves the lr after e4;
    # early stopping (patience 3) stops after e5; the best epoch is 2, its weights restored.
    backend = CurveBackend([1.0, 0.5, 0.6, 0.7, 0.8, 0.1, 0.1])
    training = Training(
        ScheduleSpec("exponential", gamma=0.5),
        PlateauSpec(factor=0.5, patience=2, min_delta=0.0),
        EarlyStoppingSpec(patience=3),
    )
    result = fit(backend, tiny(), epochs=7, batch_size=4, seed=0, eval_train=False, training=training)
    # schedule 0.1 * 0.5^(e-1); from e5 on times the plateau's 0.5
    assert backend.lrs == pytest.approx([0.1, 0.05, 0.025, 0.0125, 0.003125])
    assert [h.lr for h in result.history] == backend.lrs  # history.csv's lr column
    assert (len(result.history), result.best_epoch, result.stopped_epoch) == (5, 2, 5)
    assert backend.restored[0][0][0, 0] == 2.0  # the weights of epoch 2


def test_fit_keeps_the_last_weights_when_the_last_epoch_is_best():
    backend = CurveBackend([1.0, 0.5, 0.25])
    result = fit(
        backend,
        tiny(),
        epochs=3,
        batch_size=4,
        seed=0,
        eval_train=False,
        training=Training(early_stopping=EarlyStoppingSpec()),
    )
    assert (result.best_epoch, result.stopped_epoch, backend.restored) == (3, None, None)


def test_a_monitor_needs_a_validation_split():
    training = Training(early_stopping=EarlyStoppingSpec(monitor="val_loss"))
    with pytest.raises(ValueError, match=r"callbacks.early_stopping.monitor='val_loss': needs a validation split"):
        fit(CurveBackend([1.0]), tiny(n_val=0), epochs=1, batch_size=4, seed=0, training=training)
    check_monitors(Training(), 0)  # no callback: no split needed


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PlateauSpec(monitor="loss"), "callbacks.reduce_on_plateau.monitor='loss' is not one of val_loss"),
        (lambda: PlateauSpec(factor=1.0), r"callbacks.reduce_on_plateau.factor=1.0: must be in \(0, 1\)"),
        (lambda: PlateauSpec(patience=0), "callbacks.reduce_on_plateau.patience=0: must be >= 1"),
        (lambda: PlateauSpec(cooldown=-1), "callbacks.reduce_on_plateau.cooldown=-1: must be >= 0"),
        (lambda: EarlyStoppingSpec(mode="up"), "callbacks.early_stopping.mode='up' is not one of auto, min, max"),
        (lambda: EarlyStoppingSpec(min_delta=-1.0), "callbacks.early_stopping.min_delta=-1.0: must be >= 0"),
    ],
)
def test_bad_values_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()
