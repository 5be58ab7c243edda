"""Stage `stability`: the largest plain-SGD learning rate at which each strategy still learns, per batch size.

    python -m backprop_bench.stability                    # reads params.yaml `stability:`
    python -m backprop_bench.stability --params my.yaml --data my.npz --out-dir reports

Sweeps lr x {sequential, parallel} x batch size on the NumPy backend (784-128-64-10, float32,
fast path). Each run is classed (`classify`): diverged when an epoch loss is non-finite or above
blowup x the initial loss, stalled when it finishes above (1 - stall_margin) x the initial loss,
learned otherwise. Writes reports/stability.{json,md,png}; docs/stability.md explains the result.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from backprop_bench.backends import make_backend
from backprop_bench.core.checks import is_integer, is_number, read_section
from backprop_bench.core.dataset import Dataset, load_dataset
from backprop_bench.core.files import atomic_write, write_json
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params
from backprop_bench.report.tables import markdown_table

SPEC = MLPSpec((784, 128, 64, 10))  # relu hidden, softmax + cross-entropy: the study's model
DTYPE = "float32"
ORDER = ("sequential", "parallel")
LEARNED, STALLED, DIVERGED = "learned", "stalled", "diverged"  # a run's status, its class
# params.yaml `stability:`, all read
KEYS = ("lrs", "batch_sizes", "epochs", "seed", "subset", "blowup", "stall_margin")
PARITY = (
    "NumPy alone stands for every backend: the float64 parity tests (tests/test_parity.py) prove that "
    "torch, TensorFlow and Keras compute the same steps as NumPy under both strategies, so the map is theirs "
    "too (in float32 they differ only by rounding, which can matter only for a run right at a threshold)."
)
Run = Mapping[str, Any]


def read_params(path: Path) -> dict[str, Any]:
    """params.yaml's `stability:` section, checked; a ParamsError names the file, the key, the value and the rule."""
    p = read_section(path, "stability")
    lrs, batches, subset = p.get("lrs"), p.get("batch_sizes"), p.get("subset")
    ok = isinstance(lrs, list) and len(lrs) >= 2 and all(is_number(v) and v > 0 for v in lrs)
    ok = ok and lrs == sorted(set(lrs))  # increasing, no repeats
    p.check(ok, "lrs", lrs, "must list at least 2 increasing learning rates > 0")
    ok = isinstance(batches, list) and len(batches) > 0 and all(is_integer(b, 1) for b in batches)
    p.check(ok, "batch_sizes", batches, "must list integers >= 1")
    epochs, seed = p.integer("epochs", 1), p.integer("seed", 0)
    p.check(subset is None or is_integer(subset, 10), "subset", subset, "must be null or an integer >= 10")
    blowup, margin = p.number("blowup", 1, strict=True), p.get("stall_margin")
    p.check(is_number(margin) and 0 <= margin < 1, "stall_margin", margin, "must be a number >= 0 and < 1")
    lrs, margin = [float(v) for v in lrs], float(margin)
    return dict(
        lrs=lrs, batch_sizes=batches, epochs=epochs, seed=seed, subset=subset, blowup=blowup, stall_margin=margin
    )


def load_data(path: Path, subset: int | None, seed: int) -> Dataset:
    """The processed data; its train split cut to a stratified subset of `subset` rows (from the seed) if set."""
    data = load_dataset("processed", path)
    if data.n_features != SPEC.sizes[0] or data.y_train.max() >= SPEC.sizes[-1]:
        raise ValueError(f"{path}: the sweep's model is 784-128-64-10; the data has {data.n_features} features")
    if subset is None or subset >= len(data.y_train):
        return data
    from backprop_bench.core.split import stratified_split

    rows, _ = stratified_split(data.y_train, subset, np.random.default_rng(seed))
    return replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows])


