"""Side-by-side speed benchmark: every backend x strategy x mode, beside the machine's matmul limit.

    python -m backprop_bench.bench                  # the default cells (make bench), ~3 min on 2 cores
    python -m backprop_bench.bench --cells full     # every cell (make bench-full), ~15 min on 2 cores
    python -m backprop_bench.bench --frameworks numpy,torch --batches 256 --rounds 3
    python -m backprop_bench.bench --samples 4096 --rounds 1 --peak-size 256   # plumbing check
    python -m backprop_bench.bench --scaling        # samples/s against batch and threads (make bench-scaling)

Writes reports/bench.json and reports/bench.md and prints the markdown. Unless
--keep-blas-env, the bench re-executes itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
(its own process only). keras-jax and keras-torch run in child benches of their own
(cells.process_groups: Keras runs on one backend per process), merged into the one report.
docs/benchmark.md explains the figures.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from backprop_bench.backends import FRAMEWORKS, pin_threads, thread_counts
from backprop_bench.bench import baseline as B
from backprop_bench.bench import cells as C
from backprop_bench.bench import npprofile as NP
from backprop_bench.bench import peak as P
from backprop_bench.bench import phases as PH
from backprop_bench.bench import report as R
from backprop_bench.bench import scaling as S
from backprop_bench.core.files import atomic_write
from backprop_bench.core.specs import MLPSpec, OptimizerSpec

BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
CHILD_FILE = "child.json"  # what a child bench writes into its --out-dir, for its parent
PHASES_PLOT = "bench_phases.png"  # beside bench.json: the phases as stacked bars
ERROR_LINES = 20  # the last lines of a failed child's output kept as its error
DEFAULT_ROUNDS = {"default": 3, "full": 5}  # per --cells: 3 is the fewest the report accepts
_UNSET_MARK = "BACKPROP_BENCH_UNSET_BLAS_ENV"  # set in the re-executed child: JSON of what was removed


# ----------------------------------------------------------------------------- BLAS environment


def without_blas_env(environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(a copy of environ without the OpenBLAS tuning variables, the ones removed)."""
    removed = {k: environ[k] for k in BLAS_ENV_VARS if k in environ}
    env = {k: v for k, v in environ.items() if k not in removed}
    return env, removed


