"""Stage `compare`: every run of the study becomes reports/comparison.{md,csv}, summary.json
(the few numbers `dvc exp show` displays) and five PNGs (report/plots.py).

    python -m backprop_bench.compare                # runs/ -> reports/, prints one line
    python -m backprop_bench.compare --print-only   # print reports/comparison.md

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
import sys
import tokenize
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from backprop_bench.backends import CLASSES
from backprop_bench.core.checks import is_number, read_section
from backprop_bench.core.files import atomic_write, write_json
from backprop_bench.report import plots, tables
from backprop_bench.report.stats import Interval, mean_interval, paired_test, smallest_p, spread
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
REPORT_FILES = ("comparison.md", "comparison.csv", "summary.json", *PNGS)
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


def markdown_table(rows: list[dict]) -> str:
    """The main table of comparison.md, one line per row, with a final newline."""
    header = [*KEYS, "seeds", *(h for h, *_ in POOLED.values()), "speed vs NumPy", "backend LOC", "note"]
    lines = [
        [*(r[k] for k in KEYS), f"{r['n_finished']}/{r['n_seeds']}"]
        + [_fmt(r[k], *fmt[1:]) for k, fmt in POOLED.items()]
        + [_fmt(r["speed_vs_numpy"], 1, ".2f", "×"), str(r["backend_loc"] or "–"), r["note"]]
        for r in rows
    ]
    return tables.markdown_table(header, lines) + "\n"


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


def target_section(rows: list[dict]) -> str:
    """comparison.md's time-to-accuracy table (target_rows), with a final newline."""
    header = [*KEYS, "reached", "seconds to target", "epoch (mean)", "note"]
    lines = [
        [*(r[k] for k in KEYS), f"{r['n_reached']} of {r['n_finished']}"]
        + [_fmt(r["time_to_target_s"], 1, ".2f"), _fmt(r["epochs_to_target"], 1, ".1f"), r["target_note"]]
        for r in rows
    ]
    return tables.markdown_table(header, lines) + "\n"


def percent(fraction: float) -> str:
    """0.88 -> '88 %', 0.885 -> '88.5 %'."""
    return f"{100 * fraction:.4g} %"


# ----------------------------------------------------------------------------- sequential − parallel


def paired_section(groups: Groups) -> str:
    """Per framework, device, mode and PAIRED quantity: stats.paired_test over the seeds where
    both strategies finished."""
    lines = []
    for (framework, strategy, device, mode), seq_runs in groups.items():
        if strategy != "sequential" or (framework, "parallel", device, mode) not in groups:
            continue
        seq = {r["seed"]: r for r in finished(seq_runs)}
        par = {r["seed"]: r for r in finished(groups[(framework, "parallel", device, mode)])}
        seeds = sorted(seq.keys() & par.keys())
        for key, (name, scale, spec) in PAIRED.items():
            line = [framework, device, mode, name, str(len(seeds))]
            if not seeds:
                lines.append(line + ["–", "–", "–", "no seed finished under both strategies"])
                continue
            t = paired_test([seq[s][key] for s in seeds], [par[s][key] for s in seeds])
            ci = f"[{t.interval.low * scale:{spec}}, {t.interval.high * scale:{spec}}]" if t.n > 1 else "–"
            lines.append(line + [f"{t.mean_diff * scale:{spec}}", ci, f"{t.p_value:.3g}", t.verdict])
    if not lines:
        return "The study does not run both strategies: nothing to pair.\n"
    header = ["framework", "device", "mode", "sequential − parallel", "seeds", "mean", "95 % interval", "p", "verdict"]
    return tables.markdown_table(header, lines) + "\n"


# ----------------------------------------------------------------------------- what Keras costs


def keras_section(groups: Groups, p: StudyParams) -> str:
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
                lines.append(line + ["–", "no seed finished in both"])
                continue
            ratio = mean_interval(ratios, name=f"{keras} / {own} epoch time")
            lines.append(line + [_fmt(ratio, 1, ".2f", "×"), ""])
    if not lines:
        pairs = ", ".join(f"{k} beside {o}" for k, o in KERAS_OVER.items())
        return f"The study runs no Keras framework beside its own backend ({pairs}).\n"
    header = ["Keras", "its backend", "strategy", "device", "mode", "seeds", "epoch time, Keras / backend", "note"]
    return tables.markdown_table(header, lines) + "\n"


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


