"""plots.py: every figure is a PNG written atomically, with no pyplot state left behind."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from backprop_bench import plots
from backprop_bench.metrics import EpochStats

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 5000


def history(n: int = 4) -> list[EpochStats]:
    return [EpochStats(e, 1.0 / e, 0.5 + 0.1 * e, math.nan, math.nan, 0.1, 1000.0) for e in range(1, n + 1)]


def cell(framework: str, strategy: str, status: str = "finished") -> dict:
    row = dict(
        cell=f"{framework}-{strategy}-cpu",
        framework=framework,
        strategy=strategy,
        device="cpu",
        status=status,
        test_accuracy=0.9,
        train_seconds=3.0,
        first_epoch_seconds=1.0,
    )
    if status == "finished":
        row["history"] = {
            "epoch": np.arange(1.0, 4.0),
            "train_loss": np.array([1.0, 0.7, 0.5]),
            "val_loss": np.array([1.1, 0.8, 0.6]),
        }
    else:
        row.update(test_accuracy=None, train_seconds=None, first_epoch_seconds=None)
    return row


def test_run_plots(tmp_path):
    assert is_png(plots.plot_curves(history(), tmp_path / "curves.png", "numpy-parallel-cpu"))
    y = np.arange(20) % 10
    assert is_png(plots.plot_confusion(y, (y + 1) % 10, 10, tmp_path / "confusion.png", "test"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curves.png"]  # no temp files


def test_report_plots(tmp_path):
    cells = [
        cell("numpy", "sequential"),
        cell("numpy", "parallel"),
        cell("torch", "parallel"),
        cell("keras", "parallel", status="skipped"),
    ]
    assert is_png(plots.plot_loss_curves(cells, tmp_path / "loss.png"))
    assert is_png(plots.plot_time_bars(cells, tmp_path / "time.png"))
    assert is_png(plots.plot_accuracy_bars(cells, tmp_path / "acc.png"))
    y = np.arange(12) % 10
    predictions = {"numpy": y, "torch": np.where(np.arange(12) == 3, (y + 1) % 10, y)}
    x = np.random.default_rng(0).random((12, 784))
    assert is_png(plots.plot_disagreements(predictions, np.array([3]), x, y, tmp_path / "dis.png"))
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

    code = "import sys, backprop_bench.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