def reexec_without_blas_env(argv: list[str]) -> None:
    """Replace this process by a fresh bench without the OpenBLAS variables, if any are set.

    OpenBLAS reads them once, when NumPy loads it, so only a fresh process is clean.
    Returns only when there is nothing to remove.
    """
    env, removed = without_blas_env(dict(os.environ))
    if not removed:
        return
    env[_UNSET_MARK] = json.dumps(removed)
    print(f"bench: re-executing without {', '.join(removed)} (keep them with --keep-blas-env)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "backprop_bench.bench", *argv], env)


def blas_env_report(kept: bool) -> dict:
    """{in_effect: {name: value or None}, unset_by_bench: {name: value}, keep_blas_env}."""
    return {
        "in_effect": {k: os.environ.get(k) for k in BLAS_ENV_VARS},
        "unset_by_bench": json.loads(os.environ.get(_UNSET_MARK, "{}")),
        "keep_blas_env": kept,
    }


# ----------------------------------------------------------------------------- options


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked; a bad one exits with a message naming it."""
    ap = argparse.ArgumentParser(prog="python -m backprop_bench.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cells",
        choices=C.CELL_SETS,
        default="default",
        help="default (about 3 min): each framework's fastest mode at every batch and its plain mode at the "
        "smallest, parallel, phases at the smallest batch (docs/benchmark.md); full: every mode x strategy "
        "of the grid, the stock idioms included, phases at every batch",
    )
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma list (default: all)")
    ap.add_argument("--strategies", default="parallel,sequential")
    ap.add_argument(
        "--batches", default=None, help="comma list of batch sizes (default 64,256; with --scaling 16,32,...,1024)"
    )
    ap.add_argument(
        "--devices",
        "--device",
        dest="devices",
        default="cpu,cuda",
        help="cpu and/or cuda; cuda cells are skipped without a GPU",
    )
    ap.add_argument(
        "--rounds",
        "--epochs",
        dest="rounds",
        type=int,
        default=None,
        help="timed epochs per cell, one per interleaved round (after one warm-up epoch); "
        f"default {DEFAULT_ROUNDS['default']} with --cells default, {DEFAULT_ROUNDS['full']} with --cells full",
    )
    ap.add_argument("--samples", type=int, default=C.N_TRAIN, help="train-set rows (default 60000)")
    ap.add_argument(
        "--data",
        choices=("auto", "fashion-mnist", "synthetic"),
        default="auto",
        help="auto: Fashion-MNIST when its files are there, else seeded synthetic data",
    )
    ap.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="where Fashion-MNIST lives: its data.catalog.fashion_mnist (local_dir, file names)",
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="override the catalog's local_dir")
    ap.add_argument(
        "--keras-spe",
        default=C.DEFAULT_KERAS_SPE,
        help="comma list of steps_per_execution values, one keras jit-speN mode each ('' or 1: none)",
    )
    ap.add_argument(
        "--stock",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --cells full: also time each framework's stock idioms (bench/stock.py), parallel only",
    )
    ap.add_argument(
        "--phases",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the rounds, split each plain and fastest mode's step into forward, backward, update and "
        "the rest (bench/phases.py; bench.json: phases, reports: a table and bench_phases.png)",
    )
    ap.add_argument("--peak-size", type=int, default=2048, help="square sgemm size for the peak")
    ap.add_argument("--peak-repeats", type=int, default=7, help="timing samples per matmul shape")
    ap.add_argument("--peak-seconds", type=float, default=0.05, help="minimum length of one timing sample, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path("reports"))
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier bench.json: each cell timed in both runs gets this run's epoch time over the "
        f"baseline's, flagged slower or faster beyond {B.TOLERANCE * 100:g} %% (docs/benchmark.md)",
    )
    ap.add_argument(
        "--tracking",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the bench as MLflow runs in the experiment backprop-bench-bench: one per bench, one per "
        "cell (store: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory)",
    )
    ap.add_argument(
        "--keep-blas-env",
        action="store_true",
        help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (default: re-exec without them)",
    )
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="instead of the cells: samples/s against batch size and threads (all cores, then 1) for each "
        "framework's plain and fastest mode, parallel, CPU; writes bench_scaling.json/.md/.png "
        "(docs/benchmark.md, section Scaling; records no MLflow run)",
    )
    ap.add_argument(
        "--scaling-samples",
        type=int,
        default=S.SAMPLES,
        help=f"with --scaling: the rows of one timed epoch, at every batch size (default {S.SAMPLES})",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="internal, with --child: pin every thread pool of the child to this many threads (0: leave them)",
    )
    ap.add_argument(
        "--numpy-profile",
        action="store_true",
        help="only print where a NumPy-fast epoch's seconds go, op by op, at each --batches (bench/npprofile.py: "
        "--samples rows, --rounds, the first of --strategies, --data, --seed) and exit",
    )
    ap.add_argument(
        "--child",
        choices=(C.MAIN, *C.CHILD_GROUPS),
        default=None,
        help="internal: run as the child bench of this process group; it times --frameworks as they "
        f"are and writes only OUT_DIR/{CHILD_FILE} (no peak, no report)",
    )
    args = ap.parse_args(argv)
    args.argv = list(argv or [])
    if args.rounds is None:
        args.rounds = DEFAULT_ROUNDS[args.cells]
    if args.batches is None:
        args.batches = ",".join(map(str, S.BATCHES)) if args.scaling else "64,256"
    if args.threads < 0 or (args.threads and not args.child):
        ap.error(f"--threads {args.threads}: a child bench's option (--child), >= 0")
    if args.scaling:  # its own cell set, on the CPU, over --scaling-samples rows; a child parses the same argv
        if args.baseline:
            ap.error("--baseline compares bench.json files: not with --scaling")
        args.cells, args.samples, args.devices, args.strategies = C.SCALING, args.scaling_samples, "cpu", "parallel"
        args.tracking = args.phases = False  # the phases are the default bench's, at its batch sizes
    args.frameworks, args.strategies, args.devices = map(_list, (args.frameworks, args.strategies, args.devices))
    for option in ("batches", "keras_spe"):
        try:
            setattr(args, option, [int(v) for v in _list(getattr(args, option))])
        except ValueError:
            ap.error(
                f"--{option.replace('_', '-')} {getattr(args, option)!r}: "
                "expected comma-separated integers, e.g. 64,256"
            )
    for option, values, allowed in (
        ("--frameworks", args.frameworks, FRAMEWORKS),
        ("--strategies", args.strategies, ("parallel", "sequential")),
        ("--devices", args.devices, ("cpu", "cuda")),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            ap.error(f"{option}: {', '.join(bad) or 'empty'}: expected a comma list of {', '.join(allowed)}")
    if args.rounds < 1 or not args.batches or args.samples < max(args.batches) or min(args.batches) < 1:
        ap.error(
            f"need --rounds >= 1 and 1 <= batch <= --samples, got --rounds {args.rounds}, "
            f"--batches {args.batches}, --samples {args.samples}"
        )
    if (
        args.tracking and not args.child and not args.numpy_profile
    ):  # a bad $MLFLOW_TRACKING_URI stops the bench before it times anything
        from backprop_bench.tracking.uri import TrackingUriError, resolve_uri

        try:
            resolve_uri(None, Path.cwd())
        except TrackingUriError as err:
            ap.error(f"--tracking: {err} (or pass --no-tracking)")
    # read now: a bad file stops the bench before it times anything (a child bench never compares)
    args.baseline_result = B.load(args.baseline) if args.baseline and not args.child else None
    return args


# ----------------------------------------------------------------------------- the run


def measure_peaks(args: argparse.Namespace, frameworks: list[str]) -> tuple[list[dict], list[str]]:
    """NumPy's peak, and torch's when torch is among the frameworks benched; notes on what was left out."""
    libraries = ["numpy"] + (["torch"] if "torch" in frameworks else [])
    peaks = [
        P.measure_peak(lib, C.SIZES, args.batches, args.peak_size, args.peak_repeats, args.peak_seconds)
        for lib in libraries
    ]
    notes = (
        []
        if "torch" in libraries
        else ["torch peak not measured: torch is not among --frameworks (a NumPy-only bench never imports it)."]
    )
    return peaks, notes


def build_all(
    cells: list[C.Cell], spec: MLPSpec, x: np.ndarray, y: np.ndarray, seed: int, optimizer: OptimizerSpec
) -> tuple[dict[str, C.Model], dict[str, dict]]:
    """Every cell's backend (imports and set-up stay out of the rounds) and each
    framework-mode's info()."""
    made, info = {}, {}
    for cell in cells:
        backend = C.build(cell, spec, x, y, seed, optimizer)
        if backend is None:
            continue
        made[cell.name] = backend
        key = f"{cell.framework}-{cell.mode}"
        if key not in info:
            try:
                info[key] = backend.info()
            except Exception as err:
                info[key] = {"error": f"{type(err).__name__}: {err}"}
    return made, info


def run_group(
    args: argparse.Namespace, frameworks: list[str], group: str, data: tuple[np.ndarray, np.ndarray]
) -> tuple[list[C.Cell], dict[str, dict], int, list[dict]]:
    """Build and time one process group's cells in this process: (cells, backend info, rounds done,
    phases: [] with --no-phases or when the rounds were interrupted). Every group draws the same
    epoch orders from --seed."""
    spec, optimizer = MLPSpec(C.SIZES), OptimizerSpec("sgd", lr=C.BENCH_LR)
    cells = C.plan_cells(
        frameworks, args.strategies, args.batches, args.devices, args.keras_spe, args.stock, group, args.cells
    )
    made, info = build_all(cells, spec, *data, args.seed, optimizer)
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(args.samples) for _ in range(args.rounds + 1)]  # warm-up + rounds
    done = C.run_cells(cells, made, orders)
    measured = args.phases and done == args.rounds
    phases = PH.measure(cells, made, args.samples, args.keras_spe, args.cells) if measured else []
    return cells, info, done, phases  # the models go once this returns


