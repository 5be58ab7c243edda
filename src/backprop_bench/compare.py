"""Stage `compare`: every run of the study becomes reports/comparison.{md,csv}, summary.json
(the few numbers `dvc exp show` displays), five PNGs (report/plots.py) and index.html, the
report as one page (report/html_report.py).

    python -m backprop_bench.compare                # runs/ -> reports/, prints one line
    python -m backprop_bench.compare --print-only   # print reports/comparison.md
    python -m backprop_bench.compare --mlflow       # and log the report as a study-summary MLflow run

Seeds are pooled per framework, strategy, device and mode: means with 95 % t intervals,
the time to params.yaml's compare.target_accuracy, sequential − parallel paired by seed, and
in native mode how far the frameworks differ (report/stats.py). Every column and key:
docs/architecture.md, "The report".
"""

from __future__ import annotations

import argparse
import ast
import io
import itertools
import json
import multiprocessing
import sys
import tokenize
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from backprop_bench.backends import CLASSES
from backprop_bench.bench import report as bench_report
from backprop_bench.core.checks import is_number, read_section
from backprop_bench.core.files import atomic_write, write_json
from backprop_bench.report import html_report, plots, tables
from backprop_bench.report.document import (
    Block,
    Bullets,
    Document,
    Figure,
    Section,
    Table,
    from_markdown,
    to_markdown,
)
from backprop_bench.report.stats import Interval, Spread, mean_interval, paired_test, smallest_p, spread
from backprop_bench.results.grid import StudyParams, read_study_params
from backprop_bench.results.key import RunKey
from backprop_bench.results.metrics import (
    FINISHED,
    NEVER,
    NO_VAL,
    REACHED,
    TARGET_COLUMNS,
    MetricsError,
    TimeToTarget,
    read_history,
    read_metrics,
    time_to_target,
)

