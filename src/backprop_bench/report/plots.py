"""Every figure the project draws: a run's curves and confusion matrix (MLflow artifacts),
and the report's loss curves, time and accuracy bars and disagreements (compare stage).

matplotlib is imported inside the functions, through ``Figure`` (no pyplot: no GUI
backend, no global figure state), so importing this module costs nothing. Each PNG is
written atomically (core/files.py atomic_write).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backprop_bench.backends import FRAMEWORKS
from backprop_bench.core.files import atomic_write
from backprop_bench.results.metrics import FINISHED, EpochStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# one per framework, in FRAMEWORKS' order (Keras on JAX and on torch: Keras's green, lighter and darker)
COLORS = dict(
    zip(FRAMEWORKS, ("tab:blue", "tab:red", "tab:orange", "tab:green", "tab:purple", "yellowgreen", "darkgreen"))
)
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


def plot_loss_bands(runs: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Train loss per epoch, one panel per mode: per framework x strategy (x device, when there
    are several) the mean over seeds as a line and the min-max over seeds as a band.

    A run is compare's dict: framework, strategy, device, mode, status and, when finished,
    history (columns epoch and train_loss, each (E,)). Seeds of unequal length are cut to the shortest.
    """
    from matplotlib.ticker import MaxNLocator

    curves: dict[tuple[str, str, str, str], list[Mapping[str, np.ndarray]]] = {}
    for r in runs:
        if r["status"] == FINISHED:
            key = (r.get("mode", "controlled"), r["framework"], r["strategy"], r["device"])
            curves.setdefault(key, []).append(r["history"])
    modes = list(dict.fromkeys(k[0] for k in curves)) or ["nothing finished"]
    several_devices = len({k[3] for k in curves}) > 1
    fig = _figure((6.5 * len(modes), 4.5))
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)[0]
    for (mode, framework, strategy, device), histories in curves.items():
        n = min(len(h["train_loss"]) for h in histories)
        losses = np.stack([h["train_loss"][:n] for h in histories])  # (seeds, epochs)
        epochs, color = histories[0]["epoch"][:n], COLORS.get(framework, "tab:gray")
        label = f"{framework} {strategy}" + (f" {device}" if several_devices else "") + f" ({len(histories)} seeds)"
        ax = axes[modes.index(mode)]
        ax.plot(epochs, losses.mean(axis=0), LINESTYLES.get(strategy, ":"), color=color, marker=".", label=label)
        ax.fill_between(epochs, losses.min(axis=0), losses.max(axis=0), color=color, alpha=0.15, linewidth=0)
    for ax, mode in zip(axes, modes):
        ax.set(title=f"{mode} mode", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize=8)
    axes[0].set_ylabel("train loss (cross-entropy)")
    fig.suptitle("Train loss per epoch: mean over seeds, band = min to max (solid: parallel, dashed: sequential)")
    fig.tight_layout()
    return _save(fig, path)


