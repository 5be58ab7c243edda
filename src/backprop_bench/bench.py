"""Side-by-side speed benchmark: every backend x strategy x compile mode, and the machine's limit.

    python -m backprop_bench.bench                  # the full grid (make bench), minutes on 2 cores
    python -m backprop_bench.bench --frameworks numpy,torch --batches 256 --rounds 3
    python -m backprop_bench.bench --samples 4096 --rounds 1 --peak-size 256   # plumbing check

What it does, in one process (TensorFlow is imported once):

1. loads a 60,000 x 784 float32 train set: Fashion-MNIST from the Debian package when it is
   there, else seeded synthetic data of the same shape (the report says which);
2. measures the float32 matmul peak with NumPy and torch, at the MLP's own shapes (forward,
   weight-gradient and input-gradient products at each batch size) and at 2048^2;
3. builds every cell (one backend per framework x mode x strategy x batch x device) and
   loads the data into each, then runs one warm-up epoch per cell (reported apart: it holds
   tracing / XLA / torch.compile time);
4. runs the timed rounds: each round is one epoch of every cell, round-robin with a rotating
   start, all cells on the same permutation, so drift on a shared machine hits every cell
   alike; backend.synchronize() before each clock read;
5. writes reports/bench.json and reports/bench.md (atomically) and prints the table and the
   issue-5 targets, evaluated from the figures of this run.

OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE once, when the library loads. Unless
--keep-blas-env is given, the bench re-executes itself without them (its own process only),
then reports which kernel actually ran (threadpoolctl's `architecture`).

Nothing here imports torch, TensorFlow or Keras at module level: a NumPy-only bench never
loads them. torch's matmul peak goes through backends/torch_backend.py (``matmul_call``),
imported only when torch is among the benchmarked frameworks.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from backprop_bench import backends
from backprop_bench.backends.base import DeviceUnavailable, cpu_name
from backprop_bench.model import InitSpec, MLPSpec, OptimizerSpec, init_params

SIZES = (784, 128, 64, 10)
N_TRAIN = 60_000
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Set in the re-executed child: JSON {name: value} of the variables its parent removed.
_UNSET_MARK = "BACKPROP_BENCH_UNSET_BLAS_ENV"

# Compile modes per framework: (mode name, compile, steps_per_execution). The first one of
# each framework is its plain mode, the one the study runs by default.
DEFAULT_KERAS_SPE = "16"
# Modes whose name starts with this run backends/stock.py (the framework's own idiom:
# built-in layers, loss and optimizer), parallel only: the yardstick for "as fast as the
# framework allows".
STOCK = "stock"
# Plain SGD. 0.01 made every backend's *sequential* b64 run diverge to NaN in its 4th
# epoch on Fashion-MNIST (identically in NumPy and torch, float32 and float64: the
# strategy, not a bug), and NaN arithmetic is no honest timing; 0.005 stays finite.
BENCH_LR = 0.005


def framework_modes(keras_spe: list[int]) -> dict[str, list[tuple[str, bool, int]]]:
    """keras_spe: the steps_per_execution values (> 1) to bench beside plain jit."""
    spe = [n for n in keras_spe if n > 1]
    keras = [("fit", False, 1), ("jit", True, 1)] + [(f"jit-spe{n}", True, n) for n in spe]
    return {
        "numpy": [("plain", False, 1)],
        "torch": [("eager", False, 1), ("compile", True, 1), (f"{STOCK}-eager", False, 1), (f"{STOCK}-compile", True, 1)],
        "tensorflow": [("function", False, 1), ("jit", True, 1), (f"{STOCK}-step", False, 1), (f"{STOCK}-step-jit", True, 1)],
        "keras": keras + [(f"{STOCK}-fit", False, 1)] + [(f"{STOCK}-jit-spe{n}", True, n) for n in spe],
    }


def is_stock(mode: str) -> bool:
    return mode.startswith(STOCK)


# Targets of issue 5.
TARGET_PEAK_FRACTION = {256: 0.70, 64: 0.50}  # NumPy parallel, of the 2048^2 sgemm median
TARGET_NUMPY_OVER_TORCH_B64 = 2.0  # NumPy samples/s over torch eager at batch 64
TARGET_SEQ_OVER_PAR = 1.15  # sequential epoch time / parallel, per backend
TARGET_WITHIN_BEST = 1.2  # a backend's fastest mode / its framework's fastest configuration


# ----------------------------------------------------------------------------- BLAS environment


def without_blas_env(environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(a copy of environ without the OpenBLAS tuning variables, the ones removed)."""
    removed = {k: environ[k] for k in BLAS_ENV_VARS if k in environ}
    env = {k: v for k, v in environ.items() if k not in removed}
    return env, removed