def native_section(groups: Groups, p: StudyParams, y_test: np.ndarray) -> str:
    """Native mode: test accuracy's spread over frameworks vs over seeds, the test digits the
    frameworks label differently (per seed) and pairwise agreement; then controlled mode in one line."""
    out, combos = [], list(itertools.product(p.strategies, p.devices))
    if "native" not in p.modes:
        out.append("Native mode is not in this study (params.yaml study.modes).\n")
    else:
        out.append("Test accuracy (%): spread across frameworks vs across seeds (one-way ANOVA over seeds).\n")
        for strategy, device in combos:
            runs = {f: finished(groups[(f, strategy, device, "native")]) for f in p.frameworks}
            accs = {f: [100 * r["test_accuracy"] for r in rs] for f, rs in runs.items() if rs}  # in %
            text = spread(accs).describe() if len(accs) > 1 else "fewer than two frameworks finished"
            out.append(f"- {strategy}, {device}: {text}")
        out.append("\nTest digits the frameworks label differently, and who is right on those:\n")
        for strategy, device in combos:
            for i, preds in enumerate(seed_predictions(groups, p, strategy, device, "native")):
                absent = [f for f in p.frameworks if f not in preds]
                note = f" (not finished: {', '.join(absent)})" if absent and len(preds) > 1 else ""
                out.append(f"- {strategy}, {device}, seed {i}: {disagreement_line(preds, y_test)}{note}")
        out.append("\nPairwise agreement: share of test digits on which two frameworks predict the same label.")
        for strategy, device in combos:
            share = agreement_matrix(seed_predictions(groups, p, strategy, device, "native"), list(p.frameworks))
            lines = [[a] + [_fmt(x, 100, ".1f", " %") for x in row] for a, row in zip(p.frameworks, share)]
            out.append(f"\n{strategy}, {device}, seeds pooled:\n\n" + tables.markdown_table(["", *p.frameworks], lines))
    if "controlled" in p.modes:
        out.append(controlled_line([s for c in combos for s in seed_predictions(groups, p, *c, "controlled")]))
    return "\n".join(out) + "\n"