def classify(losses: Sequence[float], limit: float, stall_level: float) -> str:
    """A run's class from its epochs' mean train losses so far: DIVERGED when one is NaN/inf or above
    limit (blowup x the initial loss), else STALLED when the last is above stall_level
    ((1 - stall_margin) x the initial loss), else LEARNED. A last loss equal to stall_level learned."""
    if not all(v <= limit for v in losses):  # NaN fails every comparison
        return DIVERGED
    return STALLED if losses[-1] > stall_level else LEARNED


def train_run(
    data: Dataset, lr: float, strategy: str, batch_size: int, epochs: int, seed: int, limit: float, stall_level: float
) -> dict:
    """One run as the trainer does it (init_params from the seed, one seeded permutation per epoch),
    stopped at the first epoch that diverges, and classed (`classify`)."""
    init = init_params(SPEC, InitSpec(seed=seed), DTYPE)
    backend = make_backend("numpy", SPEC, init, OptimizerSpec("sgd", lr), strategy=strategy, dtype=DTYPE, compile=True)
    backend.load(data.x_train, data.y_train)
    rng, losses, t0 = np.random.default_rng(seed), [], time.perf_counter()
    run = {"lr": lr, "strategy": strategy, "batch_size": batch_size, "status": LEARNED, "diverged_epoch": None}
    with np.errstate(all="ignore"):  # overflow on the way to inf is what is measured here
        for epoch in range(1, epochs + 1):
            losses.append(backend.train_epoch(rng.permutation(len(data.x_train)), batch_size))
            run["status"] = classify(losses, limit, stall_level)
            if run["status"] == DIVERGED:
                run["diverged_epoch"] = epoch
                break
        test_loss, test_acc = backend.evaluate(data.x_test, data.y_test) if run["status"] != DIVERGED else (0, 0)
    if run["status"] != DIVERGED and not math.isfinite(test_loss):  # the last steps broke the weights
        run.update(status=DIVERGED, diverged_epoch=epochs)
    return run | {
        "epoch_losses": [v if math.isfinite(v) else None for v in losses],  # JSON has no NaN
        "final_loss": losses[-1] if math.isfinite(losses[-1]) else None,
        "test_accuracy": test_acc if run["status"] != DIVERGED else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def largest_lr(runs: Sequence[Run], good: Collection[str]) -> dict[tuple[str, int], float | None]:
    """Per (strategy, batch): the largest lr at and below which every grid run's status is in `good`,
    walking up the grid; a run in `good` above one that is not does not count. Stalled runs below the
    first good one are passed over: a step too small to move the loss in the epochs given is not a limit
    of the strategy. None when no run is good before the first bad one.

    largest_lr(runs, {LEARNED}): the largest lr that learns; {LEARNED, STALLED}: that does not diverge."""
    out: dict[tuple[str, int], float | None] = {}
    done: set[tuple[str, int]] = set()
    for r in sorted(runs, key=lambda r: r["lr"]):
        key = (r["strategy"], r["batch_size"])
        out.setdefault(key, None)
        if key in done:
            continue
        if r["status"] in good:
            out[key] = r["lr"]
        elif r["status"] != STALLED or out[key] is not None:
            done.add(key)
    return out


def split_sentence(runs: Sequence[Run], batch: int) -> str:
    """In words: the lr at which sequential first diverges, and what parallel does there."""
    cell = {(r["strategy"], r["lr"]): r for r in runs if r["batch_size"] == batch}
    first = {
        s: min((lr for (t, lr), r in cell.items() if t == s and r["status"] == DIVERGED), default=None) for s in ORDER
    }
    seq_lr, par_lr = first["sequential"], first["parallel"]
    par_note = "parallel never diverges on this grid" if par_lr is None else f"parallel first diverges at lr {par_lr:g}"
    if seq_lr is None or (par_lr or math.inf) < seq_lr:
        seq_note = "never diverges on this grid" if seq_lr is None else f"first diverges at lr {seq_lr:g}"
        return f"batch {batch}: sequential {seq_note}; {par_note}."
    s, p = cell[("sequential", seq_lr)], cell[("parallel", seq_lr)]
    if p["status"] == DIVERGED:
        epochs = f"sequential in epoch {s['diverged_epoch']}, parallel in epoch {p['diverged_epoch']}"
        return f"batch {batch}: both strategies first diverge at lr {seq_lr:g} ({epochs})."
    does = "still learns there" if p["status"] == LEARNED else "does not diverge there but stalls"
    there = f"final loss {p['final_loss']:.3f}, test accuracy {p['test_accuracy']:.1%}"
    return (
        f"batch {batch}: sequential first diverges at lr {seq_lr:g} (epoch {s['diverged_epoch']}) "
        f"while parallel {does} ({there}); {par_note}."
    )


def lr_table(result: Mapping[str, Any]) -> str:
    """batch x strategy -> the largest lr that learns, then (seq / par) the largest that does not diverge
    and the lr of the lowest final loss, as a markdown table."""
    c = {(s["strategy"], s["batch_size"]): s for s in result["lr_summary"]}

    def both(b: int, key: str) -> str:
        return " / ".join(_lr(c[(s, b)][key]) for s in ORDER)

    rows = [
        [str(b), *(_lr(c[(s, b)]["largest_learning_lr"]) for s in ORDER)]
        + [both(b, "largest_nondiverging_lr"), both(b, "lowest_loss_lr")]
        for b in result["params"]["batch_sizes"]
    ]
    return _table(["batch", *ORDER, "no divergence up to (seq / par)", "lowest final loss at (seq / par)"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Every column right-aligned, the rule line spaced: | ---: | (stability.md's bytes as they were)."""
    return markdown_table(header, rows, align="r", compact_rule=False)


def _lr(v: float | None) -> str:
    return "none" if v is None else f"{v:g}"


MARKDOWN = """\
# Strategy stability map

Plain SGD on 784-128-64-10 (ReLU, softmax + cross-entropy), float32, NumPy backend (fast path),
{n_train} train rows of `{path}`, {epochs} epochs, seed {seed}. The initial loss is the mean train
loss of the initial weights: {initial_loss:.3f}. Each run is one of three classes:

- **diverged**: it stops at the first epoch whose mean train loss is NaN/inf or above
  {blowup:g} x the initial loss, i.e. above {limit:.2f};
- **stalled**: it finishes, but its last epoch's mean train loss is above (1 - {stall_margin:g}) x
  the initial loss, i.e. above {stall_level:.3f}: no real progress;
- **learned**: it finishes at or below {stall_level:.3f}.

## Largest learning rate that learns

The largest lr of the grid at and below which every run learned (stalled runs below the first
one that learns are passed over), then the largest at and below which no run diverged, and the
lr whose run ended with the lowest train loss (docs/stability.md explains why sequential gives
out first).

{lr_table}

## Where the strategies part

{sentences}

## The whole grid

Final train loss of each run (its last epoch's mean); `(stalled)`: the run stalled; `x eK`:
diverged in epoch K.

{grid}

{parity}

The {n_runs} runs took {seconds:.1f} s on this machine.
"""


def markdown(result: Mapping[str, Any]) -> str:
    p, runs = result["params"], result["runs"]
    cols = [(s, b) for b in p["batch_sizes"] for s in ORDER]
    cell = {(r["strategy"], r["batch_size"], r["lr"]): r for r in runs}
    mark = {
        LEARNED: lambda r: f"{r['final_loss']:.3f}",
        STALLED: lambda r: f"{r['final_loss']:.3f} (stalled)",
        DIVERGED: lambda r: f"x e{r['diverged_epoch']}",
    }
    grid = [[f"{lr:g}"] + [mark[c["status"]](c) for c in (cell[(*k, lr)] for k in cols)] for lr in p["lrs"]]
    return MARKDOWN.format(
        **p,
        **result["data"],
        initial_loss=result["initial_loss"],
        limit=result["limit"],
        stall_level=result["stall_level"],
        lr_table=lr_table(result),
        sentences="\n".join(f"- {s}" for s in result["sentences"]),
        grid=_table(["lr", *(f"{s} {b}" for s, b in cols)], grid),
        parity=PARITY,
        n_runs=len(runs),
        seconds=result["seconds"],
    )


def map_stability(
    data_path: Path,
    out_dir: Path,
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    epochs: int,
    seed: int,
    subset: int | None,
    blowup: float,
    stall_margin: float,
) -> dict[str, Any]:
    """The sweep and its three reports (the PNG, the JSON, the markdown last); returns the JSON dict."""
    from backprop_bench.report.plots import plot_stability

    t0 = time.perf_counter()
    data = load_data(data_path, subset, seed)
    # The initial loss: the mean train loss of the initial weights, before any step. Every run of the
    # seed starts from these weights, so it is one yardstick for all lrs (an epoch's mean is not).
    init = init_params(SPEC, InitSpec(seed=seed), DTYPE)
    initial_loss = make_backend("numpy", SPEC, init, OptimizerSpec()).evaluate(data.x_train, data.y_train)[0]
    limit, stall_level = blowup * initial_loss, (1 - stall_margin) * initial_loss
    # One BLAS thread: batch-16..256 products gain nothing from a second one, and a 2-thread BLAS ran
    # 8-17x slower (2.2-4.8 s per batch-16 run instead of 0.25 s) while another process held a core.
    with threadpool_limits(1, user_api="blas"):
        grid = [(lr, s, b) for b in batch_sizes for s in ORDER for lr in lrs]
        runs = [train_run(data, lr, s, b, epochs, seed, limit, stall_level) for lr, s, b in grid]
    lowest: dict[tuple[str, int], float] = {}
    for r in sorted((r for r in runs if r["status"] != DIVERGED), key=lambda r: r["final_loss"]):
        lowest.setdefault((r["strategy"], r["batch_size"]), r["lr"])
    learning, nondiverging = largest_lr(runs, {LEARNED}), largest_lr(runs, {LEARNED, STALLED})
    result = {
        "params": {"lrs": list(lrs), "batch_sizes": list(batch_sizes), "epochs": epochs, "seed": seed}
        | {"subset": subset, "blowup": blowup, "stall_margin": stall_margin},
        "model": f"784-128-64-10 relu/softmax/cross_entropy, sgd, {DTYPE}, numpy (compile=True)",
        "data": {"path": str(data_path), "sha256": data.sha256, "n_train": len(data.x_train)},
        "initial_loss": initial_loss,
        "limit": limit,
        "stall_level": stall_level,
        "lr_summary": [
            {"strategy": s, "batch_size": b, "largest_learning_lr": v}
            | {"largest_nondiverging_lr": nondiverging[(s, b)], "lowest_loss_lr": lowest.get((s, b))}
            for (s, b), v in learning.items()
        ],
        "sentences": [split_sentence(runs, b) for b in batch_sizes],
        "parity": PARITY,
        "runs": runs,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    plot_stability(runs, limit, stall_level, out_dir / "stability.png")
    write_json(out_dir / "stability.json", result)
    atomic_write(out_dir / "stability.md", markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="YAML with a stability: section")
    parser.add_argument("--data", type=Path, default=Path("data/processed/mnist.npz"), help="the processed data")
    parser.add_argument("--out-dir", type=Path, default=Path("reports"), help="where stability.{json,md,png} go")
    args = parser.parse_args(argv)
    try:
        result = map_stability(args.data, args.out_dir, **read_params(args.params))
    except (ValueError, FileNotFoundError) as err:
        print(f"stability: error: {err}", file=sys.stderr)
        return 1
    print("stability: largest lr that learns (plain SGD)", lr_table(result), *result["sentences"], sep="\n")
    print(f"stability: {len(result['runs'])} runs in {result['seconds']:.1f} s -> {args.out_dir / 'stability.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