def run_child(args: argparse.Namespace) -> None:
    """The child bench: time its group's frameworks, write CHILD_FILE for the parent, nothing else.
    --threads N: every pool pinned to N threads before any framework computes; the pools' thread
    counts, read after the rounds, go to the parent too."""
    if args.threads:
        pin_threads(args.threads, args.frameworks)
    x, y, _ = C.load_train_set(args.data, args.samples, args.seed, args.params, args.data_dir)
    cells, info, done, phases = run_group(args, args.frameworks, args.child, (x, y))
    for sig in (signal.SIGTERM, signal.SIGINT):  # a stop now would leave the parent nothing: the file comes first
        signal.signal(sig, signal.SIG_IGN)
    out = {"group": args.child, "rounds": done, "cells": [dataclasses.asdict(c) for c in cells], "backend_info": info}
    out["thread_counts"] = thread_counts()
    out["phases"] = phases  # measured here, in the child's own process, beside its cells
    atomic_write(args.out_dir / CHILD_FILE, json.dumps(out, indent=2, allow_nan=False) + "\n")


def child_argv(args: argparse.Namespace, group: str, frameworks: list[str], out_dir: Path) -> list[str]:
    """The parent's own options, then the child's: argparse keeps an option's last value."""
    return [*args.argv, "--frameworks", ",".join(frameworks), "--out-dir", str(out_dir), "--child", group]


