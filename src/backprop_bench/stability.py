"""Stage `stability`: the largest plain-SGD learning rate each strategy survives, per batch size.

    python -m backprop_bench.stability                    # reads params.yaml `stability:`
    python -m backprop_bench.stability --params my.yaml --data my.npz --out-dir reports

Sweeps lr x {sequential, parallel} x batch size on the NumPy backend (784-128-64-10, float32,
fast path); a run diverges when an epoch loss is non-finite or above blowup x the initial
loss. Writes reports/stability.{json,md,png}; docs/stability.md explains the result.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
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
FINISHED, DIVERGED = "finished", "diverged"
KEYS = ("lrs", "batch_sizes", "epochs", "seed", "subset", "blowup")  # params.yaml `stability:`, all read
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
    blowup = p.number("blowup", 1, strict=True)
    lrs = [float(v) for v in lrs]
    return dict(lrs=lrs, batch_sizes=batches, epochs=epochs, seed=seed, subset=subset, blowup=blowup)


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


def train_run(data: Dataset, lr: float, strategy: str, batch_size: int, epochs: int, seed: int, limit: float) -> dict:
    """One run as the trainer does it (init_params from the seed, one seeded permutation per epoch),
    stopped at the first epoch whose mean loss is non-finite or above limit."""
    init = init_params(SPEC, InitSpec(seed=seed), DTYPE)
    backend = make_backend("numpy", SPEC, init, OptimizerSpec("sgd", lr), strategy=strategy, dtype=DTYPE, compile=True)
    backend.load(data.x_train, data.y_train)
    rng, losses, t0 = np.random.default_rng(seed), [], time.perf_counter()
    run = {"lr": lr, "strategy": strategy, "batch_size": batch_size, "status": FINISHED, "diverged_epoch": None}
    with np.errstate(all="ignore"):  # overflow on the way to inf is what is measured here
        for epoch in range(1, epochs + 1):
            losses.append(backend.train_epoch(rng.permutation(len(data.x_train)), batch_size))
            if not losses[-1] <= limit:  # NaN fails every comparison
                run.update(status=DIVERGED, diverged_epoch=epoch)
                break
        test_loss, test_acc = backend.evaluate(data.x_test, data.y_test) if run["status"] == FINISHED else (0, 0)
    if run["status"] == FINISHED and not math.isfinite(test_loss):  # the last steps broke the weights
        run.update(status=DIVERGED, diverged_epoch=epochs)
    return run | {
        "epoch_losses": [v if math.isfinite(v) else None for v in losses],  # JSON has no NaN
        "final_loss": losses[-1] if math.isfinite(losses[-1]) else None,
        "test_accuracy": test_acc if run["status"] == FINISHED else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def largest_stable_lr(runs: Sequence[Run]) -> dict[tuple[str, int], float | None]:
    """Per (strategy, batch): the largest lr at and below which every grid run finished (None when the
    smallest diverged). A run that finishes above a divergence does not count."""
    out: dict[tuple[str, int], float | None] = {}
    broken: set[tuple[str, int]] = set()
    for r in sorted(runs, key=lambda r: r["lr"]):
        key = (r["strategy"], r["batch_size"])
        out.setdefault(key, None)
        if r["status"] != FINISHED:
            broken.add(key)
        elif key not in broken:
            out[key] = r["lr"]
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
    there = f"final loss {p['final_loss']:.3f}, test accuracy {p['test_accuracy']:.1%}"
    return (
        f"batch {batch}: sequential first diverges at lr {seq_lr:g} (epoch {s['diverged_epoch']}) "
        f"while parallel still learns there ({there}); {par_note}."
    )


def stable_table(result: Mapping[str, Any]) -> str:
    """batch x strategy -> largest stable lr, and the lrs of the lowest final loss, as markdown rows."""
    c = {(s["strategy"], s["batch_size"]): s for s in result["largest_stable_lr"]}
    rows = [
        [str(b), *(_lr(c[(s, b)]["lr"]) for s in ORDER), " / ".join(_lr(c[(s, b)]["lowest_loss_lr"]) for s in ORDER)]
        for b in result["params"]["batch_sizes"]
    ]
    return _table(["batch", *ORDER, "lowest final loss at (seq / par)"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Every column right-aligned, the rule line spaced: | ---: | (stability.md's bytes as they were)."""
    return markdown_table(header, rows, align="r", compact_rule=False)