def plot_interval_bars(
    rows: Sequence[Mapping[str, Any]], key: str, path: str | Path, label: str, spec: str = ".2f", scale: float = 1.0
) -> Path:
    """Horizontal bars of rows' ``key`` (mean x scale) with whiskers of its 95 % interval: one group
    per framework x strategy (x device, when there are several), one bar per mode (native hatched).

    A row is compare's table row: framework, strategy, device, mode, status and ``key``, an object with
    mean, half_width and n (stats.Interval), or None when no seed finished. When every whisker is
    narrow next to the bars (test accuracy), the axis zooms to the values and says it does not start at 0.
    The axis fits the bars, not the whiskers: a whisker wider than that (a few seeds, one slow
    first epoch) runs to the edge, and its label stops at 70 % of the axis, on a white ground.
    """
    from matplotlib.patches import Patch

    several_devices = len({r["device"] for r in rows}) > 1
    groups = list(dict.fromkeys((r["framework"], r["strategy"], r["device"]) for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    height = 0.8 / len(modes)
    fig = _figure((9, 0.38 * len(rows) + 0.3 * len(groups) + 1.5))
    ax = fig.subplots()
    done = [r for r in rows if r[key] is not None]
    means = [r[key].mean * scale for r in done]
    labels = []  # (whisker's end, y, text): placed once the axis' limits are known
    for r in rows:
        g, k = groups.index((r["framework"], r["strategy"], r["device"])), modes.index(r["mode"])
        y = g + (k - (len(modes) - 1) / 2) * height
        if r[key] is None:
            ax.text(0, y, f" {r['mode']}: {r['status']}", va="center", fontsize=8, color="tab:red")
            continue
        mean, hw = r[key].mean * scale, (r[key].half_width * scale if r[key].n > 1 else 0.0)
        color = COLORS.get(r["framework"], "tab:gray")
        hatch = "//" if r["mode"] == "native" else None
        ax.barh(y, mean, height=height * 0.9, color=color, alpha=0.75, hatch=hatch, edgecolor="black", linewidth=0.5)
        ax.errorbar(mean, y, xerr=hw, fmt="none", ecolor="black", capsize=3, linewidth=1)
        text = f"{mean:{spec}}" + (f" ± {hw:{spec}}" if r[key].n > 1 else "") + f"  ({r['mode']}, n={r[key].n})"
        labels.append((mean + hw, y, text))
    ax.set_yticks(range(len(groups)), [" ".join(g if several_devices else g[:2]) for g in groups])
    ax.invert_yaxis()
    xlabel = label
    if means and min(means) > 0 and (max(means) - min(means)) < 0.2 * max(means):  # zoom: bars differ by little
        low = min(r[key].mean * scale - (r[key].half_width * scale if r[key].n > 1 else 0) for r in done)
        span = max(max(means) - low, 0.01 * max(means))
        ax.set_xlim(low - 1.5 * span, max(means) + 2.5 * span)
        xlabel += " (axis does not start at 0)"
    elif means:
        ax.set_xlim(0, 1.45 * max(means))
    left, right = ax.get_xlim()
    for end, y, text in labels:
        ground = dict(facecolor="white", edgecolor="none", pad=0) if end > left + 0.7 * (right - left) else None
        ax.text(min(end, left + 0.7 * (right - left)), y, "  " + text, va="center", fontsize=8, bbox=ground)
    handles = [
        Patch(facecolor="white", edgecolor="black", hatch="//" if m == "native" else None, label=m) for m in modes
    ]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set(xlabel=xlabel, title=f"{label}: mean over seeds, whiskers = 95 % interval")
    return _save(fig, path)


def plot_disagreements(
    predictions: Mapping[str, np.ndarray],
    where: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    path: str | Path,
    max_digits: int = 8,
    caption: str = "",
) -> Path:
    """Up to max_digits of the test images at ``where`` (indices the frameworks disagree on),
    each captioned with the true label and every framework's prediction, green where right
    and red where wrong. predictions: framework -> (N_test,) labels; x_test (N_test, 784).
    caption: which runs the predictions come from, added to the title."""
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
    title = f"Test digits the frameworks disagree on ({len(shown)} of {len(where)} shown)"
    fig.suptitle(f"{title}\n{caption}" if caption else title, fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------- the stability map (stability stage)


def plot_stability(runs: Sequence[Mapping[str, Any]], limit: float, stall_level: float, path: str | Path) -> Path:
    """Final train loss vs learning rate (both axes log), one line per strategy x batch size, and a
    marker per run's class, the same in every colour: a filled circle learned, an open square stalled,
    an x diverged.

    A run is stability.py's dict: lr, strategy, batch_size, status ("learned", "stalled" or
    "diverged"), final_loss. Stalled runs sit above ``stall_level`` (a dash-dot line); diverged runs
    have no final loss and are drawn above ``limit`` (the blow-up threshold, a dotted line), one row
    of x marks per line so that they do not hide each other. Each line runs up to its first divergence.
    """
    from matplotlib.lines import Line2D

    marks = {  # status -> marker style; the legend's labels
        "learned": (dict(marker="o", markersize=6), "learned"),
        "stalled": (
            dict(marker="s", markersize=10, markerfacecolor="white", markeredgewidth=2),  # big: it sits on lines
            f"stalled (final loss > {stall_level:.3g})",
        ),
        "diverged": (
            dict(marker="x", markersize=8, markeredgewidth=2),
            f"diverged (an epoch's loss > {limit:.3g} or NaN)",
        ),
    }
    fig = _figure((9, 5.5))
    ax = fig.subplots()
    batches = sorted({r["batch_size"] for r in runs})
    colors = dict(zip(batches, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")))
    series = [(b, s) for b in batches for s in ("sequential", "parallel")]
    for k, (b, strategy) in enumerate(series):
        mine = sorted((r for r in runs if (r["batch_size"], r["strategy"]) == (b, strategy)), key=lambda r: r["lr"])
        if not mine:
            continue
        row = limit * 1.2 ** (k + 1)  # this line's row of x marks
        points = [(r["lr"], row if r["status"] == "diverged" else r["final_loss"], r["status"]) for r in mine]
        end = next((i for i, p in enumerate(points) if p[2] == "diverged"), len(points))
        color = colors.get(b, "tab:gray")
        ax.plot(
            *zip(*(p[:2] for p in points[: end + 1])), LINESTYLES[strategy], color=color, label=f"{strategy}, batch {b}"
        )
        for status, (style, _) in marks.items():
            at = [p[:2] for p in points if p[2] == status]
            if at:
                ax.plot(*zip(*at), linestyle="none", color=color, zorder=3, **style)
    ax.axhline(stall_level, color="tab:gray", linestyle="-.", linewidth=1, label=f"stall level ({stall_level:.3g})")
    ax.axhline(limit, color="tab:red", linestyle=":", linewidth=1, label=f"blow-up threshold ({limit:.3g})")
    classes = [Line2D([], [], linestyle="none", color="black", label=label, **style) for style, label in marks.values()]
    ax.set(
        xscale="log", yscale="log", xlabel="learning rate (plain SGD)", ylabel="final train loss (last epoch's mean)"
    )
    ax.set_title("Stability map: solid = parallel, dashed = sequential; colour = batch size")
    ax.legend(
        handles=[*ax.get_legend_handles_labels()[0], *classes], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    return _save(fig, path)


# ---------------------------------------------------------------- the bench's scaling curves

KIND_COLORS = {"plain": "tab:blue", "fastest": "tab:red"}  # a framework's plain and fastest mode
THREAD_STYLES = {True: "--", False: "-"}  # one thread dashed, every core solid


def plot_scaling(
    curves: Sequence[Mapping[str, Any]], batches: Sequence[int], path: str | Path, threads_label: Any = str
) -> Path:
    """samples/s (log) against batch size (log2), one panel per framework: a line
    per mode x threads, the plain mode blue and the fastest red, solid on every core, dashed on one
    thread. A curve is bench/scaling.py's: framework, mode, kind, threads and points (batch,
    samples_per_second or None); a point that did not run leaves a gap. threads_label(threads) names
    a thread count in the legend."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = list(dict.fromkeys(c["framework"] for c in curves)) or ["nothing ran"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure((4.2 * cols, 3.4 * rows))
    # every panel keeps its own batch ticks: a panel above an empty slot is a bottom panel too
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for c in curves:
        ax = axes[panels.index(c["framework"])]
        x = [p["batch"] for p in c["points"]]
        y = [np.nan if p["samples_per_second"] is None else p["samples_per_second"] for p in c["points"]]
        if np.all(np.isnan(y)):  # nothing ran: the panel says so (an all-NaN line breaks the log axis)
            continue
        style = THREAD_STYLES[c["threads"] == 1]
        ax.plot(
            x,
            y,
            style,
            marker="o",
            markersize=3,
            color=KIND_COLORS.get(c["kind"], "tab:gray"),
            label=f"{c['mode']}, {threads_label(c['threads'])}",
        )
    for ax, framework in zip(axes, panels):
        ax.set_title(framework, fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(batches), [str(b) for b in batches], fontsize=8)
        ax.set_xlim(min(batches) / 1.4, max(batches) * 1.4)
        ax.grid(True, which="major", alpha=0.3)
        if ax.has_data():
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 1k, 2k, 5k, 10k, ... as plain numbers
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "did not run (see the report)", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("samples/s (log)")
    for ax in axes[max(0, len(panels) - cols) : len(panels)]:
        ax.set_xlabel("batch size (log2)")
    fig.suptitle("samples/s against batch size: blue plain mode, red fastest; solid all cores, dashed 1 thread")
    fig.tight_layout()
    return _save(fig, path)