def controlled_line(per_seed: list[dict[str, np.ndarray]]) -> str:
    """Controlled runs of one seed share weights and batches: they should predict the same labels."""
    compared = [preds for preds in per_seed if len(preds) > 1]
    if not compared:
        return "\nIn controlled mode fewer than two frameworks finished any seed."
    total = sum(len(next(iter(preds.values()))) for preds in compared)
    same = total - sum(len(find_disagreements(preds)) for preds in compared)
    return (
        f"\nIn controlled mode the frameworks predict the same label on {same} of {total} test digits "
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
    mode, device = ("controlled" if "controlled" in p.modes else p.modes[0]), p.devices[0]
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
    speed: dict[str, float] = {}
    for f in p.frameworks:
        here = [r["speed_vs_numpy"] for r in rows if (r["framework"], r["device"], r["mode"]) == (f, device, mode)]
        if f != "numpy" and (ratios := [x for x in here if x is not None]):
            speed[SHORT.get(f, f)] = round(float(np.mean(ratios)), 2)
    return {key: group for key, group in (("acc", acc), ("x", speed)) if group}


REPORT = """\
# Comparison of the study's runs

{counts}.

**How to read this.** *Controlled* mode starts every framework from the same initial weights and batch
order, so they do the same arithmetic and agree up to float rounding: differences there are numerics,
and the speed columns compare like with like. *Native* mode gives each framework its own default
initialisation and shuffling (seeded), as its users get them: differences there are real, and the
question is whether they exceed what a change of seed does. `mean ± h` pools the seeds that finished
(seeds 0..{last}): the 95 % Student t interval for the mean, mean ± t(0.975, n − 1)·s/√n, wide with few
seeds; a single seed gives no interval. The paired section compares the strategies run by run (same seed:
same initial weights and batch order) with a sign-flip test; at {seeds} seeds no p-value can be below {floor:.3g}.

## Per framework, strategy, device and mode

{table}
Speed vs NumPy: mean samples/s over NumPy's at the same strategy, device and mode. Test accuracy on the
test split; times are the training loop only, each framework on {threads}. Backend LOC (the
cost of writing it): non-blank lines of `src/backprop_bench/backends/<framework>_backend.py` that are not
only a comment or part of a docstring, a shared module counted in full in each backend built on it: {loc}.

## Time to {target} validation accuracy

Per run, the first epoch whose validation accuracy reaches {target} (params.yaml `compare.target_accuracy`)
and the training-loop seconds until the end of that epoch, the first epoch's compilation and warm-up
included: the time to result of MLPerf Training and AlgoPerf. Validation runs once an epoch, so the time
moves in whole epochs. `mean ± h` over the seeds that reached it; *reached*: of the seeds that finished.

{targets}
## sequential − parallel, paired by seed

{paired}
## What Keras costs over its own backend

Each Keras framework runs its backend's own step math inside Keras's `fit()`, layers and variables
(docs/backends.md), so its epoch time over that backend's low-level loop is what Keras's machinery
costs. Per seed (same weights and batches in controlled mode), then the mean with its 95 % interval;
the stages ran beside others, so `make bench` measures the same ratio interleaved in one process.

{keras}
## Native mode: do frameworks differ?

{native}
Plots: {pngs}.
"""


def threads_note(threads: int) -> str:
    """How many CPU threads the frameworks had (params.yaml study.threads), for the report."""
    if threads == 0:
        return "its default number of CPU threads (study.threads: 0)"
    return f"{threads} CPU thread{'s' if threads > 1 else ''} (study.threads: {threads})"


def compare(
    runs_dir: Path,
    reports_dir: Path,
    data_path: Path,
    p: StudyParams,
    target: float,
    backends_dir: Path = BACKENDS_DIR,
) -> tuple[str, str]:
    """Read every run of the study, write every report file; return (the markdown, a count of the runs).

    target: the validation accuracy (a fraction) time to accuracy waits for (read_target_accuracy)."""
    try:
        with np.load(data_path) as data:
            x_test, y_test = data["x_test"], data["y_test"]  # (N, 784) float32, (N,) int64
    except FileNotFoundError:
        raise ReportError(f"{data_path}: not found (the preprocess stage writes it)") from None
    except KeyError as err:
        raise ReportError(f"{data_path}: missing array {err} (expected x_test and y_test)") from None
    groups = load_study(runs_dir, p, len(y_test))
    rows, targets = build_rows(groups, backends_dir), target_rows(groups, target)
    statuses = [r["status"] for runs in groups.values() for r in runs]
    counts = f"{len(statuses)} runs: " + ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    report = REPORT.format(
        counts=counts,
        last=p.seeds - 1,
        seeds=p.seeds,
        floor=smallest_p(p.seeds),
        threads=threads_note(p.threads),
        table=markdown_table(rows),
        loc="; ".join(f"{f}: {d}" for f, d in dict((r["framework"], r["backend_loc_detail"]) for r in rows).items()),
        target=percent(target),
        targets=target_section(targets),
        paired=paired_section(groups),
        keras=keras_section(groups, p),
        native=native_section(groups, p, y_test),
        pngs=", ".join(PNGS),
    )
    # disagreements.png: native mode if run, parallel if run, the first device, seed 0
    mode = "native" if "native" in p.modes else p.modes[0]
    strategy = "parallel" if "parallel" in p.strategies else p.strategies[0]
    preds = seed_predictions(groups, p, strategy, p.devices[0], mode)[0]
    where = find_disagreements(preds) if len(preds) > 1 else np.array([], dtype=np.int64)

    tables.write_csv_table(reports_dir / "comparison.csv", CSV_COLUMNS, csv_rows(rows, targets))
    write_json(reports_dir / "summary.json", summary(groups, rows, p))
    plots.plot_loss_bands([r for runs in groups.values() for r in runs], reports_dir / "loss_curves.png")
    controlled = [r for r in rows if r["mode"] == "controlled"] or rows
    plots.plot_interval_bars(controlled, "samples_per_second", reports_dir / "time_bars.png", "samples/s", ",.0f")
    plots.plot_interval_bars(rows, "test_accuracy", reports_dir / "accuracy_bars.png", "test accuracy %", ".2f", 100)
    label = f"seconds to {percent(target)} validation accuracy"
    controlled = [r for r in targets if r["mode"] == "controlled"] or targets
    plots.plot_interval_bars(controlled, "time_to_target_s", reports_dir / "time_to_accuracy.png", label, ".2f")
    caption = f"{mode} mode, {strategy}, {p.devices[0]}, seed 0"
    plots.plot_disagreements(preds, where, x_test, y_test, reports_dir / "disagreements.png", caption=caption)
    atomic_write(reports_dir / "comparison.md", report)  # last: its presence means the rest is there
    return report, counts


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
    args = parser.parse_args(argv)
    try:
        if args.print_only:
            print(print_report(args.reports_dir), end="")
        else:
            p, target = read_study_params(args.params), read_target_accuracy(args.params)
            _, counts = compare(args.runs_dir, args.reports_dir, args.data, p, target)
            print(f"compare: wrote {args.reports_dir}/ ({counts}); print it with --print-only")
    except ValueError as err:  # ReportError, and the params readers' errors naming the file and key
        print(f"compare: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
