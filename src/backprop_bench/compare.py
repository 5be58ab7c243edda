"""Stage `compare`: turn the study's cells (runs/<cell>/) into one table and four plots.

    python -m backprop_bench.compare                # runs/ -> reports/, then prints the table
    python -m backprop_bench.compare --print-only   # print the existing reports/comparison.md

Reads, per cell of the study (params.yaml `study:`; every runs/*/ when there is none):
metrics.json, history.csv and predictions.npy (docs/architecture.md "A study cell"), plus
the test labels and images of data/processed/mnist.npz. Writes, each atomically:

    reports/comparison.md    the table, how each column is made, the disagreement summary
    reports/comparison.csv   the same rows, unformatted
    reports/loss_curves.png  train and val loss per epoch, every cell overlaid
    reports/time_bars.png    train seconds per cell: first epoch vs the rest
    reports/accuracy_bars.png
    reports/disagreements.png  test digits the frameworks label differently, who was right

The metrics files, which DVC tracks, are the source of truth; MLflow only mirrors them.
A skipped or failed cell is a row with its status and reason, not an error. A malformed
metrics file is an error that names the file and the missing key.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import itertools
import json
import math
import sys
import tokenize
from pathlib import Path

import numpy as np

from backprop_bench.data.formats import atomic_open, atomic_write_bytes

FRAMEWORKS = ("numpy", "torch", "tensorflow", "keras")  # row order; same as backends.FRAMEWORKS
STRATEGIES = ("sequential", "parallel")
STATUSES = ("finished", "skipped", "failed")
ALWAYS_KEYS = ("cell", "framework", "strategy", "device", "status", "reason")
FINISHED_KEYS = (
    "test_accuracy",  # fraction in [0, 1]
    "train_seconds",  # the whole training loop, first epoch included
    "first_epoch_seconds",  # tracing / compilation / warm-up live here
    "steady_epoch_seconds",  # a typical epoch after the first; null when there was only one
    "samples_per_second",  # training throughput over the steady epochs
    "final_train_loss",  # mean train loss of the last epoch
)
NULLABLE_KEYS = ("steady_epoch_seconds",)
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss")
BACKENDS_DIR = Path(__file__).resolve().parent / "backends"
# Modules that more than one backend is built on: counted in each of their totals.
SHARED_MODULES = {"tensorflow": ("_tf_common.py",), "keras": ("_tf_common.py",)}
REPORT_FILES = (
    "comparison.md",
    "comparison.csv",
    "loss_curves.png",
    "time_bars.png",
    "accuracy_bars.png",
    "disagreements.png",
)
CSV_COLUMNS = (
    "cell",
    "framework",
    "strategy",
    "device",
    "status",
    "test_accuracy",
    "train_seconds",
    "first_epoch_seconds",
    "steady_epoch_seconds",
    "samples_per_second",
    "speed_vs_numpy",
    "seq_minus_par_final_loss",
    "backend_loc",
    "reason",
)


class ReportError(ValueError):
    """A cell's files are missing or malformed. The message names the file and what is wrong."""


# ----------------------------------------------------------------------------- reading