def spawn_child(
    args: argparse.Namespace, group: str, frameworks: list[str], threads: int = 0
) -> tuple[list[C.Cell], dict, dict, list[dict]]:
    """Run one group in a child bench (its output goes to stderr): (its cells, its backend info, its
    record {group, frameworks, rounds, error, interrupted, thread_counts}, its phases). A child that
    fails gives no cells and its error. threads > 0: the child starts with every pool pinned to that
    many threads (scaling.pinned_env, and --threads for the settings made in the process)."""
    record = _record(group, frameworks)
    with tempfile.TemporaryDirectory(prefix=f"bench-{group}-") as tmp:
        cmd = [sys.executable, "-m", "backprop_bench.bench", *child_argv(args, group, frameworks, Path(tmp))]
        env = None
        if threads:
            cmd += ["--threads", str(threads)]
            env = S.pinned_env(dict(os.environ), threads)
        on = f" on {threads} thread(s)" if threads else ""
        print(f"bench: group {group} ({', '.join(frameworks)}) in a child process{on}", file=sys.stderr)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        tail: collections.deque[str] = collections.deque(maxlen=ERROR_LINES)
        try:
            _relay(proc, tail)
        except KeyboardInterrupt:  # stop the child too; it reports the rounds it finished
            record["interrupted"] = True
            proc.send_signal(signal.SIGTERM)
            _relay(proc, tail)
        rc, path = proc.wait(), Path(tmp) / CHILD_FILE
        if rc != 0 or not path.is_file():
            record["error"] = f"the child bench exited with status {rc}; its last lines:\n" + "".join(tail).rstrip()
            return [], {}, record, []
        done = json.loads(path.read_text())
    record["rounds"] = done["rounds"]
    record["interrupted"] |= done["rounds"] < args.rounds  # e.g. Ctrl-C, which reaches the child too
    record["thread_counts"] = done.get("thread_counts")
    return [C.Cell(**c) for c in done["cells"]], done["backend_info"], record, done["phases"]


def _record(group: str, frameworks: list[str], rounds: int = 0, ran: bool = True, interrupted: bool = False) -> dict:
    """A process group's entry in bench.json: ran False when an interrupted bench never started it;
    error: why its child failed (None: it did not)."""
    return {
        "group": group,
        "frameworks": frameworks,
        "ran": ran,
        "rounds": rounds,
        "error": None,
        "interrupted": interrupted or not ran,
    }


def _relay(proc: subprocess.Popen, tail: collections.deque) -> None:
    for line in proc.stdout:
        sys.stderr.write(line)
        tail.append(line)