def reexec_without_blas_env(argv: list[str]) -> None:
    """Replace this process by a fresh bench without the OpenBLAS variables, if any are set.

    A fresh process is the only clean way: OpenBLAS has already read them when NumPy loaded.
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
    unset = json.loads(os.environ.get(_UNSET_MARK, "{}"))
    return {
        "in_effect": {k: os.environ.get(k) for k in BLAS_ENV_VARS},  # None = not set
        "unset_by_bench": unset,
        "keep_blas_env": kept,
    }


def blas_info() -> list[dict]:
    """Every BLAS / OpenMP pool loaded in this process (NumPy's, and torch's once imported)."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{k: pool.get(k) for k in keys} | {"file": Path(pool["filepath"]).name} for pool in threadpool_info()]


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata: this imports none of them."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "torch", "tensorflow", "keras", "threadpoolctl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    return {"cpu": cpu_name(), "cores_usable": len(os.sched_getaffinity(0)), "platform": platform.platform()}


# ----------------------------------------------------------------------------- data


def load_train_set(source: str, n_samples: int, seed: int, data_dir: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray, dict]:
    """x (n, 784) float32 in [0, 1], y (n,) int64, and a description of where they came from.

    source: "auto" (Fashion-MNIST if present, else synthetic), "fashion-mnist" (must be
    present) or "synthetic".
    """
    images = data_dir / "train-images-idx3-ubyte.gz"
    labels = data_dir / "train-labels-idx1-ubyte.gz"
    present = images.is_file() and labels.is_file()
    if source == "fashion-mnist" and not present:
        raise SystemExit(f"--data fashion-mnist: {images} and {labels} are needed (Debian: dataset-fashion-mnist)")
    if source in ("auto", "fashion-mnist") and present:
        from backprop_bench.data.formats import read_idx_pair  # the project's one IDX reader

        x, y = read_idx_pair(images, labels)
        if n_samples > len(x):
            raise SystemExit(f"--samples {n_samples}: {images} holds only {len(x)} images")
        x = x[:n_samples].astype(np.float32) / np.float32(255)
        return x, y[:n_samples], {"source": "fashion-mnist", "path": str(data_dir), "n": n_samples}
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=n_samples).astype(np.int64)
    why = "requested" if source == "synthetic" else f"{images} not found"
    return x, y, {"source": "synthetic", "path": None, "n": n_samples, "why": why, "seed": seed}


# ----------------------------------------------------------------------------- matmul peak


def mlp_matmul_shapes(sizes: tuple[int, ...], batch: int) -> list[tuple[str, int, int, int, bool, bool]]:
    """The products one training step does: (name, m, k, n, a transposed, b transposed).

    forward  a (B, in) @ W (in, out); weight gradient a.T (in, B) @ delta (B, out);
    input gradient delta (B, out) @ W.T (out, in), for every layer but the first.
    """
    shapes = []
    pairs = list(zip(sizes[:-1], sizes[1:]))
    for layer, (i, o) in enumerate(pairs):
        shapes.append((f"fwd {batch}x{i}@{i}x{o}", batch, i, o, False, False))
        shapes.append((f"dW {i}x{batch}@{batch}x{o}", i, batch, o, True, False))
        if layer > 0:
            shapes.append((f"dx {batch}x{o}@{o}x{i}", batch, o, i, False, True))
    return shapes


def _operands(m: int, k: int, n: int, ta: bool, tb: bool, rng: np.random.Generator):
    # Transposed operands are views of a C-ordered array, as in the backends (x.T, W.T).
    a = rng.random((k, m), dtype=np.float32).T if ta else rng.random((m, k), dtype=np.float32)
    b = rng.random((n, k), dtype=np.float32).T if tb else rng.random((k, n), dtype=np.float32)
    return a, b, np.empty((m, n), dtype=np.float32)