def read_metrics(path: Path) -> dict:
    """One cell's metrics.json, checked: the keys every cell has, and a finished cell's numbers."""
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (has the cell's train stage run?)") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON: {err.msg}") from None
    if not isinstance(metrics, dict):
        raise ReportError(f"{path}: expected one JSON object, got {type(metrics).__name__}")
    for key in ALWAYS_KEYS:
        if key not in metrics:
            raise ReportError(f"{path}: missing key {key!r} (every cell needs: {', '.join(ALWAYS_KEYS)})")
    if metrics["status"] not in STATUSES:
        raise ReportError(f"{path}: key 'status' is {metrics['status']!r}, expected one of {', '.join(STATUSES)}")
    if metrics["status"] == "finished":
        for key in FINISHED_KEYS:
            if key not in metrics:
                raise ReportError(
                    f"{path}: missing key {key!r} (a finished cell needs: {', '.join(FINISHED_KEYS)})"
                )
            if metrics[key] is None and key in NULLABLE_KEYS:
                continue
            if not isinstance(metrics[key], (int, float)) or isinstance(metrics[key], bool):
                raise ReportError(f"{path}: key {key!r} is {metrics[key]!r}, expected a number")
    return metrics


def read_history(path: Path) -> dict[str, np.ndarray]:
    """history.csv as columns: epoch (E,) and train_loss/val_loss (E,) float64."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (a finished cell writes its history)") from None
    for column in HISTORY_COLUMNS:
        if column not in header:
            raise ReportError(f"{path}: missing column {column!r} (expected at least {', '.join(HISTORY_COLUMNS)})")
    columns = {}
    for column in HISTORY_COLUMNS:
        try:
            columns[column] = np.array([float(row[column]) for row in rows])
        except (TypeError, ValueError):
            bad = next(i for i, row in enumerate(rows) if not _is_float(row[column]))
            raise ReportError(f"{path}: row {bad + 2}, column {column!r}: {rows[bad][column]!r} is not a number") from None
    return columns


def _is_float(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False


def study_cells(params_path: Path) -> list[str] | None:
    """The grid of params.yaml `study:` as cell names, or None if the file has no study."""
    if not params_path.is_file():
        return None
    import yaml  # PyYAML comes with DVC and OmegaConf

    study = (yaml.safe_load(params_path.read_text()) or {}).get("study")
    if study is None:
        return None
    for key in ("frameworks", "strategies", "devices"):
        if not isinstance(study.get(key), list):
            raise ReportError(f"{params_path}: study.{key} must be a list, got {study.get(key)!r}")
    grid = itertools.product(study["frameworks"], study["strategies"], study["devices"])
    return [f"{f}-{s}-{d}" for f, s, d in grid]


def load_cells(runs_dir: Path, cells: list[str] | None = None) -> list[dict]:
    """Each cell's checked metrics, plus `history` (finished cells) and `predictions_path`.

    cells=None reads every runs_dir/*/metrics.json. A named cell without a directory is a
    `missing` row: its stage has not run yet.
    """
    if cells is None:
        cells = sorted(p.parent.name for p in runs_dir.glob("*/metrics.json"))
    loaded = []
    for name in cells:
        cell_dir = runs_dir / name
        if not (cell_dir / "metrics.json").exists():
            framework, strategy, device = (name.split("-") + ["?", "?", "?"])[:3]
            loaded.append(
                dict(cell=name, framework=framework, strategy=strategy, device=device, status="missing",
                     reason=f"{cell_dir / 'metrics.json'} not found: its train stage has not run")
            )
            continue
        metrics = read_metrics(cell_dir / "metrics.json")
        if metrics["status"] == "finished":
            metrics["history"] = read_history(cell_dir / "history.csv")
            metrics["predictions_path"] = cell_dir / "predictions.npy"
        loaded.append(metrics)
    return sorted(loaded, key=_row_order)


def _row_order(cell: dict) -> tuple:
    rank = FRAMEWORKS.index(cell["framework"]) if cell["framework"] in FRAMEWORKS else len(FRAMEWORKS)
    strategy = STRATEGIES.index(cell["strategy"]) if cell["strategy"] in STRATEGIES else len(STRATEGIES)
    return (rank, cell["framework"], cell["device"], strategy, cell["cell"])


# ----------------------------------------------------------------------------- cost of writing it


def count_loc(path: Path) -> int:
    """Lines of code: non-blank lines that are not only a comment or part of a docstring.

    Tokens decide what is code (so a '#' inside a string stays code); the AST finds the
    docstrings of the module, classes and functions.
    """
    source = Path(path).read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstring_lines.update(range(first.lineno, first.end_lineno + 1))
    not_code = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in not_code:
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return len(code_lines - docstring_lines)


def backend_loc(framework: str, backends_dir: Path = BACKENDS_DIR) -> tuple[int | None, str]:
    """(total lines of code, how it adds up) for one framework's backend, shared modules included."""
    own = backends_dir / f"{framework}_backend.py"
    if not own.is_file():
        return None, f"no {own.name}"
    total = count_loc(own)
    parts = [f"{own.name} {total}"]
    for shared in SHARED_MODULES.get(framework, ()):
        if (backends_dir / shared).is_file():
            n = count_loc(backends_dir / shared)
            total += n
            parts.append(f"{shared} {n}")
    return total, " + ".join(parts)


# ----------------------------------------------------------------------------- the table


def build_rows(cells: list[dict], backends_dir: Path = BACKENDS_DIR) -> list[dict]:
    """One row per cell, with the two columns that need other cells.

    speed_vs_numpy: samples/s over NumPy's at the same strategy and device (> 1: faster).
    seq_minus_par_final_loss: final train loss under sequential minus under parallel, same
    framework and device; the same number on both rows of the pair.
    """
    finished = {(c["framework"], c["strategy"], c["device"]): c for c in cells if c["status"] == "finished"}
    rows = []
    for c in cells:
        loc, loc_detail = backend_loc(c["framework"], backends_dir) if c["framework"] in FRAMEWORKS else (None, "")
        row = {key: c.get(key) for key in CSV_COLUMNS}
        row.update(backend_loc=loc, backend_loc_detail=loc_detail, speed_vs_numpy=None, seq_minus_par_final_loss=None)
        if c["status"] == "finished":
            numpy_cell = finished.get(("numpy", c["strategy"], c["device"]))
            if numpy_cell is not None and numpy_cell["samples_per_second"] > 0:
                row["speed_vs_numpy"] = c["samples_per_second"] / numpy_cell["samples_per_second"]
            seq = finished.get((c["framework"], "sequential", c["device"]))
            par = finished.get((c["framework"], "parallel", c["device"]))
            if seq is not None and par is not None:
                row["seq_minus_par_final_loss"] = seq["final_train_loss"] - par["final_train_loss"]
        rows.append(row)
    return rows


def _fmt(value, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


MD_HEADER = (
    "framework", "strategy", "device", "status", "test acc %", "train s", "steady epoch s",
    "samples/s", "speed vs NumPy", "seq − par final loss", "backend LOC", "note",
)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(MD_HEADER) + " |", "|" + "|".join("---" for _ in MD_HEADER) + "|"]
    for r in rows:
        acc = None if r["test_accuracy"] is None else 100 * r["test_accuracy"]
        cells = (
            r["framework"], r["strategy"], r["device"], r["status"],
            _fmt(acc, ".2f"), _fmt(r["train_seconds"], ".2f"), _fmt(r["steady_epoch_seconds"], ".3f"),
            _fmt(r["samples_per_second"], ",.0f"), _fmt(r["speed_vs_numpy"], ".2f", "×"),
            _fmt(r["seq_minus_par_final_loss"], "+.2e"), _fmt(r["backend_loc"], "d"),
            (r["reason"] or "").replace("|", "/").replace("\n", " "),
        )
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write_bytes(path, text.getvalue().encode())


# ----------------------------------------------------------------------------- disagreements


def pick_per_framework(cells: list[dict]) -> dict[str, dict]:
    """One finished cell per framework for the disagreement figure: parallel on cpu if there
    is one (every framework's default), else its first finished cell."""
    picked: dict[str, dict] = {}
    for c in sorted(cells, key=lambda c: (c["strategy"] != "parallel", c["device"] != "cpu", _row_order(c))):
        if c["status"] == "finished":
            picked.setdefault(c["framework"], c)
    return dict(sorted(picked.items(), key=lambda kv: _row_order(kv[1])))


def find_disagreements(predictions: dict[str, np.ndarray]) -> np.ndarray:
    """Test indices (K,) where not every framework predicts the same label."""
    stacked = np.stack(list(predictions.values()))  # (F, N_test)
    return np.flatnonzero((stacked != stacked[0]).any(axis=0))


def load_predictions(picked: dict[str, dict], n_test: int) -> dict[str, np.ndarray]:
    predictions = {}
    for framework, c in picked.items():
        path = c["predictions_path"]
        try:
            pred = np.load(path)
        except FileNotFoundError:
            raise ReportError(f"{path}: not found (a finished cell writes its test predictions)") from None
        if pred.shape != (n_test,):
            raise ReportError(f"{path}: shape {pred.shape}, expected ({n_test},): one label per test row")
        predictions[framework] = pred.astype(np.int64)
    return predictions


def disagreement_summary(predictions: dict[str, np.ndarray], picked: dict[str, dict], y_test: np.ndarray) -> str:
    if len(predictions) < 2:
        return "Fewer than two frameworks finished: nothing to compare predictions with.\n"
    where = find_disagreements(predictions)
    cells = ", ".join(c["cell"] for c in picked.values())
    text = f"Cells compared: {cells}. They disagree on {len(where)} of {len(y_test)} test digits"
    if len(where) == 0:
        return text + ".\n"
    right = ", ".join(f"{f} {int((p[where] == y_test[where]).sum())}" for f, p in predictions.items())
    return text + f"; right on those: {right}.\n"


# ----------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


COLORS = {"numpy": "tab:blue", "torch": "tab:red", "tensorflow": "tab:orange", "keras": "tab:green"}
LINESTYLES = {"sequential": "--", "parallel": "-"}


def plot_loss_curves(plt, cells: list[dict], path: Path) -> None:
    """Train and val loss per epoch, every finished cell overlaid, plus each cell's train
    loss minus NumPy's (same strategy and device): the curves sit on top of each other
    when the frameworks agree, and the third panel shows by how much they do not."""
    from matplotlib.ticker import MaxNLocator

    finished = [c for c in cells if c["status"] == "finished"]
    numpy_history = {(c["strategy"], c["device"]): c["history"] for c in finished if c["framework"] == "numpy"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for c in finished:
        h, style = c["history"], dict(color=COLORS.get(c["framework"]), marker=".", label=c["cell"])
        axes[0].plot(h["epoch"], h["train_loss"], LINESTYLES.get(c["strategy"], ":"), **style)
        axes[1].plot(h["epoch"], h["val_loss"], LINESTYLES.get(c["strategy"], ":"), **style)
        ref = numpy_history.get((c["strategy"], c["device"]))
        if ref is not None and len(ref["train_loss"]) == len(h["train_loss"]):
            axes[2].plot(h["epoch"], h["train_loss"] - ref["train_loss"], LINESTYLES.get(c["strategy"], ":"), **style)
    titles = ("train loss", "val loss", "train loss minus NumPy's (same strategy, device)")
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].legend(fontsize=8)
    fig.suptitle("Loss per epoch (solid: parallel, dashed: sequential)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_time_bars(plt, rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    labels = [r["cell"] for r in rows]
    first = [r["first_epoch_seconds"] or 0.0 for r in rows]
    rest = [(r["train_seconds"] or 0.0) - f for r, f in zip(rows, first)]
    ax.barh(labels, first, color="tab:gray", label="first epoch (tracing, compile, warm-up)")
    ax.barh(labels, rest, left=first, color="tab:blue", label="the other epochs")
    _mark_unfinished(ax, rows)
    ax.invert_yaxis()
    ax.set(xlabel="train seconds", title="Training time per cell")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_accuracy_bars(plt, rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    acc = [100 * (r["test_accuracy"] or 0.0) for r in rows]
    ax.barh([r["cell"] for r in rows], acc, color=[COLORS.get(r["framework"], "tab:gray") for r in rows])
    for y, (r, a) in enumerate(zip(rows, acc)):
        if r["status"] == "finished":
            ax.text(a, y, f" {a:.2f}", va="center", fontsize=8)
    _mark_unfinished(ax, rows)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy %", xlim=(0, 105), title="Test accuracy per cell")
    _save(fig, path)
    plt.close(fig)


def _mark_unfinished(ax, rows: list[dict]) -> None:
    for y, r in enumerate(rows):
        if r["status"] != "finished":
            ax.text(0, y, f" {r['status']}", va="center", fontsize=8, color="tab:red")


def plot_disagreements(plt, predictions: dict[str, np.ndarray], x_test: np.ndarray, y_test: np.ndarray,
                       path: Path, max_digits: int = 8) -> None:
    """Up to max_digits test images where frameworks disagree, each captioned with the true
    label and every framework's prediction, green where right and red where wrong."""
    where = find_disagreements(predictions) if len(predictions) >= 2 else np.array([], dtype=int)
    shown = where[:max_digits]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(1.7 * max(len(shown), 1) + 0.5, 3.2), squeeze=False)
    if len(shown) == 0:
        axes[0, 0].axis("off")
        message = ("fewer than two frameworks finished" if len(predictions) < 2
                   else f"all frameworks agree on all {len(y_test)} test digits")
        axes[0, 0].text(0.5, 0.5, message, ha="center", va="center")
    for ax, i in zip(axes[0], shown):
        ax.imshow(x_test[i].reshape(28, 28), cmap="gray_r")  # x rows are 784 pixels, row-major 28x28
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"test #{i}, true {y_test[i]}", fontsize=8)
        for k, (framework, pred) in enumerate(predictions.items()):
            right = pred[i] == y_test[i]
            ax.text(0.5, -0.1 - 0.13 * k, f"{framework}: {pred[i]} {'right' if right else 'wrong'}",
                    transform=ax.transAxes, ha="center", va="top", fontsize=8,
                    color="tab:green" if right else "tab:red")
    fig.suptitle(f"Test digits the frameworks disagree on ({len(shown)} of {len(where)} shown)", fontsize=10)
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- the stage


def loc_note(rows: list[dict]) -> str:
    details = {r["framework"]: r["backend_loc_detail"] for r in rows if r.get("backend_loc_detail")}
    shared = sorted({m for f in details for m in SHARED_MODULES.get(f, ()) if (BACKENDS_DIR / m).is_file()})
    note = (
        "Backend LOC (the cost of writing it) is counted from the source when this report is made: "
        "non-blank lines of `src/backprop_bench/backends/<framework>_backend.py` that are not only a "
        "comment or part of a docstring."
    )
    if shared:
        note += f" The shared module(s) {', '.join(shared)} count in full in each backend built on them."
    return note + " " + "; ".join(f"{f}: {d}" for f, d in details.items()) + ".\n"


def render_report(rows: list[dict], disagreement: str) -> str:
    return (
        "# Comparison of the study's cells\n\n"
        + markdown_table(rows)
        + "\n"
        "Speed vs NumPy: samples/s over NumPy's at the same strategy and device. "
        "seq − par final loss: final-epoch mean train loss under sequential minus under parallel, "
        "same framework and device. Test accuracy on the test split; times are the training loop only.\n\n"
        + loc_note(rows)
        + "\n"
        + disagreement
        + "\nPlots: loss_curves.png, time_bars.png, accuracy_bars.png, disagreements.png.\n"
    )


def compare(runs_dir: Path, reports_dir: Path, data_path: Path, cells: list[str] | None = None,
            backends_dir: Path = BACKENDS_DIR) -> str:
    """Read the cells, write every report file, and return the markdown report."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    loaded = load_cells(runs_dir, cells)
    if not loaded:
        raise ReportError(f"{runs_dir}: no cells found (expected {runs_dir}/<cell>/metrics.json)")
    rows = build_rows(loaded, backends_dir)
    try:
        with np.load(data_path) as data:
            x_test, y_test = data["x_test"], data["y_test"]  # (N, 784) float32, (N,) int64
    except FileNotFoundError:
        raise ReportError(f"{data_path}: not found (the preprocess stage writes it)") from None
    except KeyError as err:
        raise ReportError(f"{data_path}: missing array {err} (expected x_test and y_test)") from None
    picked = pick_per_framework(loaded)
    predictions = load_predictions(picked, len(y_test))

    reports_dir.mkdir(parents=True, exist_ok=True)
    report = render_report(rows, disagreement_summary(predictions, picked, y_test))
    write_csv(rows, reports_dir / "comparison.csv")
    plot_loss_curves(plt, loaded, reports_dir / "loss_curves.png")
    plot_time_bars(plt, rows, reports_dir / "time_bars.png")
    plot_accuracy_bars(plt, rows, reports_dir / "accuracy_bars.png")
    plot_disagreements(plt, predictions, x_test, y_test, reports_dir / "disagreements.png")
    with atomic_open(reports_dir / "comparison.md") as f:  # last: its presence means the rest is there
        f.write(report.encode())
    return report


def print_report(reports_dir: Path) -> str:
    path = reports_dir / "comparison.md"
    if not path.is_file():
        raise ReportError(f"{path}: not found: run `dvc repro` (or python -m backprop_bench.compare) first")
    return path.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="one subfolder per cell")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument("--data", type=Path, default=Path("data/processed/mnist.npz"), help="test images and labels")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its study: section names the cells")
    parser.add_argument("--print-only", action="store_true", help="print the existing report and exit")
    args = parser.parse_args(argv)
    try:
        if args.print_only:
            report = print_report(args.reports_dir)
        else:
            report = compare(args.runs_dir, args.reports_dir, args.data, study_cells(args.params))
    except ReportError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 1
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
