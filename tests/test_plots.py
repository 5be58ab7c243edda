"""plots.py: every figure is a PNG written atomically, with no pyplot state left behind."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from backprop_bench.report import plots
from backprop_bench.report.stats import Interval
from backprop_bench.results.metrics import EpochStats

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 5000


def history(n: int = 4) -> list[EpochStats]:
    return [EpochStats(e, 1.0 / e, 0.5 + 0.1 * e, math.nan, math.nan, 0.1, 1000.0, 0.01) for e in range(1, n + 1)]


def test_run_plots(tmp_path):
    assert is_png(plots.plot_curves(history(), tmp_path / "curves.png", "numpy-parallel-cpu"))
    y = np.arange(20) % 10
    assert is_png(plots.plot_confusion(y, (y + 1) % 10, 10, tmp_path / "confusion.png", "test"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curves.png"]  # no temp files


def test_report_plots(tmp_path):
    y = np.arange(12) % 10
    predictions = {"numpy": y, "torch": np.where(np.arange(12) == 3, (y + 1) % 10, y)}
    x = np.random.default_rng(0).random((12, 784))
    assert is_png(plots.plot_disagreements(predictions, np.array([3]), x, y, tmp_path / "dis.png"))
    assert is_png(
        plots.plot_disagreements(predictions, np.array([3]), x, y, tmp_path / "cap.png", caption="native, seed 0")
    )
    # nothing to show: one panel that says why
    assert is_png(plots.plot_disagreements({"numpy": y}, np.array([], dtype=int), x, y, tmp_path / "none.png"))


def test_a_plot_that_fails_while_saving_leaves_the_old_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def half_then_crash(self, f, **kwargs):
        f.write(PNG)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_then_crash)
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        plots.plot_curves(history(), target, "title")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_importing_plots_does_not_import_matplotlib():
    import subprocess

    code = "import sys, backprop_bench.report.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def interval(mean: float, half_width: float, n: int = 3) -> Interval:
    return Interval(mean, mean - half_width, mean + half_width, half_width, n)


def run(framework: str, strategy: str, mode: str, seed: int, status: str = "finished") -> dict:
    row = dict(framework=framework, strategy=strategy, device="cpu", mode=mode, seed=seed, status=status)
    if status == "finished":
        loss = np.array([1.0, 0.7, 0.5]) + 0.05 * seed + 0.1 * (framework == "torch")
        row["history"] = {"epoch": np.arange(1.0, 4.0), "train_loss": loss}
    return row


def test_loss_bands(tmp_path):
    runs = [
        run(f, s, m, seed, status="missing" if (f, seed) == ("torch", 2) else "finished")
        for f in ("numpy", "torch")
        for s in ("sequential", "parallel")
        for m in ("controlled", "native")
        for seed in range(3)
    ]
    assert is_png(plots.plot_loss_bands(runs, tmp_path / "loss.png"))
    assert is_png(plots.plot_loss_bands([run("numpy", "parallel", "native", 0, "missing")], tmp_path / "none.png"))


def test_interval_bars(tmp_path):
    rows = [
        dict(framework="numpy", strategy="parallel", device="cpu", mode="controlled", status="finished"),
        dict(framework="numpy", strategy="parallel", device="cpu", mode="native", status="finished"),
        dict(framework="torch", strategy="parallel", device="cpu", mode="controlled", status="finished"),
        dict(framework="torch", strategy="parallel", device="cpu", mode="native", status="missing"),
        dict(framework="keras", strategy="parallel", device="cuda", mode="controlled", status="skipped"),
    ]
    values = [interval(0.91, 0.002), interval(0.905, 0.004), interval(0.912, math.nan, n=1), None, None]
    accuracy = [r | {"test_accuracy": v} for r, v in zip(rows, values)]
    assert is_png(
        plots.plot_interval_bars(accuracy, "test_accuracy", tmp_path / "acc.png", "test accuracy %", scale=100)
    )
    speeds = [r | {"samples_per_second": v} for r, v in zip(rows, [interval(80000, 900), interval(60000, 2000), None])]
    assert is_png(plots.plot_interval_bars(speeds[:3], "samples_per_second", tmp_path / "sps.png", "samples/s", ",.0f"))
    nothing = [r | {"samples_per_second": None} for r in rows]
    assert is_png(plots.plot_interval_bars(nothing, "samples_per_second", tmp_path / "none.png", "samples/s"))


def test_every_framework_has_its_own_colour():
    from backprop_bench.backends import FRAMEWORKS

    assert set(plots.COLORS) == set(FRAMEWORKS)
    assert len(set(plots.COLORS.values())) == len(FRAMEWORKS)


def test_a_whisker_wider_than_the_axis_keeps_its_label_inside(tmp_path):
    """Time to accuracy over three seeds, one with a slow first epoch: a whisker 20 bars long."""
    rows = [
        dict(framework=f, strategy="parallel", device="cpu", mode="controlled", status="finished", t=t)
        for f, t in (("numpy", interval(0.2, 0.1)), ("torch", interval(1.5, 30.0)))
    ]
    path = plots.plot_interval_bars(rows, "t", tmp_path / "t.png", "seconds to 88 % validation accuracy")
    width = int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's width, pixels
    assert is_png(path) and width < 1100  # 9 inches at 100 dpi and the tick labels; 10,000 with the label outside


def stability_run(lr: float, strategy: str, batch: int, status: str, final_loss: float | None) -> dict:
    return dict(lr=lr, strategy=strategy, batch_size=batch, status=status, final_loss=final_loss)


def test_stability_map_draws_the_three_classes(tmp_path, monkeypatch):
    limit, stall_level = 20.0, 1.5
    runs = [
        stability_run(0.01, "parallel", 16, "learned", 0.4),
        stability_run(0.1, "parallel", 16, "stalled", 2.3),
        stability_run(1.0, "parallel", 16, "diverged", None),
        stability_run(0.01, "sequential", 16, "learned", 0.41),
        stability_run(0.1, "sequential", 16, "diverged", None),
        stability_run(1.0, "sequential", 16, "stalled", 1.9),  # above a divergence: drawn, not joined
    ]
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    assert is_png(plots.plot_stability(runs, limit, stall_level, tmp_path / "stability.png"))
    ax = figures[0].axes[0]

    # every run is one marker at (lr, final loss), or above the threshold if it diverged, its class's shape
    drawn = {}
    for line in ax.get_lines():
        if line.get_linestyle() == "None":
            drawn.setdefault(line.get_marker(), []).extend(zip(line.get_xdata(), line.get_ydata()))
    assert sorted(drawn) == ["o", "s", "x"]
    assert sorted(drawn["o"]) == [(0.01, 0.4), (0.01, 0.41)] and sorted(drawn["s"]) == [(0.1, 2.3), (1.0, 1.9)]
    assert sorted(x for x, _ in drawn["x"]) == [0.1, 1.0] and all(y > limit for _, y in drawn["x"])
    # the lines stop at their first divergence: sequential's does not reach its stalled run at lr 1
    joined = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() != "None"}
    assert joined["parallel, batch 16"] == [0.01, 0.1, 1.0] and joined["sequential, batch 16"] == [0.01, 0.1]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "-."] == [stall_level]

    # the legend names the classes, each with its own marker, black so that it reads without colour
    legend = {t.get_text(): h for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert {legend[k].get_marker() for k in legend if k.startswith(("learned", "stalled", "diverged"))} == {
        "o",
        "s",
        "x",
    }
    assert "stalled (final loss > 1.5)" in legend and "diverged (an epoch's loss > 20 or NaN)" in legend
    assert {"stall level (1.5)", "blow-up threshold (20)", "parallel, batch 16", "sequential, batch 16"} <= set(legend)
    assert ax.get_xlabel() == "learning rate (plain SGD)" and ax.get_xscale() == ax.get_yscale() == "log"