def time_gflops(call, flops: float, repeats: int, min_seconds: float) -> list[float]:
    """GFLOP/s of `repeats` samples; each sample loops `call` long enough to read the clock."""
    call()  # warm: first-touch, thread pool start
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            call()
        dt = time.perf_counter() - t0
        if dt >= min_seconds or loops >= 1 << 16:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append(flops * loops / (time.perf_counter() - t0) / 1e9)
    return samples


def numpy_mm(a, b, out):
    return lambda: np.matmul(a, b, out=out)


def torch_mm(a, b, out):
    from backprop_bench.backends import torch_backend  # only when torch is benchmarked

    return torch_backend.matmul_call(a, b, out)


def square_gflops(library: str, n: int, repeats: int, min_seconds: float) -> dict:
    """Median and best GFLOP/s of an (n, n) @ (n, n) float32 product."""
    make = numpy_mm if library == "numpy" else torch_mm
    a, b, c = _operands(n, n, n, False, False, np.random.default_rng(0))
    s = time_gflops(make(a, b, c), 2.0 * n**3, repeats, min_seconds)
    return {"n": n, "median": statistics.median(s), "max": max(s)}


def measure_peak(library: str, sizes: tuple[int, ...], batches: list[int], square: int, repeats: int,
                 min_seconds: float) -> dict:
    """Median (and best) float32 GFLOP/s of one library at square^2 and at the MLP's shapes.

    `mlp_b{B}` is the whole step's matmul work over its whole matmul time at batch B: the
    ceiling a perfect implementation of the MLP could reach with this library's matmul.
    """
    make = numpy_mm if library == "numpy" else torch_mm
    rng = np.random.default_rng(0)
    out: dict = {"library": library, "shapes": []}
    if library == "torch":
        from backprop_bench.backends import torch_backend

        out["threads"] = torch_backend.num_threads()
    out["square"] = square_gflops(library, square, repeats, min_seconds)
    for batch in batches:
        total_flops = total_seconds = 0.0
        for name, m, k, n, ta, tb in mlp_matmul_shapes(sizes, batch):
            flops = 2.0 * m * k * n
            s = time_gflops(make(*_operands(m, k, n, ta, tb, rng)), flops, repeats, min_seconds)
            med = statistics.median(s)
            out["shapes"].append({"batch": batch, "name": name, "median": med, "max": max(s)})
            total_flops += flops
            total_seconds += flops / (med * 1e9)
        out[f"mlp_b{batch}"] = total_flops / total_seconds / 1e9
    return out


# ----------------------------------------------------------------------------- cells


@dataclass
class Cell:
    framework: str
    mode: str
    compile: bool
    steps_per_execution: int
    strategy: str
    batch: int
    device: str
    status: str = "pending"  # pending -> ok | failed | skipped
    reason: str = ""
    build_seconds: float | None = None  # construct + load the train set
    first_epoch_seconds: float | None = None  # warm-up: tracing / compilation included
    epoch_seconds: list[float] = field(default_factory=list)
    last_loss: float | None = None

    @property
    def name(self) -> str:
        return f"{self.framework}-{self.mode}-{self.strategy}-b{self.batch}-{self.device}"

    def fail(self, err: BaseException, stage: str) -> None:
        self.status = "skipped" if isinstance(err, DeviceUnavailable) else "failed"
        self.reason = f"{stage}: {type(err).__name__}: {err}".strip()
        print(f"bench: {self.name} {self.status}: {self.reason}", file=sys.stderr)


def plan_cells(frameworks: list[str], strategies: list[str], batches: list[int], devices: list[str],
               keras_spe: list[int], stock: bool = True) -> list[Cell]:
    """Every framework x mode x strategy x batch x device; stock modes are parallel only.

    Strategy varies fastest, then mode, then framework: the cells a ratio compares (a
    mode's parallel and sequential; numpy and torch eager) run next to each other in every
    round, seconds apart, so a neighbour's burst on the shared machine rarely hits only one.
    """
    modes = framework_modes(keras_spe)
    return [
        Cell(fw, mode, comp, spe, strategy, batch, device)
        for device in devices
        for batch in batches
        for fw in frameworks
        for mode, comp, spe in modes[fw]
        for strategy in strategies
        if not is_stock(mode) or (stock and strategy == "parallel")
    ]