MISSING, INCOMPLETE = "missing", "incomplete"  # a run without metrics.json; a row with some seeds not finished
BACKENDS_DIR = Path(__file__).resolve().parent / "backends"
# counted in each backend's LOC: the math a backend runs, wherever it is written
SHARED_MODULES = {
    "tensorflow": ("_tf_common.py",),
    "keras": ("_tf_common.py", "_keras_common.py"),
    "keras-jax": ("_keras_common.py", "jax_backend.py"),
    "keras-torch": ("_keras_common.py", "torch_backend.py"),
}
# Keras 3 on a backend -> that backend's own low-level loop, running the same step math
KERAS_OVER = {"keras": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
PNGS = ("loss_curves.png", "time_bars.png", "accuracy_bars.png", "time_to_accuracy.png", "disagreements.png")
REPORT_FILES = ("comparison.md", "comparison.csv", "summary.json", "index.html", *PNGS)
KEYS = ("framework", "strategy", "device", "mode")  # one row of the table: its runs differ only in seed
POOLED = {  # metrics.json key -> (markdown header, scale, format, suffix); the csv adds <key>_hw
    "test_accuracy": ("test accuracy", 100.0, ".2f", " %"),
    "final_train_loss": ("final train loss", 1.0, ".4f", ""),
    "steady_epoch_seconds": ("steady epoch s", 1.0, ".3f", ""),
    "samples_per_second": ("samples/s", 1.0, ",.0f", ""),
}
PAIRED = {"final_train_loss": ("final train loss", 1.0, "+.4f"), "test_accuracy": ("test accuracy (pp)", 100.0, "+.2f")}
CSV_COLUMNS = (*KEYS, "status", "n_finished", "n_seeds", *(k + s for k in POOLED for s in ("", "_hw")))
CSV_COLUMNS += ("speed_vs_numpy", "backend_loc", "time_to_target_s", "time_to_target_s_hw", "epochs_to_target")
CSV_COLUMNS += ("n_reached", "note")
HALVES = (("", "mean"), ("_hw", "half_width"))  # comparison.csv: an interval as <key> and <key>_hw

Run = dict[str, Any]  # RunMetrics' fields, plus `history` and `predictions` (N_test,) when finished
Key = tuple[str, str, str, str]  # KEYS
Groups = dict[Key, list[Run]]  # the runs of one row, seed i at [i]


class ReportError(ValueError):
    """A run's files are missing or malformed. The message names the file and what is wrong."""


def read_target_accuracy(path: str | Path) -> float:
    """params.yaml's compare.target_accuracy: the validation accuracy (a fraction) that time to accuracy
    waits for. Its own section, so that a change reruns compare alone (dvc.yaml), not the study."""
    section = read_section(path, "compare")
    value = section.get("target_accuracy")
    rule = "must be a number in (0, 1]: a validation accuracy as a fraction, e.g. 0.88"
    section.check(is_number(value) and 0 < value <= 1, "target_accuracy", value, rule)
    return float(value)


# ----------------------------------------------------------------------------- reading


def load_run(runs_dir: Path, key: RunKey, n_test: int) -> Run:
    """One run's checked metrics.json, plus its history and predictions when finished."""
    folder = runs_dir / Path(key.folder).relative_to("runs")
    expected = asdict(key)
    if not (folder / "metrics.json").is_file():
        return expected | dict(
            status=MISSING, reason="no metrics.json: not run yet, or the run failed (see its stage's log)"
        )
    try:
        run = asdict(read_metrics(folder / "metrics.json"))
        for key, want in expected.items():
            if run[key] != want:
                raise ReportError(f"{folder / 'metrics.json'}: key {key!r} is {run[key]!r}, expected {want!r}")
        if run["status"] == FINISHED:
            run["history"] = read_history(folder / "history.csv", ("epoch", "train_loss", *TARGET_COLUMNS[1:]))
            run["predictions"] = pred = np.load(folder / "predictions.npy").astype(np.int64)
            if pred.shape != (n_test,):
                raise ReportError(f"{folder / 'predictions.npy'}: shape {pred.shape}, expected ({n_test},)")
    except MetricsError as err:
        raise ReportError(str(err)) from None
    except FileNotFoundError as err:
        raise ReportError(f"{err.filename}: not found (a finished run writes it)") from None
    return run


def load_study(runs_dir: Path, p: StudyParams, n_test: int) -> Groups:
    """Every run the study expects, per row in table order: mode, device, framework, strategy."""
    grid = itertools.product(p.modes, p.devices, p.frameworks, p.strategies)
    return {
        (f, s, d, m): [load_run(runs_dir, RunKey(f, d, s, m, i), n_test) for i in range(p.seeds)] for m, d, f, s in grid
    }


def finished(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r["status"] == FINISHED]


def row_status(runs: list[Run]) -> str:
    """The status the seeds of a row share, or INCOMPLETE when they differ."""
    statuses = {r["status"] for r in runs}
    return statuses.pop() if len(statuses) == 1 else INCOMPLETE


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
    own = backends_dir / f"{CLASSES[(framework, False)][0]}.py"
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


# ----------------------------------------------------------------------------- the main table


def build_rows(groups: Groups, backends_dir: Path = BACKENDS_DIR) -> list[dict]:
    """One row per group: each POOLED key as a stats.Interval over the finished seeds (None if
    none); speed_vs_numpy: mean samples/s over NumPy's at the same strategy, device and mode."""
    locs = {key[0]: backend_loc(key[0], backends_dir) for key in groups}
    rows = []
    for key, runs in groups.items():
        done, why = finished(runs), {}
        for r in runs:
            if r["status"] != FINISHED:
                why.setdefault(f"{r['status']}: {r['reason']}".rstrip(": "), []).append(str(r["seed"]))
        row = dict(zip(KEYS, key), n_finished=len(done), n_seeds=len(runs), status=row_status(runs))
        row["note"] = "; ".join(f"seed {', '.join(seeds)} {text}" for text, seeds in why.items())
        for k in POOLED:
            values = [r[k] for r in done if r[k] is not None]
            row[k] = mean_interval(values, name=f"{k} of {' '.join(key)}") if values else None
        row["backend_loc"], row["backend_loc_detail"] = locs[key[0]]
        rows.append(row)
    sps = {tuple(r[k] for k in KEYS): r["samples_per_second"] for r in rows}
    for r in rows:
        ref = sps.get(("numpy", r["strategy"], r["device"], r["mode"]))
        ok = r["samples_per_second"] is not None and ref is not None and ref.mean > 0
        r["speed_vs_numpy"] = r["samples_per_second"].mean / ref.mean if ok else None
    return rows


def _fmt(value: Interval | float | None, scale: float = 1.0, spec: str = ".2f", suffix: str = "") -> str:
    """`mean ± half-width` for an Interval of two seeds or more, the plain number otherwise."""
    if value is None or (not isinstance(value, Interval) and not np.isfinite(value)):
        return "–"
    if not isinstance(value, Interval):
        return f"{value * scale:{spec}}{suffix}"
    hw = f" ± {value.half_width * scale:{spec}}" if value.n > 1 else ""
    return f"{value.mean * scale:{spec}}{hw}{suffix}"


def main_table(rows: list[dict]) -> Table:
    """The main table of the report, one line per row (build_rows)."""
    header = [*KEYS, "seeds", *(h for h, *_ in POOLED.values()), "speed vs NumPy", "backend LOC", "note"]
    lines = [
        [*(r[k] for k in KEYS), f"{r['n_finished']}/{r['n_seeds']}"]
        + [_fmt(r[k], *fmt[1:]) for k, fmt in POOLED.items()]
        + [_fmt(r["speed_vs_numpy"], 1, ".2f", "×"), str(r["backend_loc"] or "–"), r["note"]]
        for r in rows
    ]
    return Table(header, lines)


def csv_rows(rows: list[dict], targets: list[dict]) -> list[dict]:
    """comparison.csv's records (tables.write_csv_table writes CSV_COLUMNS of them): each main table
    row (build_rows) with its time to target (target_rows, in the same order); an interval as
    <key> (mean) and <key>_hw."""
    out = []
    for r, t in zip(rows, targets, strict=True):
        r = r | {k: t[k] for k in ("time_to_target_s", "epochs_to_target", "n_reached")}
        intervals = (*POOLED, "time_to_target_s")
        out.append(r | {k + s: getattr(r[k], a) if r[k] else None for k in intervals for s, a in HALVES})
    return out


# ----------------------------------------------------------------------------- time to accuracy


def target_rows(groups: Groups, target: float) -> list[dict]:
    """One row per group, in the main table's order: results.metrics.time_to_target of each finished
    seed; time_to_target_s (stats.Interval) and epochs_to_target (mean) over the seeds that reached
    the target, None if none did; n_reached of n_finished; status, which the plot's empty bars show."""
    rows = []
    for key, runs in groups.items():
        times = {r["seed"]: time_to_target(r["history"], target) for r in finished(runs)}
        hit = [t for t in times.values() if t.outcome == REACHED]
        row = dict(zip(KEYS, key), n_reached=len(hit), n_finished=len(times), status=row_status(runs))
        seconds = [t.seconds for t in hit]  # training loop, first epoch included
        row["time_to_target_s"] = mean_interval(seconds, name=f"time to target of {key}") if hit else None
        row["epochs_to_target"] = float(np.mean([t.epoch for t in hit])) if hit else None
        row["target_note"] = target_note(times)
        if times and not hit:
            no_val = all(t.outcome == NO_VAL for t in times.values())
            row["status"] = NO_VAL if no_val else f"none of {len(times)} reached it"
        rows.append(row)
    return rows


def target_note(times: dict[int, TimeToTarget]) -> str:
    """The seeds that never reached the target, with their best validation accuracy, and those
    without a validation split."""
    best = {s: "" if t.best is None else f" (best {100 * t.best:.2f} %)" for s, t in times.items()}
    never = [f"{s}{best[s]}" for s, t in times.items() if t.outcome == NEVER]
    no_val = [str(s) for s, t in times.items() if t.outcome == NO_VAL]
    notes = [f"never: seed {', '.join(never)}"] if never else []
    return "; ".join(notes + ([f"{NO_VAL}: seed {', '.join(no_val)}"] if no_val else []))


def target_table(rows: list[dict]) -> Table:
    """The report's time-to-accuracy table (target_rows)."""
    header = [*KEYS, "reached", "seconds to target", "epoch (mean)", "note"]
    lines = [
        [*(r[k] for k in KEYS), f"{r['n_reached']} of {r['n_finished']}"]
        + [_fmt(r["time_to_target_s"], 1, ".2f"), _fmt(r["epochs_to_target"], 1, ".1f"), r["target_note"]]
        for r in rows
    ]
    return Table(header, lines)


def percent(fraction: float) -> str:
    """0.88 -> '88 %', 0.885 -> '88.5 %'."""
    return f"{100 * fraction:.4g} %"


# ----------------------------------------------------------------------------- sequential − parallel


def paired_tests(groups: Groups) -> list[dict]:
    """Per framework, device, mode and PAIRED quantity: stats.paired_test over the seeds where
    both strategies finished (`test`: None when no seed did)."""
    out = []
    for (framework, strategy, device, mode), seq_runs in groups.items():
        if strategy != "sequential" or (framework, "parallel", device, mode) not in groups:
            continue
        seq = {r["seed"]: r for r in finished(seq_runs)}
        par = {r["seed"]: r for r in finished(groups[(framework, "parallel", device, mode)])}
        seeds = sorted(seq.keys() & par.keys())
        for key in PAIRED:
            t = paired_test([seq[s][key] for s in seeds], [par[s][key] for s in seeds]) if seeds else None
            out.append(dict(framework=framework, device=device, mode=mode, key=key, seeds=len(seeds), test=t))
    return out


def paired_block(tests: list[dict]) -> Block:
    """The paired tests (paired_tests) as the report's table, or a sentence when there are none."""
    lines = []
    for c in tests:
        name, scale, spec = PAIRED[c["key"]]
        line = [c["framework"], c["device"], c["mode"], name, str(c["seeds"])]
        if (t := c["test"]) is None:
            lines.append(line + ["–", "–", "–", "no seed finished under both strategies"])
            continue
        ci = f"[{t.interval.low * scale:{spec}}, {t.interval.high * scale:{spec}}]" if t.n > 1 else "–"
        lines.append(line + [f"{t.mean_diff * scale:{spec}}", ci, f"{t.p_value:.3g}", t.verdict])
    if not lines:
        return "The study does not run both strategies: nothing to pair."
    header = ["framework", "device", "mode", "sequential − parallel", "seeds", "mean", "95 % interval", "p", "verdict"]
    return Table(header, lines)


# ----------------------------------------------------------------------------- what Keras costs


def keras_block(groups: Groups, p: StudyParams) -> Block:
    """Per Keras framework beside its backend's own loop (KERAS_OVER), strategy, device and mode:
    the steady epoch time of Keras over the backend's, per seed (the same weights and batches in
    controlled mode), as a mean with its 95 % interval over the seeds both finished."""
    lines = []
    for keras, own in KERAS_OVER.items():
        if keras not in p.frameworks or own not in p.frameworks:
            continue
        for mode, device, strategy in itertools.product(p.modes, p.devices, p.strategies):
            k = {r["seed"]: r["steady_epoch_seconds"] for r in finished(groups[(keras, strategy, device, mode)])}
            o = {r["seed"]: r["steady_epoch_seconds"] for r in finished(groups[(own, strategy, device, mode)])}
            ratios = [k[i] / o[i] for i in sorted(k.keys() & o.keys()) if k[i] and o[i]]
            line = [keras, own, strategy, device, mode, str(len(ratios))]
            if not ratios:
                both = k.keys() & o.keys()  # finished in both, but a run of one epoch has no steady epoch
                why = "no steady epoch: runs of one epoch (train.epochs >= 2)" if both else "no seed finished in both"
                lines.append(line + ["–", why])
                continue
            ratio = mean_interval(ratios, name=f"{keras} / {own} epoch time")
            lines.append(line + [_fmt(ratio, 1, ".2f", "×"), ""])
    if not lines:
        pairs = ", ".join(f"{k} beside {o}" for k, o in KERAS_OVER.items())
        return f"The study runs no Keras framework beside its own backend ({pairs})."
    header = ["Keras", "its backend", "strategy", "device", "mode", "seeds", "epoch time, Keras / backend", "note"]
    return Table(header, lines)


# ----------------------------------------------------------------------------- do frameworks differ?


def find_disagreements(predictions: dict[str, np.ndarray]) -> np.ndarray:
    """Test indices (K,) where not every framework predicts the same label."""
    stacked = np.stack(list(predictions.values()))  # (F, N_test)
    return np.flatnonzero((stacked != stacked[0]).any(axis=0))


def agreement_matrix(per_seed: list[dict[str, np.ndarray]], frameworks: list[str]) -> np.ndarray:
    """(F, F): share of test digits on which frameworks i and j predict the same label, pooled
    over the seeds where both finished (per_seed: framework -> (N_test,) labels); nan if none."""
    same, total = np.zeros((len(frameworks),) * 2), np.zeros((len(frameworks),) * 2)
    for preds in per_seed:
        for (i, a), (j, b) in itertools.product(enumerate(frameworks), repeat=2):
            if a in preds and b in preds:
                same[i, j] += np.count_nonzero(preds[a] == preds[b])
                total[i, j] += len(preds[a])
    with np.errstate(invalid="ignore"):
        return same / total


def seed_predictions(groups: Groups, p: StudyParams, strategy: str, device: str, mode: str) -> list[dict]:
    """Per seed: framework -> (N_test,) test predictions, for the frameworks that finished it."""
    runs = {f: groups[(f, strategy, device, mode)] for f in p.frameworks}
    return [{f: rs[i]["predictions"] for f, rs in runs.items() if rs[i]["status"] == FINISHED} for i in range(p.seeds)]


def disagreement_line(preds: dict[str, np.ndarray], y_test: np.ndarray) -> str:
    if len(preds) < 2:
        return "fewer than two frameworks finished"
    where = find_disagreements(preds)
    right = ", ".join(f"{f} {np.count_nonzero(pred[where] == y_test[where])}" for f, pred in preds.items())
    text = f"they disagree on {len(where)} of {len(y_test)} test digits"
    return text + (f"; right on those: {right}" if len(where) else "")


def native_spreads(groups: Groups, p: StudyParams) -> list[dict]:
    """Native mode, per strategy and device: stats.spread of test accuracy (%) across frameworks vs
    across seeds (`spread`: None when fewer than two frameworks finished)."""
    out = []
    for strategy, device in itertools.product(p.strategies, p.devices):
        runs = {f: finished(groups[(f, strategy, device, "native")]) for f in p.frameworks}
        accs = {f: [100 * r["test_accuracy"] for r in rs] for f, rs in runs.items() if rs}  # in %
        out.append(dict(strategy=strategy, device=device, spread=spread(accs) if len(accs) > 1 else None))
    return out


def native_blocks(groups: Groups, p: StudyParams, y_test: np.ndarray, spreads: list[dict]) -> list[Block]:
    """Native mode: test accuracy's spread over frameworks vs over seeds (native_spreads), the test
    digits the frameworks label differently (per seed) and pairwise agreement; then controlled mode
    in one line."""
    out: list[Block] = []
    combos = list(itertools.product(p.strategies, p.devices))
    if "native" not in p.modes:
        out.append("Native mode is not in this study (params.yaml study.modes).")
    else:
        out.append("Test accuracy (%): spread across frameworks vs across seeds (one-way ANOVA over seeds).")
        out.append(Bullets([f"{c['strategy']}, {c['device']}: {spread_text(c['spread'])}" for c in spreads]))
        out.append("Test digits the frameworks label differently, and who is right on those:")
        items = []
        for strategy, device in combos:
            for i, preds in enumerate(seed_predictions(groups, p, strategy, device, "native")):
                absent = [f for f in p.frameworks if f not in preds]
                note = f" (not finished: {', '.join(absent)})" if absent and len(preds) > 1 else ""
                items.append(f"{strategy}, {device}, seed {i}: {disagreement_line(preds, y_test)}{note}")
        out.append(Bullets(items))
        out.append("Pairwise agreement: share of test digits on which two frameworks predict the same label.")
        for strategy, device in combos:
            share = agreement_matrix(seed_predictions(groups, p, strategy, device, "native"), list(p.frameworks))
            lines = [[a] + [_fmt(x, 100, ".1f", " %") for x in row] for a, row in zip(p.frameworks, share)]
            out += [f"{strategy}, {device}, seeds pooled:", Table(["", *p.frameworks], lines)]
    if "controlled" in p.modes:
        out.append(controlled_line([s for c in combos for s in seed_predictions(groups, p, *c, "controlled")]))
    return out


def spread_text(s: Spread | None) -> str:
    return s.describe() if s is not None else "fewer than two frameworks finished"


def controlled_line(per_seed: list[dict[str, np.ndarray]]) -> str:
    """Controlled runs of one seed share weights and batches: they should predict the same labels."""
    compared = [preds for preds in per_seed if len(preds) > 1]
    if not compared:
        return "In controlled mode fewer than two frameworks finished any seed."
    total = sum(len(next(iter(preds.values()))) for preds in compared)
    same = total - sum(len(find_disagreements(preds)) for preds in compared)
    return (
        f"In controlled mode the frameworks predict the same label on {same} of {total} test digits "
        "(every strategy, device and seed). They start from the same weights and walk the same batches, "
        "so every difference is float rounding; long float32 runs let it grow into different models."
    )


# ----------------------------------------------------------------------------- the stage


def _sig(x: float, digits: int = 4) -> float | int:
    """x rounded to `digits` significant digits; an int from 1000 up (narrower in dvc exp show)."""
    r = round(x, digits - 1 - int(np.floor(np.log10(abs(x))))) if x else 0.0
    return int(r) if abs(r) >= 1000 else r


# summary.json's keys: dvc exp show makes each number a column as wide as its name or value
SHORT = {
    "sequential": "seq",
    "parallel": "par",
    "numpy": "np",
    "torch": "pt",
    "tensorflow": "tf",
    "keras": "ks",
    "jax": "jx",
    "keras-jax": "kj",
    "keras-torch": "kt",
}


def summary(groups: Groups, rows: list[dict], p: StudyParams) -> dict[str, dict[str, float]]:
    """summary.json, the glance `dvc exp show` displays: 7 numbers in 65 columns of its table, so
    that an experiment's `--only-changed` table fits 160 (docs/architecture.md has the sums; the
    full table is comparison.csv). Controlled mode (else the first mode), first device:
    acc.seq, acc.par: test accuracy (a fraction, 4 decimals), per seed the mean over the frameworks
    that finished it (equal by construction in controlled mode), then the mean over seeds;
    acc.hw: the wider of their 95 % t half-widths (two seeds or more);
    x.pt, x.tf, x.ks, x.jx, ...: each other framework's speed as a multiple of NumPy's (its
    samples/s over NumPy's at the same strategy, the mean over both strategies, 2 decimals); none
    when NumPy is not in the study. A ratio, not samples/s: 7 columns a framework instead of 9, and
    the machine's load cancels out of it."""
    mode, device = headline_mode(p)
    acc: dict[str, float] = {}
    half_widths = []
    for s in p.strategies:
        runs = [finished(groups[(f, s, device, mode)]) for f in p.frameworks]
        per_seed = [[r["test_accuracy"] for rs in runs for r in rs if r["seed"] == i] for i in range(p.seeds)]
        if means := [float(np.mean(a)) for a in per_seed if a]:
            interval = mean_interval(means, name=f"test accuracy of {s}")
            acc[SHORT.get(s, s)] = round(interval.mean, 4)
            if interval.n > 1:
                half_widths.append(interval.half_width)
    if acc and half_widths:
        acc["hw"] = round(max(half_widths), 4)
    speed = {SHORT.get(f, f): round(x, 2) for f, x in speed_ratios(rows, p).items() if f != "numpy"}
    return {key: group for key, group in (("acc", acc), ("x", speed)) if group}


def headline_mode(p: StudyParams) -> tuple[str, str]:
    """(mode, device) of the headline numbers: controlled mode (like with like), else the first; the first device."""
    return ("controlled" if "controlled" in p.modes else p.modes[0]), p.devices[0]


def speed_ratios(rows: list[dict], p: StudyParams) -> dict[str, float]:
    """framework -> its samples/s over NumPy's, the mean over strategies (headline_mode); NumPy's own
    1.0 included; frameworks without a ratio left out."""
    mode, device = headline_mode(p)
    out = {}
    for f in p.frameworks:
        here = [r["speed_vs_numpy"] for r in rows if (r["framework"], r["device"], r["mode"]) == (f, device, mode)]
        if ratios := [x for x in here if x is not None]:
            out[f] = float(np.mean(ratios))
    return out


INTRO = """\
**How to read this.** *Controlled* mode starts every framework from the same initial weights and batch
order, so they do the same arithmetic and agree up to float rounding: differences there are numerics,
and the speed columns compare like with like. *Native* mode gives each framework its own default
initialisation and shuffling (seeded), as its users get them: differences there are real, and the
question is whether they exceed what a change of seed does. `mean ± h` pools the seeds that finished
(seeds 0..{last}): the 95 % Student t interval for the mean, mean ± t(0.975, n − 1)·s/√n, wide with few
seeds; a single seed gives no interval. The paired section compares the strategies run by run (same seed:
same initial weights and batch order) with a sign-flip test; at {seeds} seeds no p-value can be below {floor:.3g}."""

MAIN_NOTE = """\
Speed vs NumPy: mean samples/s over NumPy's at the same strategy, device and mode. {speed} Test accuracy on the
test split; times are the training loop only, each framework on {threads}. Backend LOC (the
cost of writing it): non-blank lines of `src/backprop_bench/backends/<framework>_backend.py` that are not
only a comment or part of a docstring, a shared module counted in full in each backend built on it: {loc}."""

TARGET_INTRO = """\
Per run, the first epoch whose validation accuracy reaches {target} (params.yaml `compare.target_accuracy`)
and the training-loop seconds until the end of that epoch, the first epoch's compilation and warm-up
included: the time to result of MLPerf Training and AlgoPerf. Validation runs once an epoch, so the time
moves in whole epochs. `mean ± h` over the seeds that reached it; *reached*: of the seeds that finished."""

KERAS_INTRO = """\
Each Keras framework runs its backend's own step math inside Keras's `fit()`, layers and variables
(docs/backends.md), so its epoch time over that backend's low-level loop is what Keras's machinery
costs. Per seed (same weights and batches in controlled mode), then the mean with its 95 % interval;
the stages ran beside others, so `make bench` measures the same ratio interleaved in one process."""

CAPTIONS = {  # PNGS -> the caption index.html shows under it
    "loss_curves.png": "Train loss per epoch: the mean over seeds with a min–max band, one panel per mode.",
    "time_bars.png": "Samples/s per framework and strategy with 95 % whiskers (controlled mode if run).",
    "accuracy_bars.png": "Test accuracy with 95 % whiskers, both modes side by side.",
    "time_to_accuracy.png": "Seconds to {target} validation accuracy per framework and strategy with 95 % "
    "whiskers (controlled mode if run); a bar no seed reached says so.",
    "disagreements.png": "Test digits the frameworks label differently ({where}).",
}


def threads_note(threads: int) -> str:
    """How many CPU threads the frameworks had (params.yaml study.threads), for the report."""
    if threads == 0:
        return "its default number of CPU threads (study.threads: 0)"
    return f"{threads} CPU thread{'s' if threads > 1 else ''} (study.threads: {threads})"


def build_document(
    groups: Groups,
    p: StudyParams,
    target: float,
    y_test: np.ndarray,
    where: str,
    backends_dir: Path = BACKENDS_DIR,
    stability: dict | None = None,
    bench: Path | None = None,
    bench_json: dict | None = None,
) -> Document:
    """The whole report as data (report/document.py), built once: comparison.md and index.html render it.

    where: the runs disagreements.png shows, for its caption; stability: stability.json's result
    (read_stability), for the headline and the appendix; bench: bench.md, for the appendix;
    bench_json: bench.json's result (read_bench), for the speed note."""
    rows, targets = build_rows(groups, backends_dir), target_rows(groups, target)
    statuses = [r["status"] for runs in groups.values() for r in runs]
    counts = f"{len(statuses)} runs: " + ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    tests, spreads = paired_tests(groups), native_spreads(groups, p) if "native" in p.modes else []
    threads = threads_note(p.threads)
    loc = "; ".join(f"{f}: {d}" for f, d in dict((r["framework"], r["backend_loc_detail"]) for r in rows).items())
    intro = INTRO.format(last=p.seeds - 1, seeds=p.seeds, floor=smallest_p(p.seeds))
    sections = [
        Section("", [f"{counts}.", intro]),
        Section(
            "Per framework, strategy, device and mode",
            [main_table(rows), MAIN_NOTE.format(speed=study_speed_note(bench_json, p), threads=threads, loc=loc)],
        ),
        Section(
            f"Time to {percent(target)} validation accuracy",
            [TARGET_INTRO.format(target=percent(target)), target_table(targets)],
        ),
        Section("sequential − parallel, paired by seed", [paired_block(tests)]),
        Section("What Keras costs over its own backend", [KERAS_INTRO, keras_block(groups, p)]),
        Section("Native mode: do frameworks differ?", native_blocks(groups, p, y_test, spreads)),
    ]
    captions = {k: v.format(target=percent(target), where=where) for k, v in CAPTIONS.items()}
    facts = dict(
        counts=counts,
        rows=rows,
        targets=targets,
        paired=tests,
        spreads=spreads,
        speed=speed_ratios(rows, p),
        summary=summary(groups, rows, p),
        target=target,
    )
    appendix = [s for s in (stability_section(stability), bench and bench_section(bench)) if s]
    return Document(
        "Comparison of the study's runs",
        sections,
        [Figure(f, captions[f]) for f in PNGS],
        headline=headline(facts, p, stability),
        appendix=appendix,
        facts=facts,
    )


def compare(
    runs_dir: Path,
    reports_dir: Path,
    data_path: Path,
    p: StudyParams,
    target: float,
    backends_dir: Path = BACKENDS_DIR,
    meanwhile: Callable[[], object] | None = None,
) -> tuple[str, str]:
    """Read every run of the study, write every report file; return (the markdown, a count of the runs).

    target: the validation accuracy (a fraction) time to accuracy waits for (read_target_accuracy);
    meanwhile: work to do while the plots are drawn (main: open the MLflow store), see draw_aside."""
    try:
        with np.load(data_path) as data:
            x_test, y_test = data["x_test"], data["y_test"]  # (N, 784) float32, (N,) int64
    except FileNotFoundError:
        raise ReportError(f"{data_path}: not found (the preprocess stage writes it)") from None
    except KeyError as err:
        raise ReportError(f"{data_path}: missing array {err} (expected x_test and y_test)") from None
    groups = load_study(runs_dir, p, len(y_test))
    # disagreements.png: native mode if run, parallel if run, the first device, seed 0
    mode = "native" if "native" in p.modes else p.modes[0]
    strategy = "parallel" if "parallel" in p.strategies else p.strategies[0]
    caption = f"{mode} mode, {strategy}, {p.devices[0]}, seed 0"
    stability = read_stability(reports_dir / "stability.json")
    bench = read_bench(reports_dir / "bench.json")
    doc = build_document(groups, p, target, y_test, caption, backends_dir, stability, reports_dir / "bench.md", bench)
    rows, targets = doc.facts["rows"], doc.facts["targets"]
    report = to_markdown(doc)
    preds = seed_predictions(groups, p, strategy, p.devices[0], mode)[0]
    where = find_disagreements(preds) if len(preds) > 1 else np.array([], dtype=np.int64)

    tables.write_csv_table(reports_dir / "comparison.csv", CSV_COLUMNS, csv_rows(rows, targets))
    write_json(reports_dir / "summary.json", doc.facts["summary"])

    def draw() -> None:
        plots.plot_loss_bands([r for runs in groups.values() for r in runs], reports_dir / "loss_curves.png")
        controlled = [r for r in rows if r["mode"] == "controlled"] or rows
        plots.plot_interval_bars(controlled, "samples_per_second", reports_dir / "time_bars.png", "samples/s", ",.0f")
        plots.plot_interval_bars(
            rows, "test_accuracy", reports_dir / "accuracy_bars.png", "test accuracy %", ".2f", 100
        )
        label = f"seconds to {percent(target)} validation accuracy"
        reached = [r for r in targets if r["mode"] == "controlled"] or targets
        plots.plot_interval_bars(reached, "time_to_target_s", reports_dir / "time_to_accuracy.png", label, ".2f")
        plots.plot_disagreements(preds, where, x_test, y_test, reports_dir / "disagreements.png", caption=caption)

    draw_aside(draw, meanwhile)
    write_page(doc, reports_dir)
    atomic_write(reports_dir / "comparison.md", report)  # last: its presence means the rest is there
    return report, doc.facts["counts"]


def draw_aside(draw: Callable[[], None], meanwhile: Callable[[], object] | None) -> None:
    """draw(), and meanwhile() at the same time when there is one: draw in a forked child process.

    The plots (matplotlib, ~3 s) and opening the MLflow store (importing mlflow, ~4 s) are each
    pure Python on one core; side by side they cut the compare stage, the last step of `make run`,
    by about a third. The child inherits everything draw needs (fork: nothing is pickled) and
    writes the PNGs atomically; its traceback, if it fails, goes to stderr."""
    if meanwhile is None:
        draw()
        return
    sys.stdout.flush()  # or the child, exiting, would write the parent's buffered output a second time
    sys.stderr.flush()
    child = multiprocessing.get_context("fork").Process(target=draw, name="compare-plots")
    child.start()
    try:
        meanwhile()
    finally:
        child.join()
    if child.exitcode != 0:
        raise ReportError(
            f"drawing the report's plots failed in a child process (exit code {child.exitcode}; its traceback is above)"
        )


# ----------------------------------------------------------------------------- index.html


def headline(facts: dict[str, Any], p: StudyParams, stability: dict | None) -> list[str]:
    """The page's first sentences, from build_document's facts: speed, the paired tests, the
    stability map (stability.json, if there), native mode's spread, time to accuracy."""
    mode, device = headline_mode(p)
    out = [f"{facts['counts']}."]
    if speed := sorted(facts["speed"].items(), key=lambda kv: -kv[1]):
        ratios = ", ".join(f"{f} {x:.2f}×" for f, x in speed)
        lead = f", {speed[0][1] / speed[1][1]:.2f}× as fast as the next, {speed[1][0]}" if len(speed) > 1 else ""
        out.append(
            f"Fastest in {mode} mode on {device}: {speed[0][0]}{lead}; samples/s as a multiple of NumPy's "
            f"(mean over strategies): {ratios}; the study's short runs beside other stages, a rough order "
            "(the bench's paired figures follow the main table)."
        )
    out.append(paired_sentence(facts["paired"]))
    if stability is not None and (limits := stability.get("lr_summary")):
        by_batch: dict[int, list[str]] = {}
        for s in limits:
            lr = s["largest_learning_lr"]
            by_batch.setdefault(s["batch_size"], []).append(f"{s['strategy']} {'none' if lr is None else f'{lr:g}'}")
        parts = "; ".join(f"batch {b}: {', '.join(v)}" for b, v in by_batch.items())
        out.append(f"The stability map parts the strategies (NumPy, plain SGD; largest lr that learns): {parts}.")
    if spreads := facts["spreads"]:
        out.append(spread_sentence(spreads))
    fast = [r for r in facts["targets"] if r["time_to_target_s"] is not None and r["mode"] == mode]
    if fast:
        r = min(fast, key=lambda r: r["time_to_target_s"].mean)
        seconds = _fmt(r["time_to_target_s"], 1, ".2f", " s")
        out.append(
            f"Fastest to {percent(facts['target'])} validation accuracy in {mode} mode: {r['framework']} "
            f"{r['strategy']} on {r['device']}, {seconds} ({r['n_reached']} of {r['n_finished']} seeds reached it)."
        )
    else:
        out.append(f"No {mode} run reached {percent(facts['target'])} validation accuracy.")
    return out


def paired_sentence(tests: list[dict]) -> str:
    """The paired tests' verdicts in one sentence: which differences are distinguishable from zero."""
    done = [c for c in tests if c["test"] is not None]
    if not done:
        return "Sequential and parallel: no seed finished under both strategies, nothing to pair."
    hits = [c for c in done if c["test"].p_value <= 1 - c["test"].interval.confidence]
    named = []
    for c in hits:
        name, scale, spec = PAIRED[c["key"]]
        named.append(
            f"{c['framework']} {c['mode']} {name} ({c['test'].mean_diff * scale:{spec}}, p = {c['test'].p_value:.3g})"
        )
    seeds = max(c["seeds"] for c in done)
    if not hits:
        return (
            f"Sequential and parallel, paired by seed: none of the {len(done)} differences is distinguishable "
            f"from zero at {seeds} seeds (smallest possible p {smallest_p(seeds):.3g})."
        )
    return (
        f"Sequential − parallel, paired by seed: {len(hits)} of {len(done)} differences distinguishable from zero: "
        + ("; ".join(named) + ".")
    )


def spread_sentence(spreads: list[dict]) -> str:
    """Native mode's ANOVA verdicts: do frameworks differ beyond seed noise?"""
    parts = []
    for c in spreads:
        s, where = c["spread"], f"{c['strategy']}, {c['device']}"
        if s is None or not np.isfinite(s.p_value):
            parts.append(f"{where}: no test ({spread_text(s).split(': ')[-1]})")
        elif s.p_value <= 0.05:
            parts.append(f"{where}: yes (F = {s.f:.3g}, p = {s.p_value:.3g})")
        else:
            parts.append(f"{where}: no (F = {s.f:.3g}, p = {s.p_value:.3g})")
    return (
        "Native mode, does test accuracy differ across frameworks beyond seed noise (one-way ANOVA, level 0.05)? "
        + ("; ".join(parts) + ".")
    )


def read_stability(path: Path) -> dict | None:
    """The stability stage's stability.json, or None when it has not run."""
    return read_result(path, "the stability stage's result")


def read_bench(path: Path) -> dict | None:
    """The latest `make bench`'s bench.json, or None when there is none; it must hold its cells."""
    result = read_result(path, "the bench's result")
    if result is not None and not isinstance(result.get("cells"), list):
        raise ReportError(f"{path}: no 'cells' list (expected the result `python -m backprop_bench.bench` writes)")
    return result


def read_result(path: Path, what: str) -> dict | None:
    """A JSON object another command wrote next to the report, or None when the file is not there."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON") from None
    if not isinstance(result, dict):
        raise ReportError(f"{path}: expected a JSON object ({what})")
    return result


def stability_section(stability: dict | None) -> Section | None:
    """The stability map: its plot, the largest lr per strategy and batch, where the strategies part."""
    if stability is None:
        return None
    blocks: list[Block] = [
        "Plain SGD on NumPy over a grid of learning rates, per strategy and batch size "
        "(the `stability` stage; docs/stability.md; every run in reports/stability.md).",
        Figure(
            "stability.png",
            "Final train loss against lr (both axes log), one line per strategy and batch; "
            "marker shapes: filled circle learned, open square stalled, × diverged.",
        ),
    ]
    if limits := stability.get("lr_summary"):
        header = ["strategy", "batch", "largest lr that learns", "largest lr that does not diverge", "lowest loss at"]
        keys = ("largest_learning_lr", "largest_nondiverging_lr", "lowest_loss_lr")
        lr = {None: "none"}
        rows = [
            [s["strategy"], str(s["batch_size"]), *(lr.get(s.get(k), f"{s.get(k):g}") for k in keys)] for s in limits
        ]
        blocks.append(Table(header, rows))
    else:
        blocks.append("stability.json has no `lr_summary`: rerun the stability stage (`dvc repro stability`).")
    if sentences := stability.get("sentences"):
        blocks.append(Bullets(list(sentences)))
    return Section("Stability map: where the strategies part", blocks)


def study_speed_note(bench: dict | None, p: StudyParams) -> str:
    """What the study's speed columns are worth, and the bench's paired plain-mode ratios to NumPy at
    the study's batch size when a bench result (read_bench) is there."""
    note = (
        f"These are {p.epochs} short epochs a run, timed while other stages shared the machine: a rough "
        "order, not a measurement. `make bench` measures speed (whole 60,000-row epochs in interleaved "
        "rounds, one process, docs/benchmark.md)."
    )
    if bench is None:
        return note + " No bench result is here yet (reports/bench.json)."
    cpu = [r for r in bench["cells"] if r.get("device") == "cpu"]
    ratios = bench_report.plain_vs_numpy(cpu, p.batch_size)
    if not ratios:
        batches = ", ".join(str(b) for b in bench.get("batches", [])) or "none"
        pair = f"no plain-mode pair with NumPy at batch {p.batch_size} (its batches: {batches})"
        return note + f" The latest bench (reports/bench.json) has {pair}."
    parts = {}
    for r in ratios:
        parts.setdefault(r["strategy"], []).append(
            f"{r['framework']} {r['speed']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"
        )
    per = "; ".join(f"{s}: {', '.join(v)}" for s, v in parts.items())
    source = bench.get("data", {}).get("source", "?")
    return note + (
        f" The latest bench (reports/bench.json: {bench.get('rounds', '?')} rounds, {source} data, each framework on "
        f"its default threads), plain modes at batch {p.batch_size}, NumPy's epoch time over the framework's, the "
        f"median over rounds (range): {per}."
    )


def bench_section(path: Path) -> Section | None:
    """The latest `make bench` results (reports/bench.md, not a DVC output), when there."""
    if not path.is_file():
        return None
    intro = f"The latest `make bench` results, as {path.name} has them (docs/benchmark.md):"
    return Section("Latest bench results", [intro, *from_markdown(path.read_text())])


def write_page(doc: Document, reports_dir: Path) -> Path:
    """index.html: the document, its headline and appendix (stability map, bench), figures inlined."""
    return atomic_write(reports_dir / "index.html", html_report.render(doc, reports_dir))


def summary_metrics(summary_json: dict[str, dict[str, float]], counts: str) -> dict[str, float]:
    """The headline numbers as MLflow metrics: summary.json's (acc.seq, acc.par, acc.hw, x.pt, ...)
    and the run counts (runs, runs.finished, ... from `counts`, e.g. "24 runs: 23 finished, 1 missing")."""
    metrics = {f"{group}.{k}": float(v) for group, values in summary_json.items() for k, v in values.items()}
    total, _, rest = counts.partition(" runs: ")
    metrics["runs"] = float(total)
    for part in rest.split(", "):
        n, _, status = part.partition(" ")
        metrics[f"runs.{status.replace(' ', '_')}"] = float(n)
    return metrics


def open_store(uri: str | None, experiment: str) -> None:
    """Open the MLflow store and find (or create) the experiment, as log_summary_run will: the
    client is cached per process, so this is the import and set-up cost paid ahead of time."""
    from backprop_bench.tracking.client import client_and_experiment
    from backprop_bench.tracking.uri import resolve_uri

    client_and_experiment(resolve_uri(uri, Path.cwd()), experiment)


def log_summary_run(reports_dir: Path, counts: str, uri: str | None, experiment: str) -> str:
    """The report compare() wrote as an MLflow run of its own (tracking/summary.py): index.html,
    comparison.md and the PNGs as artifacts, summary_metrics as metrics; returns its run id.

    counts: compare()'s count of the runs; uri: None for $MLFLOW_TRACKING_URI, else mlflow.db here."""
    from backprop_bench.tracking.summary import log_study_summary
    from backprop_bench.tracking.uri import resolve_uri

    summary_json = json.loads((reports_dir / "summary.json").read_text())
    files = [reports_dir / n for n in ("index.html", "comparison.md", *PNGS)]
    return log_study_summary(resolve_uri(uri, Path.cwd()), experiment, summary_metrics(summary_json, counts), files)


def print_report(reports_dir: Path) -> str:
    path = reports_dir / "comparison.md"
    if not path.is_file():
        raise ReportError(f"{path}: not found: run `dvc repro` (or python -m backprop_bench.compare) first")
    return path.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="runs/<framework>-<device>/<run>/")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument("--data", type=Path, default=Path("data/processed/mnist.npz"), help="test images and labels")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="study: names the runs; compare: the target accuracy"
    )
    parser.add_argument("--print-only", action="store_true", help="print the existing report and exit")
    parser.add_argument("--mlflow", action="store_true", help="log the report as a study-summary MLflow run")
    parser.add_argument(
        "--tracking-uri", help="with --mlflow: the store (default: $MLFLOW_TRACKING_URI, else sqlite mlflow.db here)"
    )
    parser.add_argument("--experiment", default="backprop-bench", help="with --mlflow: the study's experiment")
    args = parser.parse_args(argv)
    try:
        if args.print_only:
            print(print_report(args.reports_dir), end="")
        else:
            p, target = read_study_params(args.params), read_target_accuracy(args.params)
            store = partial(open_store, args.tracking_uri, args.experiment) if args.mlflow else None
            _, counts = compare(args.runs_dir, args.reports_dir, args.data, p, target, meanwhile=store)
            print(f"compare: wrote {args.reports_dir}/ ({counts}); print it with --print-only")
            if args.mlflow:
                run_id = log_summary_run(args.reports_dir, counts, args.tracking_uri, args.experiment)
                print(f"compare: MLflow run {run_id} ({args.experiment}, study-summary) holds index.html and the plots")
    except ValueError as err:  # ReportError, and the params readers' errors naming the file and key
        print(f"compare: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