def run_bench(args: argparse.Namespace) -> dict:
    """The whole benchmark; returns what it wrote to bench.json."""
    spec, optimizer = MLPSpec(C.SIZES), OptimizerSpec("sgd", lr=C.BENCH_LR)
    x, y, data = C.load_train_set(args.data, args.samples, args.seed, args.params, args.data_dir)
    print(f"bench: data {data}", file=sys.stderr)
    groups = C.process_groups(args.frameworks)
    peaks, notes = measure_peaks(args, [fw for fws in groups.values() for fw in fws])
    numpy_peak = peaks[0]["square"]["median"]
    ceiling = P.ceiling(peaks, args.batches)

    cells, info, records, phases = [], {}, [], []
    for group, frameworks in groups.items():
        if any(r["interrupted"] for r in records):  # stopped: run no further group
            records.append(_record(group, frameworks, ran=False))
            continue
        if group == C.MAIN:
            got, got_info, done, got_phases = run_group(args, frameworks, group, (x, y))
            record = _record(group, frameworks, rounds=done, interrupted=done < args.rounds)
        else:
            got, got_info, record, got_phases = spawn_child(args, group, frameworks)
        cells += got
        phases += got_phases
        info = got_info | info  # the same framework-mode's info from two processes: the first group's
        records.append(record)
    for p in peaks:  # the same square sgemm again: how much the machine drifted meanwhile
        p["square_after"] = P.square_gflops(p["library"], args.peak_size, args.peak_repeats, args.peak_seconds)

    rows = R.cell_rows(cells, spec, args.samples, numpy_peak, ceiling)
    ran = [r["rounds"] for r in records if r["ran"] and r["error"] is None]
    result = {
        "sizes": list(C.SIZES),
        "dtype": "float32",
        "optimizer": f"{optimizer.name} lr={optimizer.lr}",
        "data": data,
        "cell_set": args.cells,
        "batches": args.batches,
        "rounds": min(ran, default=0),  # complete interleaved rounds of every group (fewer if interrupted)
        "rounds_requested": args.rounds,
        "groups": records,
        "gflop_per_epoch": spec.needed_flops(args.samples) / 1e9,
        "peak": {
            "square_n": args.peak_size,
            "numpy_square_median": numpy_peak,
            "libraries": peaks,
            "ceiling": ceiling,
            "notes": notes,
        },
        "cells": rows,
        "phases": phases if args.phases else None,  # None: --no-phases
        "keras_costs": R.keras_costs(rows),
        "gpu_note": R.gpu_note(rows, args.devices),
        "versions": P.versions(),
        "backend_info": info,
        "blas": P.blas_info(),
        "blas_env": blas_env_report(args.keep_blas_env),
        "machine": P.machine(),
        "command": " ".join(["python -m backprop_bench.bench", *args.argv]),
    }
    PH.add_floors(phases, spec, ceiling)
    if phases:  # the file's name, beside bench.json
        result["phases_plot"] = PH.plot(phases, args.out_dir / PHASES_PLOT).name
    numpy_ceiling = {b: peaks[0][f"mlp_b{b}"] / numpy_peak for b in args.batches}
    result["goals"] = R.evaluate_goals(rows, args.peak_size, matmul_ceiling=numpy_ceiling)
    if args.baseline_result is not None:
        result["baseline"] = B.compare(result, args.baseline_result, str(args.baseline))
    atomic_write(args.out_dir / "bench.json", json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    md = R.markdown(result)
    atomic_write(args.out_dir / "bench.md", md)
    print(md)
    return result


def run_scaling(args: argparse.Namespace) -> dict:
    """--scaling: every process group on every usable core (main in this process, the Keras groups in
    children), then each again in a child pinned to one thread; returns what it wrote to
    bench_scaling.json. Nothing is paired across processes: each curve's points ran in one."""
    optimizer = OptimizerSpec("sgd", lr=C.BENCH_LR)
    x, y, data = C.load_train_set(args.data, args.samples, args.seed, args.params, args.data_dir)
    print(f"bench: scaling, data {data}", file=sys.stderr)
    groups = C.process_groups(args.frameworks, pairs=False)  # no Keras ratio here: jax and torch once
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]  # the machine's other work, beside the points' noise
    thread_runs = list(dict.fromkeys((cores, 1)))  # one run only on a 1-core machine
    rows, runs = [], []
    for threads in thread_runs:
        for group, frameworks in groups.items():
            if any(r["interrupted"] for r in runs):  # stopped: run nothing further
                record, got = _record(group, frameworks, ran=False), []
            elif threads == cores and group == C.MAIN:
                got, _, done, _ = run_group(args, frameworks, group, (x, y))
                record = _record(group, frameworks, rounds=done, interrupted=done < args.rounds)
                record["thread_counts"] = thread_counts()
            else:
                got, _, record, _ = spawn_child(args, group, frameworks, threads=1 if threads == 1 else 0)
            record["threads"] = threads
            rows += _scaling_rows(args, record, got)
            runs.append(record)
    ran = [r["rounds"] for r in runs if r["ran"] and r["error"] is None]
    result = {
        "sizes": list(C.SIZES),
        "optimizer": f"{optimizer.name} lr={optimizer.lr}",
        "data": data,
        "batches": args.batches,
        "threads": thread_runs,
        "within": S.WITHIN,
        "rounds": min(ran, default=0),
        "rounds_requested": args.rounds,
        "runs": runs,
        "curves": S.curves(rows, args.batches, args.keras_spe),
        "cells": rows,
        "versions": P.versions(),
        "machine": P.machine() | {"load_average": [load_before, os.getloadavg()[0]]},
        "command": " ".join(["python -m backprop_bench.bench", *args.argv]),
    }
    print(S.write(result, args.out_dir))
    return result


