"""The lr of every epoch for each schedule, warm-up included, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from backprop_bench.training.schedules import ScheduleSpec, lr_at


def lrs(spec: ScheduleSpec, base: float, epochs: int) -> list[float]:
    return [lr_at(spec, base, e, epochs) for e in range(1, epochs + 1)]


def test_constant():
    assert lrs(ScheduleSpec(), 0.1, 4) == [0.1, 0.1, 0.1, 0.1]


def test_step_multiplies_by_gamma_every_step_size_epochs():
    got = lrs(ScheduleSpec("step", step_size=2, gamma=0.5), 0.08, 7)
    assert got == pytest.approx([0.08, 0.08, 0.04, 0.04, 0.02, 0.02, 0.01], rel=1e-15)


def test_exponential_once_per_epoch():
    got = lrs(ScheduleSpec("exponential", gamma=0.9), 1.0, 4)
    assert got == pytest.approx([1.0, 0.9, 0.81, 0.729], rel=1e-15)


def test_cosine_from_base_towards_the_floor():
    # E' = 4 epochs: s = 0, 1, 2, 3 -> (1 + cos(pi s / 4)) / 2 = 1, 0.853553..., 0.5, 0.146446...
    got = lrs(ScheduleSpec("cosine", min_lr=0.001), 0.011, 4)
    by_hand = [0.011, 0.001 + 0.01 * 0.8535533905932737, 0.006, 0.001 + 0.01 * 0.14644660940672624]
    assert got == pytest.approx(by_hand, rel=1e-14)
    assert all(lr > 0.001 for lr in got)  # the floor comes one epoch after the last: no epoch wasted at it


def test_warm_up_is_linear_then_the_schedule_starts_over():
    # 2 warm-up epochs: 0.1 * 1/2, 0.1 * 2/2; then step with s = 0, 1, 2, 3 (step_size 2, gamma 0.1)
    got = lrs(ScheduleSpec("step", warmup_epochs=2, step_size=2, gamma=0.1), 0.1, 6)
    assert got == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.01, 0.01], rel=1e-15)
    # cosine after 1 warm-up epoch: E' = 3, s = 0, 1, 2
    got = lrs(ScheduleSpec("cosine", warmup_epochs=1), 0.3, 4)
    assert got == pytest.approx([0.3, 0.3, 0.15 * (1 + math.cos(math.pi / 3)), 0.15 * (1 + math.cos(2 * math.pi / 3))])
    assert got[2] == pytest.approx(0.225) and got[3] == pytest.approx(0.075)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "linear"}, "schedule.name='linear' is not one of constant, step, exponential, cosine"),
        ({"warmup_epochs": -1}, r"schedule.warmup_epochs=-1: must be >= 0"),
        ({"step_size": 0}, r"schedule.step_size=0: must be >= 1"),
        ({"gamma": 0.0}, r"schedule.gamma=0.0: must be in \(0, 1\]"),
        ({"min_lr": -1e-3}, r"schedule.min_lr=-0.001: must be >= 0"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleSpec(**kwargs)


def test_checks_that_need_the_run():
    with pytest.raises(ValueError, match=r"schedule.warmup_epochs=3: must be below train.epochs=3"):
        ScheduleSpec(warmup_epochs=3).check_run(0.1, 3)
    with pytest.raises(ValueError, match=r"schedule.min_lr=0.1: must be below optimizer.lr=0.1"):
        ScheduleSpec("cosine", min_lr=0.1).check_run(0.1, 5)
    with pytest.raises(ValueError, match=r"epoch=0: must be in 1..5"):
        lr_at(ScheduleSpec(), 0.1, 0, 5)