def _lr(v: float | None) -> str:
    return "none" if v is None else f"{v:g}"


MARKDOWN = """\
# Strategy stability map

Plain SGD on 784-128-64-10 (ReLU, softmax + cross-entropy), float32, NumPy backend (fast path),
{n_train} train rows of `{path}`, {epochs} epochs, seed {seed}. A run diverges, and stops, at the
first epoch whose mean train loss is NaN/inf or above {blowup:g} x the initial loss ({initial_loss:.3f}),
i.e. above {limit:.2f}.

## Largest stable learning rate

The largest lr of the grid at and below which every run finished, and the lr whose run ended with
the lowest train loss (docs/stability.md explains why sequential gives out first).

{stable}

## Where the strategies part

{sentences}

## The whole grid

Final train loss of each run; `x eK`: diverged in epoch K.

{grid}

{parity}

The {n_runs} runs took {seconds:.1f} s on this machine.
"""


def markdown(result: Mapping[str, Any]) -> str:
    p, runs = result["params"], result["runs"]
    cols = [(s, b) for b in p["batch_sizes"] for s in ORDER]
    cell = {(r["strategy"], r["batch_size"], r["lr"]): r for r in runs}
    mark = {FINISHED: lambda r: f"{r['final_loss']:.3f}", DIVERGED: lambda r: f"x e{r['diverged_epoch']}"}
    grid = [[f"{lr:g}"] + [mark[c["status"]](c) for c in (cell[(*k, lr)] for k in cols)] for lr in p["lrs"]]
    return MARKDOWN.format(
        **p,
        **result["data"],
        initial_loss=result["initial_loss"],
        limit=result["limit"],
        stable=stable_table(result),
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
) -> dict[str, Any]:
    """The sweep and its three reports (the PNG, the JSON, the markdown last); returns the JSON dict."""
    from backprop_bench.report.plots import plot_stability

    t0 = time.perf_counter()
    data = load_data(data_path, subset, seed)
    init = init_params(SPEC, InitSpec(seed=seed), DTYPE)  # its mean train loss is the blow-up yardstick
    limit = blowup * make_backend("numpy", SPEC, init, OptimizerSpec()).evaluate(data.x_train, data.y_train)[0]
    # One BLAS thread: batch-16..256 products gain nothing from a second one, and a 2-thread BLAS ran
    # 8-17x slower (2.2-4.8 s per batch-16 run instead of 0.25 s) while another process held a core.
    with threadpool_limits(1, user_api="blas"):
        runs = [train_run(data, lr, s, b, epochs, seed, limit) for b in batch_sizes for s in ORDER for lr in lrs]
    lowest: dict[tuple[str, int], float] = {}
    for r in sorted((r for r in runs if r["status"] == FINISHED), key=lambda r: r["final_loss"]):
        lowest.setdefault((r["strategy"], r["batch_size"]), r["lr"])
    stable = largest_stable_lr(runs)
    result = {
        "params": {"lrs": list(lrs), "batch_sizes": list(batch_sizes), "epochs": epochs, "seed": seed}
        | {"subset": subset, "blowup": blowup},
        "model": f"784-128-64-10 relu/softmax/cross_entropy, sgd, {DTYPE}, numpy (compile=True)",
        "data": {"path": str(data_path), "sha256": data.sha256, "n_train": len(data.x_train)},
        "initial_loss": limit / blowup,
        "limit": limit,
        "largest_stable_lr": [
            {"strategy": s, "batch_size": b, "lr": v, "lowest_loss_lr": lowest.get((s, b))}
            for (s, b), v in stable.items()
        ],
        "sentences": [split_sentence(runs, b) for b in batch_sizes],
        "parity": PARITY,
        "runs": runs,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    plot_stability(runs, limit, out_dir / "stability.png")
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
    print("stability: largest stable lr (plain SGD)", stable_table(result), *result["sentences"], sep="\n")
    print(f"stability: {len(result['runs'])} runs in {result['seconds']:.1f} s -> {args.out_dir / 'stability.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
