"""`make run`: `dvc repro`, with the stages that only read the data running side by side.

    python -m backprop_bench.repro             # as many at a time as this process has CPUs
    python -m backprop_bench.repro --jobs 1    # one at a time, as plain `dvc repro` runs them

DVC runs a pipeline's stages one after another. The study stages (one per framework x device)
and the stability map only read data/processed/, so this runs:

1. ``dvc repro preprocess``: the data every other stage reads;
2. those stages, the longest first, ``--jobs`` at a time, each as its own ``dvc repro -s <stage>``
   (DVC locks each stage's paths, so stages with disjoint outputs may run at once, and
   ``--wait-for-lock`` queues their short holds of the repository lock);
3. ``dvc repro``: compare, and whatever else is out of date.

Stages side by side measure what one alone would because each study stage keeps its framework
on study.threads CPU threads (1 by default, params.yaml): two stages on two cores do not share
one. Prints each stage's output as it ends, its wall time, and where the total went. Ctrl-C or
SIGTERM is passed on to the running stages (their MLflow runs end KILLED) and starts nothing more.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backprop_bench.backends.base import usable_cpus
from backprop_bench.results.grid import StudyParams, read_study_params, stage_name

DATA_STAGE = "preprocess"  # and download before it: what the side-by-side stages read
SIDE_STAGES = ("stability",)  # besides the study stages
# Longest first (keras's fit() costs the most per epoch, NumPy the least), so the short stages fill in.
COST_ORDER = ("keras", "keras-torch", "keras-jax", "tensorflow", "torch", "jax", "numpy")


def side_by_side(p: StudyParams) -> list[str]:
    """The stages step 2 runs, the longest first: study@<framework>-<device> (keras-on@<backend>-<device>)
    as dvc.yaml's matrices name them (cuda ones first: on a GPU machine they hold the GPU longest), then stability."""
    frameworks = sorted(p.frameworks, key=lambda f: COST_ORDER.index(f) if f in COST_ORDER else len(COST_ORDER))
    devices = sorted(p.devices, key=lambda d: d != "cuda")
    return [stage_name(f, d) for d in devices for f in frameworks] + list(SIDE_STAGES)


def dvc(*args: str) -> list[str]:
    """A dvc command line run by this Python: the venv's DVC, whatever PATH holds."""
    return [sys.executable, "-m", "dvc", *args]


@dataclass
class Done:
    """One dvc command's result."""

    name: str
    returncode: int
    seconds: float
    output: str


# The dvc commands running now. Each runs in its own process group (dvc and its stage's process),
# so a stop signal reaches both through forward(), and a terminal's Ctrl-C does not reach them twice.
_live: set[subprocess.Popen] = set()
_lock = threading.RLock()  # reentrant: forward() may interrupt the main thread inside run_dvc()'s hold
_stopped: list[int] = []  # the stop signal received, if any: no further command starts


def forward(signum: int, frame: object = None) -> None:
    """Signal handler for SIGINT and SIGTERM: Ctrl-C every running dvc command's process group
    (dvc waits for its stage, which ends its MLflow runs KILLED, then releases its locks; a
    SIGTERM would kill dvc at once) and start nothing more."""
    _stopped.append(signum)
    with _lock:
        groups = [proc.pid for proc in _live]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)


def run_dvc(name: str, cmd: Sequence[str], capture: bool) -> Done:
    """Run cmd; with capture, its output is kept for printing in one piece (stages side by side).
    After a stop signal nothing starts: the result is 128 + the signal, as a shell reports it."""
    start = time.perf_counter()
    pipe = subprocess.PIPE if capture else None
    with _lock:
        if _stopped:
            return Done(name, 128 + _stopped[0], 0.0, "not started: stopped by a signal")
        proc = subprocess.Popen(
            cmd, stdout=pipe, stderr=subprocess.STDOUT if capture else None, text=True, start_new_session=True
        )
        _live.add(proc)
    try:
        out, _ = proc.communicate()
    finally:
        with _lock:
            _live.discard(proc)
    return Done(name, proc.returncode, time.perf_counter() - start, out or "")


def run_side_by_side(stages: Sequence[str], jobs: int) -> list[Done]:
    """Each stage as `dvc --wait-for-lock repro -s <stage>`, jobs at a time; each one's output is
    printed, whole, as it ends."""
    print(f"repro: {len(stages)} stages, {jobs} at a time: {', '.join(stages)}", flush=True)

    def one(stage: str) -> Done:
        done = run_dvc(stage, dvc("--wait-for-lock", "repro", "-s", stage), capture=jobs > 1)
        if done.output:
            print(f"----- {stage} ({done.seconds:.1f} s, exit {done.returncode})\n{done.output.rstrip()}", flush=True)
        return done

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, stages))


def describe(phases: Sequence[tuple[str, float]], stages: Sequence[Done], jobs: int) -> str:
    """Where the wall time went: each phase, and within the side-by-side one each stage."""
    total = sum(seconds for _, seconds in phases)
    parts = []
    for name, seconds in phases:
        if name == "side by side":
            each = ", ".join(f"{d.name} {d.seconds:.1f} s" for d in stages)
            parts.append(f"{name} ({jobs} at a time) {seconds:.1f} s [{each}]")
        else:
            parts.append(f"{name} {seconds:.1f} s")
    return f"repro: {total:.1f} s in all: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=0, help="stages at a time (0: one per usable CPU)")
    parser.add_argument("--params", default="params.yaml", help="its study: section names the study stages")
    args = parser.parse_args(argv)
    if args.jobs < 0:
        parser.error(f"--jobs must be >= 0 (0: one per usable CPU), got {args.jobs}")
    try:
        p = read_study_params(args.params)
    except ValueError as err:
        print(f"repro: {err}", file=sys.stderr)
        return 2
    jobs = args.jobs or usable_cpus()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    phases: list[tuple[str, float]] = []
    data = run_dvc("data", dvc("repro", DATA_STAGE), capture=False)
    phases.append(("data", data.seconds))
    if data.returncode:
        return data.returncode
    stages = side_by_side(p)
    start = time.perf_counter()
    done = run_side_by_side(stages, jobs)
    phases.append(("side by side", time.perf_counter() - start))
    if _stopped:
        print(f"repro: stopped by signal {_stopped[0]}; compare not run", file=sys.stderr)
        return 128 + _stopped[0]
    if failed := [d.name for d in done if d.returncode]:
        print(f"repro: {', '.join(failed)} failed (output above); compare not run", file=sys.stderr)
        return 1
    rest = run_dvc("compare and the rest", dvc("repro"), capture=False)
    phases.append(("compare and the rest", rest.seconds))
    print(describe(phases, done, jobs), flush=True)
    return rest.returncode


if __name__ == "__main__":
    sys.exit(main())
