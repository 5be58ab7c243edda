"""Stage `compare`: the study's cells (runs/<cell>/) become one table and four plots.

    python -m backprop_bench.compare                # runs/ -> reports/, then prints the table
    python -m backprop_bench.compare --print-only   # print the existing reports/comparison.md

Reads each cell's metrics.json, history.csv and predictions.npy (metrics.py) and the test
split of data/processed/mnist.npz; writes reports/comparison.{md,csv} and the PNGs of
REPORT_FILES. What each column means: docs/architecture.md, "The report".
"""

from __future__ import annotations

import argparse
import ast
import io
import itertools
import math
import sys
import tokenize
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from backprop_bench import plots
from backprop_bench.backends import FRAMEWORKS
from backprop_bench.io import atomic_write, write_csv
from backprop_bench.metrics import FINISHED, MetricsError, read_history, read_metrics

MISSING = "missing"  # a report row only: the cell's metrics.json is not there (its stage has not run)
STRATEGY_ROW = {"sequential": 0, "parallel": 1}  # row order within a framework and device
PLOTTED_COLUMNS = ("epoch", "train_loss", "val_loss")  # the history.csv columns the report reads
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

# A cell, as the functions below pass it around: CellMetrics' fields as a dict, plus
# `history` (PLOTTED_COLUMNS, each (E,)) and `predictions_path` when finished.
Cell = dict[str, Any]


class ReportError(ValueError):
    """A cell's files are missing or malformed. The message names the file and what is wrong."""


# ----------------------------------------------------------------------------- reading


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


def load_cells(runs_dir: Path, cells: list[str] | None = None) -> list[Cell]:
    """Each cell's checked metrics, plus `history` and `predictions_path` when finished.

    cells=None reads every runs_dir/*/metrics.json. A named cell without a metrics.json is
    a MISSING row: its stage has not run yet.
    """
    if cells is None:
        cells = sorted(p.parent.name for p in runs_dir.glob("*/metrics.json"))
    loaded = []
    for name in cells:
        cell_dir = runs_dir / name
        if not (cell_dir / "metrics.json").exists():
            framework, strategy, device = (name.split("-") + ["?", "?", "?"])[:3]
            loaded.append(
                dict(
                    cell=name,
                    framework=framework,
                    strategy=strategy,
                    device=device,
                    status=MISSING,
                    reason=f"{cell_dir / 'metrics.json'} not found: its train stage has not run",
                )
            )
            continue
        try:
            cell = asdict(read_metrics(cell_dir / "metrics.json"))
            if cell["status"] == FINISHED:
                cell["history"] = read_history(cell_dir / "history.csv", PLOTTED_COLUMNS)
                cell["predictions_path"] = cell_dir / "predictions.npy"
        except MetricsError as err:
            raise ReportError(str(err)) from None
        loaded.append(cell)
    return sorted(loaded, key=_row_order)


def _row_order(cell: Cell) -> tuple:
    rank = FRAMEWORKS.index(cell["framework"]) if cell["framework"] in FRAMEWORKS else len(FRAMEWORKS)
    return (rank, cell["framework"], cell["device"], STRATEGY_ROW.get(cell["strategy"], 2), cell["cell"])


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
            is_text = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            if is_text and isinstance(first.value.value, str):
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


def build_rows(cells: list[Cell], backends_dir: Path = BACKENDS_DIR) -> list[dict]:
    """One row per cell, with the two columns that need other cells.

    speed_vs_numpy: samples/s over NumPy's at the same strategy and device (> 1: faster).
    seq_minus_par_final_loss: final train loss under sequential minus under parallel, same
    framework and device; the same number on both rows of the pair.
    """
    finished = {(c["framework"], c["strategy"], c["device"]): c for c in cells if c["status"] == FINISHED}
    rows = []
    for c in cells:
        loc, loc_detail = backend_loc(c["framework"], backends_dir) if c["framework"] in FRAMEWORKS else (None, "")
        row = {key: c.get(key) for key in CSV_COLUMNS}
        row.update(backend_loc=loc, backend_loc_detail=loc_detail, speed_vs_numpy=None, seq_minus_par_final_loss=None)
        if c["status"] == FINISHED:
            numpy_cell = finished.get(("numpy", c["strategy"], c["device"]))
            if numpy_cell is not None and numpy_cell["samples_per_second"] > 0:
                row["speed_vs_numpy"] = c["samples_per_second"] / numpy_cell["samples_per_second"]
            seq = finished.get((c["framework"], "sequential", c["device"]))
            par = finished.get((c["framework"], "parallel", c["device"]))
            if seq is not None and par is not None:
                row["seq_minus_par_final_loss"] = seq["final_train_loss"] - par["final_train_loss"]
        rows.append(row)
    return rows


