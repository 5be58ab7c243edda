"""Where a NumPy-fast epoch's seconds go: every op of one training step, timed in place.

    python -m backprop_bench.bench --numpy-profile                  # batch 64 and 256, 60,000 rows, 3 rounds
    python -m backprop_bench.bench --numpy-profile --batches 64 --rounds 5

The fast backend (backends/numpy_fast.py, compile=True) runs a step as a flat list of
labelled Ops. Here each Op of every step of an epoch is timed on its own (two clock reads
around the call, the clock's own cost subtracted), on the bench's model, data and lr.
Rounds alternate one such instrumented epoch with one plain epoch (timed_epoch, the
bench's clock): the plain epoch minus the ops' sum is what runs between the ops (the
Python loop). The matmul floor is the step's products timed alone (peak.py), as in the
bench. Prints a markdown table per batch size (docs/benchmark.md, "NumPy at XLA's line").
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

from backprop_bench.backends import make_backend
from backprop_bench.backends.base import timed_epoch
from backprop_bench.bench import cells as C
from backprop_bench.bench import peak as P
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

# Op label -> the kind of work it is, first match wins (the summary rows); the biases are in the matmuls
KINDS = (
    ("matmul", "matmuls"),
    ("gather", "gather"),
    ("relu", "relu + mask"),
    ("softmax", "softmax + cross-entropy"),
    ("loss", "softmax + cross-entropy"),
    ("delta", "softmax + cross-entropy"),
)
UPDATE = "update"  # every other label: the optimizer's ops


def kind(label: str) -> str:
    return next((k for key, k in KINDS if key in label), UPDATE)


def clock_cost(repeats: int = 20_000) -> float:
    """Median seconds between two back-to-back perf_counter reads: subtracted from every op."""
    clock = time.perf_counter
    return statistics.median(-clock() + clock() for _ in range(repeats))


def instrumented_epoch(backend, order: np.ndarray, batch_size: int, clock_s: float) -> tuple[list[str], list[float]]:
    """One training epoch, every Op timed: (labels of a full step's Ops, seconds each over the epoch).

    The last, short batch runs the same Ops in the same order, so it adds to the same rows.
    """
    losses = backend.xp.empty(-(-len(order) // batch_size), backend.dtype)
    labels, seconds = [], []
    clock = time.perf_counter
    gc.disable()
    try:
        for ops in backend.epoch_steps(order, batch_size, losses):
            if not labels:
                labels, seconds = [label for label, _ in ops], [0.0] * len(ops)
            for i, (_, call) in enumerate(ops):
                t0 = clock()
                call()
                seconds[i] += clock() - t0 - clock_s
    finally:
        gc.enable()
    return labels, seconds


def profile(backend, x_rows: int, batch_size: int, rounds: int, seed: int) -> dict:
    """{batch, steps, labels, op_s (median seconds per epoch, per Op), epoch_s (median plain epoch)}."""
    rng, clock_s = np.random.default_rng(seed), clock_cost()
    timed_epoch(backend, rng.permutation(x_rows), batch_size)  # warm-up: buffers, page faults, BLAS threads
    per_round, plain = [], []
    for _ in range(rounds):
        order = rng.permutation(x_rows)
        labels, seconds = instrumented_epoch(backend, order, batch_size, clock_s)
        per_round.append(seconds)
        plain.append(timed_epoch(backend, order, batch_size)[1])
    op_s = [statistics.median(column) for column in zip(*per_round)]
    return {
        "batch": batch_size,
        "steps": -(-x_rows // batch_size),
        "labels": labels,
        "op_s": op_s,
        "epoch_s": statistics.median(plain),
    }


def matmul_floor(batch_size: int, x_rows: int) -> float:
    """Seconds an epoch's matmul work takes at NumPy's rate on the step's own products (peak.py)."""
    rate = P.measure_peak("numpy", C.SIZES, [batch_size], square=256, repeats=5, min_seconds=0.05)
    return MLPSpec(C.SIZES).needed_flops(x_rows) / (rate[f"mlp_b{batch_size}"] * 1e9)


def markdown(result: dict) -> str:
    """One batch size's table: every Op, then the kinds' sums, the Python remainder and the floor."""
    steps, epoch = result["steps"], result["epoch_s"]
    lines = [
        f"### Batch {result['batch']} ({steps} steps an epoch)",
        "",
        "| op | µs / step | s / epoch | % of epoch |",
        "|---|---:|---:|---:|",
    ]

    def row(name: str, s: float, bold: bool = False) -> str:
        mark = "**" if bold else ""
        return f"| {mark}{name}{mark} | {s / steps * 1e6:.1f} | {s:.3f} | {100 * s / epoch:.0f} |"

    lines += [row(label, s) for label, s in zip(result["labels"], result["op_s"])]
    sums: dict[str, float] = {}
    for label, s in zip(result["labels"], result["op_s"]):
        sums[kind(label)] = sums.get(kind(label), 0.0) + s
    lines += [row(name, s, bold=True) for name, s in sorted(sums.items(), key=lambda kv: -kv[1])]
    ops = sum(result["op_s"])
    lines += [row("all ops", ops, bold=True), row("between the ops (Python loop)", epoch - ops, bold=True)]
    lines.append(row("epoch (plain, median)", epoch, bold=True))
    if "floor_s" in result:
        lines.append(row("matmul floor (the step's products alone)", result["floor_s"], bold=True))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``python -m backprop_bench.bench --numpy-profile``: a table per --batches on stdout."""
    x, y, data = C.load_train_set(args.data, args.samples, args.seed, args.params, args.data_dir)
    spec, optimizer, strategy = MLPSpec(C.SIZES), OptimizerSpec("sgd", lr=C.BENCH_LR), args.strategies[0]
    print(f"NumPy fast ({strategy}, sgd lr={optimizer.lr}), data: {data['source']} ({len(x)} rows)\n")
    for batch in args.batches:
        init = init_params(spec, InitSpec(seed=args.seed), "float32")
        backend = make_backend("numpy", spec, init, optimizer, strategy=strategy, dtype="float32", compile=True)
        backend.load(x, y)
        result = profile(backend, len(x), batch, args.rounds, args.seed)
        result["floor_s"] = matmul_floor(batch, len(x))
        print(markdown(result) + "\n", flush=True)
    return 0