def build(cell: Cell, spec: MLPSpec, x: np.ndarray, y: np.ndarray, seed: int, optimizer: OptimizerSpec):
    """The cell's backend with the train set loaded, or None (the cell says why)."""
    t0 = time.perf_counter()
    init = init_params(spec, InitSpec(seed=seed), "float32")
    try:
        if is_stock(cell.mode):
            from backprop_bench.backends import stock  # imports nothing until a model is made

            backend = stock.make_stock(cell.framework, spec, init, optimizer.lr, device=cell.device,
                                       compile=cell.compile, steps_per_execution=cell.steps_per_execution)
        else:
            backend = backends.make_backend(
                cell.framework, spec, init, optimizer, strategy=cell.strategy, device=cell.device,
                dtype="float32", compile=cell.compile, steps_per_execution=cell.steps_per_execution,
            )
        backend.load(x, y)
        backend.synchronize()
    except Exception as err:  # one cell's failure must not end the run; it becomes a row
        cell.fail(err, "build")
        return None
    cell.build_seconds = time.perf_counter() - t0
    return backend


def run_epoch(cell: Cell, backend, order: np.ndarray) -> float | None:
    """Seconds of one synchronised epoch, or None when it failed (the cell says why)."""
    # No garbage collection inside the clock (as timeit does): with ~40 models alive in this
    # process a full collection lands in whichever epoch happens to trigger it; run_cells
    # collects between rounds instead.
    gc.disable()
    try:
        backend.synchronize()
        t0 = time.perf_counter()
        loss = backend.train_epoch(order, cell.batch)
        backend.synchronize()
        dt = time.perf_counter() - t0
    except Exception as err:
        cell.fail(err, "train_epoch")
        return None
    finally:
        gc.enable()
    cell.last_loss = float(loss)
    if not math.isfinite(cell.last_loss):  # NaN / inf arithmetic is no honest timing
        cell.fail(FloatingPointError(f"the epoch loss is {cell.last_loss}: training diverged"), "train_epoch")
        return None
    return dt