def _fmt(value: float | int | None, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


MD_HEADER = (
    "framework",
    "strategy",
    "device",
    "status",
    "test acc %",
    "train s",
    "steady epoch s",
    "samples/s",
    "speed vs NumPy",
    "seq − par final loss",
    "backend LOC",
    "note",
)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(MD_HEADER) + " |", "|" + "|".join("---" for _ in MD_HEADER) + "|"]
    for r in rows:
        acc = None if r["test_accuracy"] is None else 100 * r["test_accuracy"]
        cells = (
            r["framework"],
            r["strategy"],
            r["device"],
            r["status"],
            _fmt(acc, ".2f"),
            _fmt(r["train_seconds"], ".2f"),
            _fmt(r["steady_epoch_seconds"], ".3f"),
            _fmt(r["samples_per_second"], ",.0f"),
            _fmt(r["speed_vs_numpy"], ".2f", "×"),
            _fmt(r["seq_minus_par_final_loss"], "+.2e"),
            _fmt(r["backend_loc"], "d"),
            (r["reason"] or "").replace("|", "/").replace("\n", " "),
        )
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_rows(rows: list[dict]) -> list[list]:
    """The rows as comparison.csv's lines: CSV_COLUMNS in order, "" where there is no value."""
    return [["" if r.get(k) is None else r[k] for k in CSV_COLUMNS] for r in rows]


# ----------------------------------------------------------------------------- disagreements


def pick_per_framework(cells: list[Cell]) -> dict[str, Cell]:
    """One finished cell per framework for the disagreement figure: parallel on cpu if there
    is one (every framework's default), else its first finished cell."""
    picked: dict[str, Cell] = {}
    for c in sorted(cells, key=lambda c: (c["strategy"] != "parallel", c["device"] != "cpu", _row_order(c))):
        if c["status"] == FINISHED:
            picked.setdefault(c["framework"], c)
    return dict(sorted(picked.items(), key=lambda kv: _row_order(kv[1])))


def find_disagreements(predictions: dict[str, np.ndarray]) -> np.ndarray:
    """Test indices (K,) where not every framework predicts the same label."""
    stacked = np.stack(list(predictions.values()))  # (F, N_test)
    return np.flatnonzero((stacked != stacked[0]).any(axis=0))


def load_predictions(picked: dict[str, Cell], n_test: int) -> dict[str, np.ndarray]:
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


def disagreement_summary(predictions: dict[str, np.ndarray], picked: dict[str, Cell], y_test: np.ndarray) -> str:
    if len(predictions) < 2:
        return "Fewer than two frameworks finished: nothing to compare predictions with.\n"
    where = find_disagreements(predictions)
    cells = ", ".join(c["cell"] for c in picked.values())
    text = f"Cells compared: {cells}. They disagree on {len(where)} of {len(y_test)} test digits"
    if len(where) == 0:
        return text + ".\n"
    right = ", ".join(f"{f} {int((p[where] == y_test[where]).sum())}" for f, p in predictions.items())
    return text + f"; right on those: {right}.\n"


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
        "# Comparison of the study's cells\n\n" + markdown_table(rows) + "\n"
        "Speed vs NumPy: samples/s over NumPy's at the same strategy and device. "
        "seq − par final loss: final-epoch mean train loss under sequential minus under parallel, "
        "same framework and device. Test accuracy on the test split; times are the training loop only.\n\n"
        + loc_note(rows)
        + "\n"
        + disagreement
        + "\nPlots: loss_curves.png, time_bars.png, accuracy_bars.png, disagreements.png.\n"
    )


def compare(
    runs_dir: Path,
    reports_dir: Path,
    data_path: Path,
    cells: list[str] | None = None,
    backends_dir: Path = BACKENDS_DIR,
) -> str:
    """Read the cells, write every report file, and return the markdown report."""
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
    where = find_disagreements(predictions) if len(predictions) >= 2 else np.array([], dtype=np.int64)

    report = render_report(rows, disagreement_summary(predictions, picked, y_test))
    write_csv(reports_dir / "comparison.csv", CSV_COLUMNS, csv_rows(rows))
    plots.plot_loss_curves(loaded, reports_dir / "loss_curves.png")
    plots.plot_time_bars(rows, reports_dir / "time_bars.png")
    plots.plot_accuracy_bars(rows, reports_dir / "accuracy_bars.png")
    plots.plot_disagreements(predictions, where, x_test, y_test, reports_dir / "disagreements.png")
    atomic_write(reports_dir / "comparison.md", report)  # last: its presence means the rest is there
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
