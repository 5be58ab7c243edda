"""Every figure the project draws: a run's curves and confusion matrix (MLflow artifacts),
and the report's loss curves, time and accuracy bars and disagreements (compare stage).

matplotlib is imported inside the functions, through ``Figure`` (no pyplot: no GUI
backend, no global figure state), so importing this module costs nothing. Each PNG is
written atomically (io.atomic_write).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backprop_bench.backends import FRAMEWORKS
from backprop_bench.io import atomic_write
from backprop_bench.metrics import FINISHED, EpochStats

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = dict(zip(FRAMEWORKS, ("tab:blue", "tab:red", "tab:orange", "tab:green")))  # one per framework
LINESTYLES = {"sequential": "--", "parallel": "-"}


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


# ---------------------------------------------------------------- one run


def plot_curves(history: Sequence[EpochStats], path: str | Path, title: str) -> Path:
    """Loss (left, log scale) and accuracy (right) per epoch, train and val."""
    fig = _figure((10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h.epoch for h in history]
    ax_loss.plot(epochs, [h.train_loss for h in history], label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], label="val")
    ax_acc.plot(epochs, [h.train_accuracy for h in history], label="train")
    ax_acc.plot(epochs, [h.val_accuracy for h in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title=title)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    ax_loss.legend()
    ax_acc.legend()
    return _save(fig, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, path: str | Path, title: str) -> Path:
    """Counts of (true, predicted) label pairs; y_true and y_pred are (N,) int labels."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    fig = _figure((5.5, 5))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        color = "white" if n > counts.max() / 2 else "black"  # readable on dark cells
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(n_classes), yticks=range(n_classes))
    return _save(fig, path)


# ---------------------------------------------------------------- the report (compare's rows)


def plot_loss_curves(cells: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Train and val loss per epoch of every finished cell overlaid, and each cell's train
    loss minus NumPy's (same strategy and device): the curves sit on top of each other when
    the frameworks agree, and the third panel shows by how much they do not.

    A cell is compare's dict: framework, strategy, device, cell, status and, when finished,
    history (columns epoch, train_loss, val_loss, each (E,)).
    """
    from matplotlib.ticker import MaxNLocator

    finished = [c for c in cells if c["status"] == FINISHED]
    numpy_history = {(c["strategy"], c["device"]): c["history"] for c in finished if c["framework"] == "numpy"}
    fig = _figure((15, 4))
    axes = fig.subplots(1, 3)
    for c in finished:
        h, line = c["history"], LINESTYLES.get(c["strategy"], ":")
        style = dict(color=COLORS.get(c["framework"]), marker=".", label=c["cell"])
        axes[0].plot(h["epoch"], h["train_loss"], line, **style)
        axes[1].plot(h["epoch"], h["val_loss"], line, **style)
        ref = numpy_history.get((c["strategy"], c["device"]))
        if ref is not None and len(ref["train_loss"]) == len(h["train_loss"]):
            axes[2].plot(h["epoch"], h["train_loss"] - ref["train_loss"], line, **style)
    titles = ("train loss", "val loss", "train loss minus NumPy's (same strategy, device)")
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].legend(fontsize=8)
    fig.suptitle("Loss per epoch (solid: parallel, dashed: sequential)")
    fig.tight_layout()
    return _save(fig, path)


def plot_time_bars(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Train seconds per row (cell, status, first_epoch_seconds, train_seconds): first epoch vs the rest."""
    fig = _figure((8, 0.45 * len(rows) + 1.2))
    ax = fig.subplots()
    labels = [r["cell"] for r in rows]
    first = [r["first_epoch_seconds"] or 0.0 for r in rows]
    rest = [(r["train_seconds"] or 0.0) - f for r, f in zip(rows, first)]
    ax.barh(labels, first, color="tab:gray", label="first epoch (tracing, compile, warm-up)")
    ax.barh(labels, rest, left=first, color="tab:blue", label="the other epochs")
    _mark_unfinished(ax, rows)
    ax.invert_yaxis()
    ax.set(xlabel="train seconds", title="Training time per cell")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_accuracy_bars(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Test accuracy in % per row (cell, framework, status, test_accuracy as a fraction)."""
    fig = _figure((8, 0.45 * len(rows) + 1.2))
    ax = fig.subplots()
    acc = [100 * (r["test_accuracy"] or 0.0) for r in rows]
    ax.barh([r["cell"] for r in rows], acc, color=[COLORS.get(r["framework"], "tab:gray") for r in rows])
    for y, (r, a) in enumerate(zip(rows, acc)):
        if r["status"] == FINISHED:
            ax.text(a, y, f" {a:.2f}", va="center", fontsize=8)
    _mark_unfinished(ax, rows)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy %", xlim=(0, 105), title="Test accuracy per cell")
    return _save(fig, path)


def _mark_unfinished(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    for y, r in enumerate(rows):
        if r["status"] != FINISHED:
            ax.text(0, y, f" {r['status']}", va="center", fontsize=8, color="tab:red")


def plot_disagreements(
    predictions: Mapping[str, np.ndarray],
    where: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    path: str | Path,
    max_digits: int = 8,
) -> Path:
    """Up to max_digits of the test images at ``where`` (indices the frameworks disagree on),
    each captioned with the true label and every framework's prediction, green where right
    and red where wrong. predictions: framework -> (N_test,) labels; x_test (N_test, 784)."""
    shown = where[:max_digits]
    n_panels = max(len(shown), 1)
    fig = _figure((1.7 * n_panels + 0.5, 3.2))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    if len(shown) == 0:
        axes[0].axis("off")
        message = (
            "fewer than two frameworks finished"
            if len(predictions) < 2
            else f"all frameworks agree on all {len(y_test)} test digits"
        )
        axes[0].text(0.5, 0.5, message, ha="center", va="center")
    for ax, i in zip(axes, shown):
        ax.imshow(x_test[i].reshape(28, 28), cmap="gray_r")  # a row is 784 pixels, row-major 28x28
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"test #{i}, true {y_test[i]}", fontsize=8)
        for k, (framework, pred) in enumerate(predictions.items()):
            right = pred[i] == y_test[i]
            ax.text(
                0.5,
                -0.1 - 0.13 * k,
                f"{framework}: {pred[i]} {'right' if right else 'wrong'}",
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=8,
                color="tab:green" if right else "tab:red",
            )
    fig.suptitle(f"Test digits the frameworks disagree on ({len(shown)} of {len(where)} shown)", fontsize=10)
    return _save(fig, path)
