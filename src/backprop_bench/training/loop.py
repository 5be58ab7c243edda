"""The training loop every run and every backend shares: ``fit``.

The timing rules it follows: docs/reference.md, "Timing rules"."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from backprop_bench.backends.base import Backend, timed_epoch
from backprop_bench.core.dataset import Dataset
from backprop_bench.core.specs import (
    dropout_masks,
    dropout_rng,
)
from backprop_bench.results.metrics import EpochStats
from backprop_bench.training.callbacks import PLAIN, EarlyStopping, ReduceOnPlateau, Training, check_monitors
from backprop_bench.training.schedules import lr_at
from backprop_bench.training.signals import raise_if_stopped


class Diverged(RuntimeError):
    """The loss became NaN or inf."""


@dataclass(frozen=True)
class FitResult:
    history: list[EpochStats]
    n_train: int
    best_epoch: int | None = None  # early stopping's best epoch (its weights when restored)
    stopped_epoch: int | None = None  # the epoch early stopping stopped after; None: all epochs ran

    @property
    def train_seconds(self) -> float:
        return sum(h.epoch_seconds for h in self.history)

    @property
    def first_epoch_seconds(self) -> float:
        return self.history[0].epoch_seconds

    @property
    def steady_epoch_seconds(self) -> float | None:
        """Median of epochs 2..E; None with one epoch (there is no steady state to report)."""
        rest = [h.epoch_seconds for h in self.history[1:]]
        return float(np.median(rest)) if rest else None

    @property
    def samples_per_second(self) -> float:
        """Steady throughput; the first epoch's when it is the only one."""
        return self.n_train / (self.steady_epoch_seconds or self.first_epoch_seconds)


def batch_orders(n: int, epochs: int, seed: int, shuffle: bool = True) -> Iterator[np.ndarray]:
    """One order of range(n) per epoch: a permutation from one seeded generator, or file order."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        yield rng.permutation(n) if shuffle else np.arange(n)


def fit(
    backend: Backend,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    orders: Iterable[np.ndarray] | None = None,
    eval_train: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    training: Training = PLAIN,
) -> FitResult:
    """Train up to ``epochs`` epochs on data's train split (already ``backend.load``-ed); time and
    evaluate each. Before an epoch: its lr (schedule x plateau) and dropout masks (seeded from
    seed, their own stream); after it: the callbacks. Early stopping may end it sooner, and
    restores the best epoch's weights when asked to.

    orders: one batch order per epoch; None = batch_orders(n, epochs, seed, shuffle), the trainer's own.
    """
    n, n_val = data.x_train.shape[0], len(data.x_val)
    check_monitors(training, n_val)
    history = []
    orders = batch_orders(n, epochs, seed, shuffle) if orders is None else orders
    plateau = ReduceOnPlateau(training.plateau) if training.plateau else None
    stopper = EarlyStopping(training.early_stopping) if training.early_stopping else None
    masks_rng, base_lr = dropout_rng(seed), backend.opt_spec.lr
    for epoch, order in enumerate(orders, start=1):
        raise_if_stopped()
        lr = lr_at(training.schedule, base_lr, epoch, epochs)
        backend.set_lr(plateau.lr(lr) if plateau else lr)
        masks = dropout_masks(masks_rng, n, backend.spec, backend.reg, backend.dtype)  # None without dropout
        train_loss, seconds = timed_epoch(backend, order, batch_size, masks)
        if not math.isfinite(train_loss):
            raise Diverged(_divergence_message(backend, epoch, train_loss, n, batch_size))
        train_acc = backend.evaluate(data.x_train, data.y_train)[1] if eval_train else math.nan
        val_loss, val_acc = backend.evaluate(data.x_val, data.y_val) if n_val else (math.nan, math.nan)
        if n_val and not math.isfinite(val_loss):
            raise Diverged(
                f"diverged in epoch {epoch}: the weights became non-finite (val loss {val_loss}); lr too high?"
            )
        stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc, seconds, n / seconds, backend.lr)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        value = {"val_loss": val_loss, "val_accuracy": val_acc}
        if plateau:
            plateau.end_epoch(epoch, value[plateau.spec.monitor], backend.lr)
        if stopper and stopper.end_epoch(epoch, value[stopper.spec.monitor], backend.params):
            break
    if stopper and stopper.best_params is not None and stopper.best_epoch != len(history):
        backend.set_params(stopper.best_params)  # the weights written and tested are the best epoch's
    return FitResult(history, n, stopper.best_epoch if stopper else None, stopper.stopped_epoch if stopper else None)


def _divergence_message(backend: Backend, epoch: int, loss: float, n: int, batch_size: int) -> str:
    steps = getattr(backend, "step_losses", None)  # only kept with record_steps=True
    if steps is not None and not np.all(np.isfinite(steps)):
        step = int(np.argmin(np.isfinite(steps))) + 1
        return f"diverged at epoch {epoch}, step {step}: loss {steps[step - 1]}; lr too high?"
    n_steps = math.ceil(n / batch_size)
    return (
        f"diverged at epoch {epoch} (of its {n_steps} steps, the backend reports only the mean loss, {loss}; "
        "the first bad step is unknown): lr too high?"
    )
