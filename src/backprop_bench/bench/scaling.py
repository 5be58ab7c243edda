"""--scaling: samples/s against batch size and threads, for each framework's plain and fastest mode.

Every point is a cell of the cell set cells.SCALING (plain and fastest backend modes, parallel, CPU),
timed by cells.run_cells like any bench cell: one warm-up epoch, then interleaved rounds, an epoch
being one pass over --scaling-samples rows. Each process group runs twice: on every usable core,
then in a child process started with every thread pool pinned to one thread (pinned_env), which
checks what its pools really run (one_thread_check). This module holds the figures and the report;
__main__.run_scaling runs the processes. docs/benchmark.md, section "Scaling", explains them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from backprop_bench.backends import THREAD_ENV
from backprop_bench.bench.cells import default_modes
from backprop_bench.bench.report import paired_ratio
from backprop_bench.core.files import atomic_write
from backprop_bench.report.tables import markdown_table

BATCHES = (16, 32, 64, 128, 256, 512, 1024)
SAMPLES = 8192  # rows per timed epoch: 512 steps at batch 16, 8 at 1024
WITHIN = 1.2  # "within 1.2x of its own best": the report names the batch from which a curve stays there
# A pinned epoch's CPU seconds over its wall seconds above this: more than one thread computed.
# One thread reads 1.00-1.05 here (Python's own threads and the allocator add a little).
ONE_THREAD_CPU_MAX = 1.2
# Every pool's variable: OpenMP (torch, OpenBLAS's OpenMP build), OpenBLAS, MKL, TensorFlow's
# intra- and inter-op pools and jaxlib's XLA:CPU pool (PJRT_NPROC: backends.THREAD_ENV).
PIN_ENV = (*THREAD_ENV, "OPENBLAS_NUM_THREADS")
# XLA's own switch for its Eigen thread pool. It alone does not pin jaxlib 0.10's pool (measured:
# still one tf_XLAEigen thread per core), nor does an intra_op_parallelism_threads entry, which
# XLA_FLAGS ignores, or, written as --intra_op_parallelism_threads, refuses ("Unknown flag",
# the process aborts): PJRT_NPROC does, and one_thread_check counts the pool's threads.
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
# XLA:CPU's and TensorFlow's pool threads, by OS name: reported, not judged. A name is no pool's size:
# a pinned process holding TensorFlow and JAX ran 2 tf_XLAEigen threads (JAX's pool and TF's XLA
# device's, one each) and 22 tf_Compute threads (TF makes several pools under that name), and
# computed on one core (1.03 cores busy at most).
OS_POOLS = ("tf_XLAEigen", "tf_Compute")


def pinned_env(environ: dict[str, str], n: int = 1) -> dict[str, str]:
    """A copy of environ for a child whose every thread pool runs n threads: PIN_ENV set to n and
    XLA_ONE_THREAD added to XLA_FLAGS (the user's own flags kept)."""
    env = dict(environ) | {key: str(n) for key in PIN_ENV}
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(flags + ([XLA_ONE_THREAD] if XLA_ONE_THREAD not in flags else []))
    return env


def one_thread_check(counts: dict, rows: list[dict]) -> dict:
    """Did a pinned process compute on one thread? {ok, why: [what was not one thread], cpu_max}.

    counts: backends.thread_counts() read in that process after its rounds (the pools exist by
    then); rows: its cell rows. Asked of each library (BLAS pools, torch, tf.config), and measured,
    which no setting can fool: the largest median CPU s / wall s of any cell's epochs (JAX has no
    setting to ask; its pool is measured only)."""
    why = [f"BLAS pool {name}: {n} threads" for name, n in counts.get("blas", {}).items() if n != 1]
    why += [f"torch {pool}: {n} threads" for pool, n in counts.get("torch", {}).items() if n != 1]
    # tf.config's 0 means "not set there" (the env variable or the default decides): the OS count tells
    why += [f"tensorflow {pool}: {n} threads" for pool, n in counts.get("tensorflow", {}).items() if n > 1]
    cores = [r["cores_busy"] for r in rows if r.get("cores_busy") is not None]
    cpu_max = max(cores, default=None)
    if cpu_max is not None and cpu_max > ONE_THREAD_CPU_MAX:
        worst = max((r for r in rows if r.get("cores_busy") is not None), key=lambda r: r["cores_busy"])
        why.append(f"{worst['cell']}: {cpu_max:.2f} CPU s per wall s (> {ONE_THREAD_CPU_MAX})")
    return {"ok": not why, "why": why, "cpu_max": cpu_max}


def cores_busy(row: dict) -> float | None:
    """Median over rounds of an epoch's CPU seconds over its wall seconds: the cores it kept busy."""
    pairs = list(zip(row.get("cpu_seconds") or [], row.get("epoch_seconds") or []))
    return statistics.median(cpu / wall for cpu, wall in pairs) if pairs and row["status"] == "ok" else None


# ----------------------------------------------------------------------------- the curves


def within_from(ratios: dict[int, float | None], within: float = WITHIN) -> int | None:
    """The smallest batch B from which every batch >= B is within `within` of the best.

    ratios: {batch: epoch time over the best point's (>= 1 slower), None: not measured}. A batch
    not measured breaks the run (nothing is known there), so does one too slow: on a curve that
    rises, dips and rises again the answer is after the dip. None: the largest batch itself is not
    within (the curve falls off at its end) or not measured."""
    start = None
    for batch in sorted(ratios, reverse=True):
        ratio = ratios[batch]
        if ratio is None or ratio > within:
            break
        start = batch
    return start


def curves(rows: list[dict], batches: list[int], keras_spe: list[int]) -> list[dict]:
    """One curve per threads x group x framework x mode, in the rows' order.

    Each: {framework, mode, kind (plain/fastest), group, threads, points: [{batch, samples_per_second,
    vs_best, cores_busy, status, reason}, one per batch], best_batch, best_samples_per_second, within_from}.
    vs_best: the point's epoch time over the curve's fastest point (by median), paired over rounds
    like the bench's ratios (one process, the same rounds)."""
    keys = dict.fromkeys((r["threads"], r["group"], r["framework"], r["mode"]) for r in rows)
    out = []
    for threads, group, fw, mode in keys:
        mine = {
            r["batch"]: r
            for r in rows
            if (r["threads"], r["group"], r["framework"], r["mode"]) == (threads, group, fw, mode)
        }
        ok = [r for r in mine.values() if r["status"] == "ok"]
        best = max(ok, key=lambda r: r["samples_per_second"]) if ok else None
        points = [{"batch": b} | _point(mine.get(b), best) for b in batches]
        plain, _ = default_modes(keras_spe)[fw]
        out.append(
            {
                "framework": fw,
                "mode": mode,
                "kind": "plain" if mode == plain else "fastest",
                "group": group,
                "threads": threads,
                "points": points,
                "best_batch": best["batch"] if best else None,
                "best_samples_per_second": best["samples_per_second"] if best else None,
                "within_from": within_from({p["batch"]: p["vs_best"] for p in points}),
            }
        )
    return out


def _point(row: dict | None, best: dict | None) -> dict:
    if row is None:
        return {"samples_per_second": None, "vs_best": None, "cores_busy": None, "status": "not run", "reason": ""}
    ok = row["status"] == "ok"
    return {
        "samples_per_second": row.get("samples_per_second"),
        "vs_best": paired_ratio(row["epoch_seconds"], best["epoch_seconds"]) if ok else None,
        "cores_busy": row.get("cores_busy"),
        "status": row["status"],
        "reason": row.get("reason", ""),
    }


# ----------------------------------------------------------------------------- the report


def threads_label(threads: int) -> str:
    return "1 thread" if threads == 1 else f"all cores ({threads})"


def _curve_name(c: dict) -> str:
    # no group: here a framework runs in one group only (cells.process_groups with pairs=False)
    return f"{c['framework']} {c['mode']}"


def _within_table(result: dict) -> list[str]:
    """framework-mode x threads: the batch from which it stays within WITHIN of its best."""
    threads = result["threads"]
    by_key = {(c["group"], c["framework"], c["mode"], c["threads"]): c for c in result["curves"]}
    names = dict.fromkeys((c["group"], c["framework"], c["mode"], c["kind"]) for c in result["curves"])
    header = ["framework", "mode", *(f"{threads_label(t)}: from batch" for t in threads)]
    header += [f"{threads_label(t)}: best (batch)" for t in threads]
    table = []
    for group, fw, mode, kind in names:
        found = [by_key.get((group, fw, mode, t)) for t in threads]
        table.append([fw, f"{mode} ({kind})"] + [_from(c) for c in found] + [_best(c) for c in found])
    return [
        "",
        f"## Within {result['within']}x of its own best: from which batch",
        "",
        markdown_table(header, table, align="ll" + "r" * (len(header) - 2)),
        "",
        f"From batch B: every batch >= B reaches at least 1/{result['within']} of the curve's best samples/s "
        "(paired over rounds); a smaller batch may too, but some batch between it and B does not. "
        "never: the largest batch is itself not there; failed: no point ran.",
    ]


def _from(c: dict | None) -> str:
    if c is None:  # not asked for at this thread count
        return ""
    if c["best_batch"] is None:
        return "failed"
    return "never" if c["within_from"] is None else str(c["within_from"])


def _best(c: dict | None) -> str:
    if c is None or c["best_batch"] is None:
        return ""
    return f"{c['best_samples_per_second']:,.0f} ({c['best_batch']})"


def _points_table(result: dict, field: str, fmt: str, title: str, note: str) -> list[str]:
    header = ["framework-mode", "threads", *(str(b) for b in result["batches"])]
    table = [
        [_curve_name(c), threads_label(c["threads"])] + [_value(p, field, fmt) for p in c["points"]]
        for c in result["curves"]
    ]
    return ["", title, "", markdown_table(header, table, align="ll" + "r" * len(result["batches"])), "", note]


def _value(point: dict, field: str, fmt: str) -> str:
    if point["status"] != "ok":
        return point["status"]
    return "" if point[field] is None else format(point[field], fmt)


def _threads_section(result: dict) -> list[str]:
    """Each process: what its pools reported and whether the pinned ones ran one thread."""
    header = ["group", "threads", "BLAS pools", "torch", "tensorflow (tf.config)", "OS pool threads"]
    header += ["max cores busy", "one thread"]
    table = []
    for run in result["runs"]:
        counts = run.get("thread_counts") or {}
        check = run.get("one_thread")
        verdict = "" if check is None else ("yes" if check["ok"] else "**NO**: " + "; ".join(check["why"]))
        table.append(
            [run["group"], threads_label(run["threads"])]
            + [_counts(counts.get(k)) for k in ("blas", "torch", "tensorflow")]
            + [_counts({k: v for k, v in counts.get("os_threads", {}).items() if k in OS_POOLS})]
            + [_max_busy(result, run), verdict if run["error"] is None else "(failed)"]
        )
    return [
        "",
        "## Threads: what each process ran",
        "",
        markdown_table(header, table, align="l"),
        "",
        "The 1-thread processes start with every pool's variable set to 1 "
        f"({', '.join(PIN_ENV)}; XLA_FLAGS {XLA_ONE_THREAD}), then set torch's and TensorFlow's own thread "
        "settings. After the rounds each process reports its pools as each library sees them and "
        "measures the cores each epoch kept busy (CPU seconds of the whole process over wall seconds; JAX "
        f"has no setting to ask, so this is its check). One thread: every pool at 1 and no epoch above "
        f"{ONE_THREAD_CPU_MAX} cores busy. tf.config 0: not set there. OS pool threads ({', '.join(OS_POOLS)}) "
        "are for information: several pools run under one name, so a count is no pool's size.",
    ]


def _counts(value: dict | None) -> str:
    return "" if not value else ", ".join(f"{k} {v}" for k, v in value.items())


def _max_busy(result: dict, run: dict) -> str:
    busy = [
        p["cores_busy"]
        for c in result["curves"]
        if (c["group"], c["threads"]) == (run["group"], run["threads"])
        for p in c["points"]
        if p["cores_busy"] is not None
    ]
    return f"{max(busy):.2f}" if busy else ""


def _problems(result: dict) -> list[str]:
    """Failed processes (with their error) and failed points (with their reason): never dropped."""
    lines = []
    for run in result["runs"]:
        if run["error"] is not None:
            lines += [f"- group {run['group']}, {threads_label(run['threads'])}: **FAILED**", "", "  ```"]
            lines += [f"  {line}" for line in run["error"].splitlines()] + ["  ```"]
        elif not run["ran"]:
            lines.append(f"- group {run['group']}, {threads_label(run['threads'])}: not run (interrupted before it)")
    for c in result["curves"]:
        for p in c["points"]:
            if p["status"] != "ok" and p["reason"] not in ("", GROUP_FAILED, NOT_RUN):
                lines.append(f"- {_curve_name(c)}, {threads_label(c['threads'])}, batch {p['batch']}: {p['reason']}")
    return ["", "## What did not run", "", *lines] if lines else []


# The reason of every point of a process that gave no cells: listed once, with the process
GROUP_FAILED = "its process failed"
NOT_RUN = "not run: the bench was interrupted before its process"


def markdown(result: dict) -> str:
    """The whole scaling report (bench_scaling.md)."""
    d, m = result["data"], result["machine"]
    lines = [
        "# Scaling: samples/s against batch size and threads",
        "",
        f"MLP {'-'.join(map(str, result['sizes']))}, float32, {result['optimizer']}, parallel strategy, CPU. "
        f"Data: {d['source']} ({d['n']:,} rows: every point is one epoch over them). {result['rounds']} timed "
        f"round(s) per process after one warm-up epoch, the points of a process interleaved. Machine: "
        f"{m['cpu']}, {m['cores_usable']} usable cores{_load(m)}. Each framework's plain and fastest mode "
        "(docs/benchmark.md); the plot is bench_scaling.png.",
        f"\nCommand: `{result['command']}`",
    ]
    lines += _within_table(result)
    lines += _points_table(
        result,
        "samples_per_second",
        ",.0f",
        "## samples/s",
        "Rows per second of the median epoch. Points of one row ran in one process, interleaved; "
        "the two thread counts ran in two processes, one after the other.",
    )
    lines += _points_table(
        result,
        "cores_busy",
        ".2f",
        "## Cores busy",
        "CPU seconds of the whole process (every thread) over wall seconds, median over the epochs.",
    )
    lines += _threads_section(result) + _problems(result)
    if result["rounds"] < result["rounds_requested"]:
        lines.append(f"\nInterrupted: {result['rounds']} of {result['rounds_requested']} rounds done.")
    return "\n".join(lines) + "\n"


def _load(machine: dict) -> str:
    """The 1-minute load average before and after the run: the other work the points shared the
    machine with (above the usable cores, they queued for it)."""
    load = machine.get("load_average")
    return f", load average {load[0]:.1f} before and {load[1]:.1f} after the run" if load else ""


def write(result: dict, out_dir: Path) -> str:
    """bench_scaling.json, bench_scaling.md and bench_scaling.png into out_dir, each atomically;
    returns the markdown."""
    from backprop_bench.report.plots import plot_scaling  # imports matplotlib

    atomic_write(out_dir / "bench_scaling.json", json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    md = markdown(result)
    atomic_write(out_dir / "bench_scaling.md", md)
    plot_scaling(result["curves"], result["batches"], out_dir / "bench_scaling.png", threads_label)
    return md