def run_cells(cells: list[Cell], made: dict[str, object], orders: list[np.ndarray]) -> int:
    """orders[0] is the warm-up epoch, orders[1:] the timed rounds. Returns the rounds done.

    Ctrl-C (or SIGTERM, see main) stops early: the rounds done so far are still reported.
    """
    live = [c for c in cells if c.name in made]
    done = 0
    try:
        for cell in live:
            cell.first_epoch_seconds = run_epoch(cell, made[cell.name], orders[0])
            if cell.first_epoch_seconds is not None:
                print(f"bench: warm-up {cell.name}: {cell.first_epoch_seconds:.3f} s", file=sys.stderr)
        live = [c for c in live if c.status == "pending"]
        for r, order in enumerate(orders[1:]):
            gc.collect()  # not inside an epoch of whichever cell comes next
            start = r % max(len(live), 1)  # rotate: no cell always runs right after another
            for cell in live[start:] + live[:start]:
                if cell.status != "pending":
                    continue
                dt = run_epoch(cell, made[cell.name], order)
                if dt is not None:
                    cell.epoch_seconds.append(dt)
            done = r + 1
            times = ", ".join(f"{c.name} {c.epoch_seconds[-1]:.3f}" for c in live if c.status == "pending")
            print(f"bench: round {done}/{len(orders) - 1}: {times}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"bench: interrupted after {done} complete round(s); reporting what was measured", file=sys.stderr)
    for cell in live:
        if cell.status == "pending" and cell.epoch_seconds:
            cell.status = "ok"
        elif cell.status == "pending":
            cell.status, cell.reason = "failed", "interrupted before its first timed epoch"
    return done


# ----------------------------------------------------------------------------- figures


def cell_rows(cells: list[Cell], spec: MLPSpec, n_samples: int, numpy_peak: float | None) -> list[dict]:
    """Each cell's record plus the derived figures (throughput, GFLOP/s, ratios)."""
    gflop = spec.needed_flops(n_samples) / 1e9
    rows = []
    for c in cells:
        row = asdict(c) | {"cell": c.name}
        if c.status == "ok":
            med = statistics.median(c.epoch_seconds)
            row |= {
                "min_epoch_seconds": min(c.epoch_seconds),
                "median_epoch_seconds": med,
                "samples_per_second": n_samples / med,
                "gflops": gflop / med,
                # CPU cells only: a CPU sgemm peak says nothing of a GPU's
                "peak_fraction": gflop / med / numpy_peak if numpy_peak and c.device == "cpu" else None,
            }
        rows.append(row)
    by_key = {(r["framework"], r["mode"], r["strategy"], r["batch"], r["device"]): r for r in rows}
    for r in rows:
        if "median_epoch_seconds" not in r:
            continue
        eager = by_key.get(("torch", "eager", r["strategy"], r["batch"], r["device"]))
        if eager and "median_epoch_seconds" in eager:
            r["vs_torch_eager"] = paired_ratio(eager["epoch_seconds"], r["epoch_seconds"])
        par = by_key.get((r["framework"], r["mode"], "parallel", r["batch"], r["device"]))
        if r["strategy"] == "sequential" and par and "median_epoch_seconds" in par:
            r["seq_over_par"] = paired_ratio(r["epoch_seconds"], par["epoch_seconds"])
    return rows


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[r] / denominator[r]: the two epochs of a round ran
    minutes apart at most, so machine drift cancels in each ratio, and the median drops
    the round where a neighbour's burst hit one of the two."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def _ok(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if "median_epoch_seconds" in r and all(r[k] == v for k, v in match.items())]


def evaluate_targets(rows: list[dict], square_n: int = 2048, device: str = "cpu",
                     matmul_ceiling: dict[int, float] | None = None) -> list[dict]:
    """Issue 5's targets, each {target, met (True/False/None = not evaluated), detail}.

    matmul_ceiling: {batch: fraction of the square peak that the MLP's own products reach
    with NumPy's BLAS, timed alone}: no NumPy implementation can pass it.
    """
    out = []
    for batch, need in sorted(TARGET_PEAK_FRACTION.items(), reverse=True):
        r = _ok(rows, framework="numpy", strategy="parallel", batch=batch, device=device)
        frac = r[0]["peak_fraction"] if r else None
        ceiling = (matmul_ceiling or {}).get(batch)
        out.append({
            "target": f"NumPy parallel >= {need:.0%} of the {square_n}^2 sgemm peak at batch {batch}",
            "met": None if frac is None else frac >= need,
            "detail": "not measured" if frac is None else f"{frac:.1%} ({r[0]['gflops']:.1f} GFLOP/s)"
            + ("" if ceiling is None else f"; the step's products alone, at their own shapes, reach {ceiling:.1%}"
               f" ({frac / ceiling:.0%} of that ceiling)"),
        })
    np64 = _ok(rows, framework="numpy", strategy="parallel", batch=64, device=device)
    t64 = _ok(rows, framework="torch", mode="eager", strategy="parallel", batch=64, device=device)
    ratio = np64[0].get("vs_torch_eager") if np64 and t64 else None
    out.append({
        "target": f"NumPy >= {TARGET_NUMPY_OVER_TORCH_B64:g}x torch eager samples/s at batch 64 (parallel)",
        "met": None if ratio is None else ratio >= TARGET_NUMPY_OVER_TORCH_B64,
        "detail": "not measured" if ratio is None else f"{ratio:.2f}x",
    })
    for fw in backends.FRAMEWORKS:
        seq = [r for r in _ok(rows, framework=fw, strategy="sequential", device=device) if "seq_over_par" in r]
        worst = max(seq, key=lambda r: r["seq_over_par"]) if seq else None
        out.append({
            "target": f"{fw}: sequential <= {TARGET_SEQ_OVER_PAR}x parallel (worst mode/batch)",
            "met": None if worst is None else worst["seq_over_par"] <= TARGET_SEQ_OVER_PAR,
            "detail": "not measured" if worst is None
            else f"{worst['seq_over_par']:.2f}x ({worst['mode']}, b{worst['batch']})",
        })
    for fw in ("torch", "tensorflow", "keras"):
        out.append(_within_best(rows, fw, device, plain_only=False))
        out.append(_within_best(rows, fw, device, plain_only=True))
    return out


def _within_best(rows: list[dict], fw: str, device: str, plain_only: bool) -> dict:
    """The backend's fastest mode (or its plain mode) over the fastest configuration of the
    framework (backend modes and stock idioms), parallel, worst batch. Medians."""
    plain = framework_modes([])[fw][0][0]
    worst = None  # (ratio, batch, backend mode, best configuration)
    for batch in sorted({r["batch"] for r in _ok(rows, framework=fw, device=device)}):
        peers = _ok(rows, framework=fw, strategy="parallel", batch=batch, device=device)
        ours = [r for r in peers if (r["mode"] == plain if plain_only else not is_stock(r["mode"]))]
        if not ours or len(peers) < 2:
            continue
        mine = min(ours, key=lambda p: p["median_epoch_seconds"])
        best = min(peers, key=lambda p: p["median_epoch_seconds"])
        ratio = mine["median_epoch_seconds"] / best["median_epoch_seconds"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, batch, mine["mode"], best["mode"])
    what = f"plain mode ({plain}, the study's default)" if plain_only else "backend's fastest mode"
    return {
        "target": f"{fw}: {what} within {TARGET_WITHIN_BEST}x of the framework's fastest configuration",
        "met": None if worst is None else worst[0] <= TARGET_WITHIN_BEST,
        "detail": "not measured (needs two configurations)" if worst is None
        else f"worst {worst[0]:.2f}x: {worst[2]} against {worst[3]} (b{worst[1]}, parallel)",
    }


# ----------------------------------------------------------------------------- report


def _f(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(result: dict) -> str:
    d, p = result["data"], result["peak"]
    lines = [
        "# Backprop bench",
        "",
        f"MLP {'-'.join(map(str, result['sizes']))}, float32, {result['optimizer']}; "
        f"data: {d['source']} ({d['n']} x {result['sizes'][0]}"
        + (f", {d['path']}" if d["path"] else f", {d.get('why', '')}") + "); "
        f"{result['gflop_per_epoch']:.2f} GFLOP of needed matmul work per epoch; "
        f"{result['rounds']} timed rounds (one epoch of every cell each, interleaved) after one warm-up epoch.",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores_usable']} usable cores. "
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v) + ".",
        "",
        "BLAS: " + "; ".join(
            " ".join(str(b[k]) for k in ("internal_api", "version", "architecture") if b[k])
            + f" ({b['file']}, {b['num_threads']} threads)"
            for b in result["blas"]
        ) + ".",
        "",
        f"OpenBLAS environment: in effect {result['blas_env']['in_effect']}, "
        f"unset by the bench: {result['blas_env']['unset_by_bench'] or 'nothing'}"
        + (" (--keep-blas-env)" if result["blas_env"]["keep_blas_env"] else "") + ".",
        "",
        "## Matmul peak (float32, median GFLOP/s)",
        "",
        "| library | " + f"{p['square_n']}^2 | {p['square_n']}^2 after the rounds | "
        + " | ".join(f"MLP shapes b{b}" for b in result["batches"]) + " |",
        "|---|---:|---:|" + "---:|" * len(result["batches"]),
    ]
    for lib in p["libraries"]:
        lines.append(f"| {lib['library']} | {lib['square']['median']:.1f} | {lib['square_after']['median']:.1f} | "
                     + " | ".join(f"{lib[f'mlp_b{b}']:.1f}" for b in result["batches"]) + " |")
    for note in p["notes"]:
        lines.append(f"\n{note}")
    lines += [
        "",
        "## Cells (epoch = one pass over the train set)",
        "",
        "| cell | status | first epoch s | min s | median s | samples/s | GFLOP/s | % peak | x torch eager | seq/par |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["cells"]:
        if r["status"] == "skipped" and r["device"] != "cpu":
            continue  # summarised in one line below
        pct = None if r.get("peak_fraction") is None else 100 * r["peak_fraction"]
        lines.append(
            f"| {r['cell']} | {r['status']} | {_f(r['first_epoch_seconds'], '.3f')} | "
            f"{_f(r.get('min_epoch_seconds'), '.3f')} | {_f(r.get('median_epoch_seconds'), '.3f')} | "
            f"{_f(r.get('samples_per_second'), ',.0f')} | {_f(r.get('gflops'), '.1f')} | {_f(pct, '.0f')} | "
            f"{_f(r.get('vs_torch_eager'), '.2f')} | {_f(r.get('seq_over_par'), '.2f')} |"
        )
    problems = [r for r in result["cells"] if r["status"] == "failed" or (r["status"] == "skipped" and r["device"] == "cpu")]
    if problems:
        lines += ["", "Cells that did not run:", ""] + [f"- {r['cell']}: {r['reason']}" for r in problems]
    lines += ["", "## GPU", "", result["gpu_note"], "", "## Targets (issue 5)", ""]
    mark = {True: "met", False: "MISSED", None: "not evaluated"}
    lines += [f"- {t['target']}: **{mark[t['met']]}** — {t['detail']}" for t in result["targets"]]
    lines += ["", "Plain modes: " + ", ".join(f"{fw} {m[0][0]}" for fw, m in framework_modes([]).items())
              + f". {STOCK}-* cells are each framework's own idiom (backends/stock.py: built-in layers, loss "
              f"and SGD), parallel only, the yardstick for the backends. % peak = achieved GFLOP/s (median epoch) / NumPy's {p['square_n']}^2 sgemm median. "
              "x torch eager and seq/par are paired: the median over rounds of the ratio of the two cells' "
              "epochs in the same round (seq/par: same mode and batch)."]
    if result["rounds"] < result["rounds_requested"]:
        lines.append(f"\nInterrupted: {result['rounds']} of {result['rounds_requested']} rounds done "
                     "(a cell may hold one more epoch than the complete rounds).")
    if result["rounds"] < 3:
        lines.append(f"\nOnly {result['rounds']} timed round(s): below the >= 3 the timing rules ask for.")
    return "\n".join(lines) + "\n"


def gpu_note(rows: list[dict], devices: list[str]) -> str:
    gpu = [r for r in rows if r["device"] != "cpu"]
    if not gpu:
        return "GPU cells not requested (--devices " + ",".join(devices) + ")."
    ran = [r for r in gpu if r["status"] == "ok"]
    if ran:
        return f"{len(ran)} of {len(gpu)} GPU cells ran; see the table."
    reasons = sorted({r["reason"] for r in gpu if r["status"] == "skipped"})
    if not reasons:
        return "no GPU cell ran: every one failed (see the cells that did not run)."
    return "no GPU available: GPU cells not run (" + "; ".join(reasons) + ")."


def write_atomic(path: Path, text: str) -> None:
    from backprop_bench.data.formats import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- entry point


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m backprop_bench.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frameworks", default=",".join(backends.FRAMEWORKS), help="comma list (default: all four)")
    ap.add_argument("--strategies", default="parallel,sequential")
    ap.add_argument("--batches", default="64,256", help="comma list of batch sizes")
    ap.add_argument("--devices", "--device", dest="devices", default="cpu,cuda", help="cpu and/or cuda; cuda cells are skipped without a GPU")
    ap.add_argument("--rounds", "--epochs", dest="rounds", type=int, default=5,
                    help="timed epochs per cell, one per interleaved round (after one warm-up epoch)")
    ap.add_argument("--samples", type=int, default=N_TRAIN, help="train-set rows (default 60000)")
    ap.add_argument("--data", choices=("auto", "fashion-mnist", "synthetic"), default="auto")
    ap.add_argument("--data-dir", type=Path, default=FASHION_DIR)
    ap.add_argument("--keras-spe", default=DEFAULT_KERAS_SPE,
                    help="comma list of steps_per_execution values, one keras jit-speN mode each ('' or 1: none)")
    ap.add_argument("--stock", action=argparse.BooleanOptionalAction, default=True,
                    help="also time each framework's stock idiom (backends/stock.py), parallel only")
    ap.add_argument("--peak-size", type=int, default=2048, help="square sgemm size for the peak")
    ap.add_argument("--peak-repeats", type=int, default=7, help="timing samples per matmul shape")
    ap.add_argument("--peak-seconds", type=float, default=0.05, help="minimum length of one timing sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path("reports"))
    ap.add_argument("--keep-blas-env", action="store_true",
                    help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (default: re-exec without them)")
    args = ap.parse_args(argv)
    args.argv = list(argv or [])
    args.frameworks = _list(args.frameworks)
    args.strategies = _list(args.strategies)
    args.devices = _list(args.devices)
    for option in ("batches", "keras_spe"):
        try:
            setattr(args, option, [int(v) for v in _list(getattr(args, option))])
        except ValueError:
            ap.error(f"--{option.replace('_', '-')} {getattr(args, option)!r}: expected comma-separated integers, e.g. 64,256")
    for option, values, allowed in (
        ("--frameworks", args.frameworks, backends.FRAMEWORKS),
        ("--strategies", args.strategies, ("parallel", "sequential")),
        ("--devices", args.devices, ("cpu", "cuda")),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            ap.error(f"{option}: {', '.join(bad) or 'empty'}: expected a comma list of {', '.join(allowed)}")
    if args.rounds < 1 or args.samples < max(args.batches) or min(args.batches) < 1:
        ap.error(f"need --rounds >= 1 and 1 <= batch <= --samples, got --rounds {args.rounds}, "
                 f"--batches {args.batches}, --samples {args.samples}")
    return args


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark; returns what it wrote to bench.json."""
    spec = MLPSpec(SIZES)
    optimizer = OptimizerSpec("sgd", lr=BENCH_LR)
    x, y, data = load_train_set(args.data, args.samples, args.seed, args.data_dir)
    print(f"bench: data {data}", file=sys.stderr)

    peaks, notes = [measure_peak("numpy", SIZES, args.batches, args.peak_size, args.peak_repeats, args.peak_seconds)], []
    if "torch" in args.frameworks:
        peaks.append(measure_peak("torch", SIZES, args.batches, args.peak_size, args.peak_repeats, args.peak_seconds))
    else:
        notes.append("torch peak not measured: torch is not among --frameworks (a NumPy-only bench never imports it).")
    numpy_peak = peaks[0]["square"]["median"]

    cells = plan_cells(args.frameworks, args.strategies, args.batches, args.devices, args.keras_spe, args.stock)
    made = {}
    for cell in cells:  # build everything first: imports and tracing set-up stay out of the rounds
        backend = build(cell, spec, x, y, args.seed, optimizer)
        if backend is not None:
            made[cell.name] = backend
    info = {}
    for cell in cells:
        if cell.name in made and cell.framework not in info:
            try:
                info[cell.framework] = made[cell.name].info()
            except Exception as err:
                info[cell.framework] = {"error": f"{type(err).__name__}: {err}"}
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(args.samples) for _ in range(args.rounds + 1)]
    rounds_done = run_cells(cells, made, orders)
    for peak in peaks:  # the same square sgemm again: how much the machine drifted meanwhile
        peak["square_after"] = square_gflops(peak["library"], args.peak_size, args.peak_repeats, args.peak_seconds)

    rows = cell_rows(cells, spec, args.samples, numpy_peak)
    result = {
        "sizes": list(SIZES),
        "dtype": "float32",
        "optimizer": f"{optimizer.name} lr={optimizer.lr}",
        "data": data,
        "batches": args.batches,
        "rounds": rounds_done,  # complete interleaved rounds (fewer than asked if interrupted)
        "rounds_requested": args.rounds,
        "gflop_per_epoch": spec.needed_flops(args.samples) / 1e9,
        "peak": {"square_n": args.peak_size, "numpy_square_median": numpy_peak, "libraries": peaks, "notes": notes},
        "cells": rows,
        "gpu_note": gpu_note(rows, args.devices),
        "versions": versions(),
        "backend_info": info,
        "blas": blas_info(),
        "blas_env": blas_env_report(args.keep_blas_env),
        "machine": machine(),
        "command": " ".join(["python -m backprop_bench.bench", *args.argv]),
    }
    ceiling = {b: peaks[0][f"mlp_b{b}"] / numpy_peak for b in args.batches}
    result["targets"] = evaluate_targets(rows, args.peak_size, matmul_ceiling=ceiling)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out_dir / "bench.json", json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    write_atomic(args.out_dir / "bench.md", md)
    print(md)
    return result


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not args.keep_blas_env:
        reexec_without_blas_env(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout` sends SIGTERM: still write the report
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
