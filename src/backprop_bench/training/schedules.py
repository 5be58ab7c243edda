"""Learning-rate schedules: the lr of each epoch as a pure function, the same for every backend.

The trainer asks ``lr_at`` once per epoch and hands the value to the backend (Backend.set_lr)
before the epoch's first step; reduce-on-plateau (callbacks.py) then scales it. Epochs count
from 1. With W warm-up epochs and E epochs in all, epoch e <= W runs at base * e / W, and
the schedule proper starts after them with s = e - W - 1 = 0, 1, ... and E' = E - W epochs:

    constant:     base
    step:         base * gamma ** floor(s / step_size)
    exponential:  base * gamma ** s
    cosine:       min_lr + (base - min_lr) * (1 + cos(pi * s / E')) / 2

so cosine starts at base and would reach min_lr in the epoch after the last (as PyTorch's
CosineAnnealingLR with T_max = E'): no epoch is spent at lr = 0. docs/training.md has a worked table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backprop_bench.core.checks import check, check_choice

SCHEDULES = ("constant", "step", "exponential", "cosine")


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "constant"
    warmup_epochs: int = 0  # linear warm-up in front of any schedule
    step_size: int = 10  # step: epochs between two multiplications by gamma
    gamma: float = 0.1  # step and exponential: the factor
    min_lr: float = 0.0  # cosine: the floor it heads for (reached one epoch after the last)

    def __post_init__(self) -> None:
        check_choice("schedule.name", self.name, SCHEDULES)
        check(self.warmup_epochs >= 0, "schedule.warmup_epochs", self.warmup_epochs, "must be >= 0")
        check(self.step_size >= 1, "schedule.step_size", self.step_size, "must be >= 1")
        check(0 < self.gamma <= 1, "schedule.gamma", self.gamma, "must be in (0, 1]")
        check(self.min_lr >= 0, "schedule.min_lr", self.min_lr, "must be >= 0")

    def check_run(self, base_lr: float, epochs: int) -> None:
        """What only the run's lr and epochs can tell: called when the config is checked."""
        check(
            self.warmup_epochs < epochs,
            "schedule.warmup_epochs",
            self.warmup_epochs,
            f"must be below train.epochs={epochs} (some epochs must follow the warm-up)",
        )
        if self.name == "cosine":
            check(self.min_lr < base_lr, "schedule.min_lr", self.min_lr, f"must be below optimizer.lr={base_lr}")


CONSTANT = ScheduleSpec()


def lr_at(spec: ScheduleSpec, base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of epoch (1..epochs) before any plateau reduction."""
    check(1 <= epoch <= epochs, "epoch", epoch, f"must be in 1..{epochs}")
    w = spec.warmup_epochs
    if epoch <= w:
        return base_lr * epoch / w
    s, span = epoch - w - 1, epochs - w
    if spec.name == "step":
        return base_lr * spec.gamma ** (s // spec.step_size)
    if spec.name == "exponential":
        return base_lr * spec.gamma**s
    if spec.name == "cosine":
        return spec.min_lr + (base_lr - spec.min_lr) * (1 + math.cos(math.pi * s / span)) / 2
    return base_lr