def _scaling_rows(args: argparse.Namespace, record: dict, got: list[C.Cell]) -> list[dict]:
    """One process's cell rows, tagged with its thread count and each epoch's cores busy; a process
    that gave no cells gives its planned cells as failed (reported, never dropped). A pinned
    process's record gets its one-thread check (scaling.one_thread_check)."""
    if not got:
        got = C.plan_cells(
            record["frameworks"],
            ["parallel"],
            args.batches,
            ["cpu"],
            args.keras_spe,
            group=record["group"],
            cell_set=C.SCALING,
        )
        for cell in got:
            cell.status, cell.reason = "failed", S.GROUP_FAILED if record["ran"] else S.NOT_RUN
    rows = [r | {"threads": record["threads"]} for r in R.cell_rows(got, MLPSpec(C.SIZES), args.samples, None)]
    for r in rows:
        r["cores_busy"] = S.cores_busy(r)
    if record["threads"] == 1 and record["ran"] and record["error"] is None:
        record["one_thread"] = S.one_thread_check(record.get("thread_counts") or {}, rows)
    return rows


def track(args: argparse.Namespace, result: dict) -> None:
    """Record the bench as MLflow runs (tracking/bench.py), its report files as the parent's artifacts."""
    from backprop_bench.tracking.bench import EXPERIMENT, record_bench  # imports mlflow: only with tracking

    files = [args.out_dir / name for name in ("bench.json", "bench.md", PHASES_PLOT)]
    files = [f for f in files if f.name != PHASES_PLOT or result.get("phases_plot")]  # a plot of this run only
    run_id = record_bench(result, files, Path.cwd())
    print(f"bench: recorded as MLflow run {run_id} in the experiment {EXPERIMENT}", file=sys.stderr)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _interrupt_once(signum: int, frame: object) -> None:
    """A child's: the first SIGTERM or Ctrl-C stops its rounds, later ones (the parent passes a stop
    on, and `timeout` signals the whole process group) are ignored while it writes what it has."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse, re-exec without the OpenBLAS variables if needed, run; 0 on success, 1 when a
    process group failed (the report still says what the others measured)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not args.keep_blas_env:
        reexec_without_blas_env(argv)
    if args.numpy_profile:
        return NP.run(args)
    # `timeout` sends SIGTERM: still write the report
    previous = signal.signal(signal.SIGTERM, _interrupt_once if args.child else _interrupt)
    try:
        if args.child:
            signal.signal(signal.SIGINT, _interrupt_once)
            run_child(args)
            return 0
        if args.scaling:
            result = run_scaling(args)
            failed = [r for r in result["runs"] if r["error"] is not None]
            for r in failed:
                print(
                    f"bench: scaling group {r['group']} ({r['threads']} threads) failed: {r['error']}", file=sys.stderr
                )
            return 1 if failed else 0
        result = run_bench(args)
        if args.tracking:  # inside the try: SIGTERM while recording still ends the runs KILLED
            track(args, result)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [g for g in result["groups"] if g["error"] is not None]
    for g in failed:
        print(f"bench: group {g['group']} failed: {g['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
