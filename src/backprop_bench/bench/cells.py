"""The bench's cells: the train set, the grid, building each backend, the interleaved rounds.

A cell is one framework x mode x strategy x batch x device. Every epoch is timed by
backends.base.timed_epoch, the trainer's own clock. Rounds: one warm-up epoch per cell,
then each round runs one epoch of every live cell (start rotated), all on one permutation.
x (N, 784) float32 in [0, 1], y (N,) int64.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from backprop_bench.backends import KERAS_BACKENDS, make_backend
from backprop_bench.backends.base import DeviceUnavailable, timed_epoch
from backprop_bench.core.specs import InitSpec, MLPSpec, OptimizerSpec, init_params

SIZES = (784, 128, 64, 10)
N_TRAIN = 60_000
DATASET = "fashion_mnist"  # the params.yaml catalog entry the bench reads
STOCK = "stock"  # modes named stock-* run bench/stock.py: the framework's own idiom
DEFAULT_KERAS_SPE = "16"
BENCH_LR = 0.005  # plain SGD; docs/benchmark.md says why not 0.01
MAIN = "main"  # the process group of the frameworks the bench's own process runs
# The Keras frameworks on another backend than the main group's `keras` (TensorFlow): a group each
CHILD_GROUPS = tuple(fw for fw, on in KERAS_BACKENDS.items() if on != KERAS_BACKENDS["keras"])

Mode = tuple[str, bool, int]  # (mode name, compile, steps_per_execution)
CELL_SETS = ("default", "full")  # --cells: the quick bench (default_modes) or every cell of the grid
SCALING = "scaling"  # the cell set of --scaling (in_scaling_set): plain and fastest modes, parallel, CPU


class Model(Protocol):
    """What a cell needs of a backend or a stock model."""

    def load(self, x: np.ndarray, y: np.ndarray) -> None: ...
    def train_epoch(self, order: np.ndarray, batch_size: int, masks: None = None) -> float: ...
    def synchronize(self) -> None: ...
    def info(self) -> dict: ...


def framework_modes(keras_spe: list[int]) -> dict[str, list[Mode]]:
    """Each framework's modes; the first one is its plain mode, the study's default.

    keras_spe: the steps_per_execution values (> 1) to bench beside plain jit.
    """
    spe = [n for n in keras_spe if n > 1]
    keras = [("fit", False, 1), ("jit", True, 1)] + [(f"jit-spe{n}", True, n) for n in spe]
    return {
        "numpy": [("plain", False, 1), ("fast", True, 1)],
        "torch": [
            ("eager", False, 1),
            ("compile", True, 1),
            (f"{STOCK}-eager", False, 1),
            (f"{STOCK}-compile", True, 1),
        ],
        "tensorflow": [
            ("function", False, 1),
            ("jit", True, 1),
            (f"{STOCK}-step", False, 1),
            (f"{STOCK}-step-jit", True, 1),
        ],
        "keras": keras + [(f"{STOCK}-fit", False, 1)] + [(f"{STOCK}-jit-spe{n}", True, n) for n in spe],
        # every jax step is jax.jit-compiled (no eager mode); compile=True compiles the whole epoch
        "jax": [("step-jit", False, 1), ("epoch-scan", True, 1), (f"{STOCK}-jit", False, 1)],
        # Keras on JAX jits its train_step always (compile=True is refused); on torch, one step per call
        "keras-jax": [("fit", False, 1)] + [(f"fit-spe{n}", False, n) for n in spe],
        "keras-torch": [("fit", False, 1)],
    }


def default_modes(keras_spe: list[int]) -> dict[str, tuple[str, str]]:
    """Each framework's (plain, fastest) mode: what the default cell set, the phases and the scaling
    curves time.

    fastest: the backend mode that was the framework's fastest in docs/results.md (Keras: the
    largest steps_per_execution); keras-torch has one mode, so both are fit.
    """
    top = max((n for n in keras_spe if n > 1), default=None)
    spe = f"-spe{top}" if top else ""
    return {
        "numpy": ("plain", "fast"),
        "torch": ("eager", "compile"),
        "tensorflow": ("function", "jit"),
        "keras": ("fit", f"jit{spe}"),
        "jax": ("step-jit", "epoch-scan"),
        "keras-jax": ("fit", f"fit{spe}"),
        "keras-torch": ("fit", "fit"),
    }


def in_default_set(cell: Cell, keras_spe: list[int], batches: list[int]) -> bool:
    """Whether the default (quick, about 3 minutes) cell set keeps a cell of the full grid.

    Kept, parallel only: each framework's fastest mode at every batch, and its plain mode at the
    smallest batch (the study's: the report's plain-mode ratios, the Keras-over-backend pairs, and
    where per-step overhead shows most). The stock idioms, the sequential cells and the plain modes
    at larger batches are in the full set. docs/benchmark.md gives the reasons and the time.
    """
    plain, fastest = default_modes(keras_spe)[cell.framework]
    if cell.strategy != "parallel":
        return False
    return cell.mode == fastest or (cell.mode == plain and cell.batch == min(batches))


def in_scaling_set(cell: Cell, keras_spe: list[int]) -> bool:
    """Whether --scaling times a cell: each framework's plain and fastest backend mode (default_modes),
    parallel, on the CPU (threads are a CPU's notion). No stock idiom: the curves compare a
    framework's modes with themselves across batch sizes and threads."""
    modes = default_modes(keras_spe)[cell.framework]
    return cell.mode in modes and cell.strategy == "parallel" and cell.device == "cpu"


def process_groups(frameworks: list[str], pairs: bool = True) -> dict[str, list[str]]:
    """{group: its frameworks}, one process each. Keras runs on one backend per process, so each
    Keras framework not on TensorFlow (the main group's `keras`) gets a group of its own, named
    after it, holding it and its backend's framework (keras-jax beside jax), timed interleaved as a
    pair. "main" (the bench's own process) holds the rest, and is left out when that is nothing.
    A framework may so be in two groups (jax in main and beside keras-jax). pairs=False: a Keras
    group holds the Keras framework alone (--scaling: no Keras ratio, so no second timing of jax)."""
    own = [fw for fw in frameworks if fw in CHILD_GROUPS]
    main = [fw for fw in frameworks if fw not in own]
    return ({MAIN: main} if main else {}) | {fw: [fw, KERAS_BACKENDS[fw]] if pairs else [fw] for fw in own}


def is_stock(mode: str) -> bool:
    """Whether a mode runs the framework's stock idiom rather than the backend."""
    return mode.startswith(STOCK)


# ----------------------------------------------------------------------------- data


def fashion_mnist_files(params: Path, data_dir: Path | None = None) -> list[Path]:
    """[train images, train labels]: params.yaml's data.catalog.fashion_mnist local_dir
    (or data_dir, when given) / the catalog's file names. ParamsError when params lacks one."""
    from backprop_bench.core.checks import check
    from backprop_bench.data.download import Catalog  # the pipeline's own catalog reader
    from backprop_bench.data.formats import read_data_params

    where = f"data.catalog.{DATASET}"
    entry = (read_data_params(params).get("catalog") or {}).get(DATASET)
    check(entry is not None, where, entry, "is missing", params)
    catalog = Catalog.from_params(entry, where, params)
    files = catalog.files_for("idx")  # role -> {name, sha256}; the local copy's sha256 may differ
    folder = data_dir or catalog.local_dir
    check(bool(folder), f"{where}.local_dir", folder, "must be set (or pass --data-dir)", params)
    return [Path(folder) / files[role]["name"] for role in ("train_images", "train_labels")]


def load_train_set(
    source: str, n_samples: int, seed: int, params: Path = Path("params.yaml"), data_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """x (n, 784) float32 in [0, 1], y (n,) int64, and where they came from.

    source: "auto" (Fashion-MNIST if present, else synthetic), "fashion-mnist" (must be
    present) or "synthetic" (reads no params). The files: see fashion_mnist_files.
    """
    if source == "synthetic":
        return _synthetic(n_samples, seed, "requested")
    from backprop_bench.core.checks import ParamsError

    try:
        paths = fashion_mnist_files(params, data_dir)
        absent = [str(p) for p in paths if not p.is_file()]
        why = f"{' and '.join(absent)} not found" if absent else ""
    except ParamsError as err:
        why = str(err)
    if not why:
        return _fashion_mnist(paths, n_samples)
    if source == "fashion-mnist":
        raise SystemExit(f"--data fashion-mnist: {why} (Debian: apt-get install dataset-fashion-mnist)")
    return _synthetic(n_samples, seed, why)


def _fashion_mnist(paths: list[Path], n_samples: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from backprop_bench.data.formats import read_idx_pair  # the project's one IDX reader

    x, y = read_idx_pair(*paths)
    if n_samples > len(x):
        raise SystemExit(f"--samples {n_samples}: {paths[0]} holds only {len(x)} images")
    x = x[:n_samples].astype(np.float32) / np.float32(255)
    return x, y[:n_samples], {"source": "fashion-mnist", "path": str(paths[0].parent), "n": n_samples}


def _synthetic(n_samples: int, seed: int, why: str) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=n_samples).astype(np.int64)
    return x, y, {"source": "synthetic", "path": None, "n": n_samples, "why": why, "seed": seed}


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
    group: str = MAIN  # the process group it ran in (process_groups): cells of two groups are never compared
    status: str = "pending"  # pending -> ok | failed | skipped
    reason: str = ""
    build_seconds: float | None = None  # construct + load the train set
    first_epoch_seconds: float | None = None  # warm-up: tracing / compilation included
    epoch_seconds: list[float] = field(default_factory=list)  # one per timed round
    # the process's CPU time (every thread, user + system) during each timed epoch: over
    # epoch_seconds, the cores the epoch kept busy on average
    cpu_seconds: list[float] = field(default_factory=list)
    last_loss: float | None = None

    @property
    def name(self) -> str:
        return f"{self.framework}-{self.mode}-{self.strategy}-b{self.batch}-{self.device}"

    def fail(self, err: BaseException, stage: str) -> None:
        """Record why the cell stops; a missing device is "skipped", anything else "failed"."""
        self.status = "skipped" if isinstance(err, DeviceUnavailable) else "failed"
        self.reason = f"{stage}: {type(err).__name__}: {err}".strip()
        print(f"bench: {self.name} {self.status}: {self.reason}", file=sys.stderr)


def plan_cells(
    frameworks: list[str],
    strategies: list[str],
    batches: list[int],
    devices: list[str],
    keras_spe: list[int],
    stock: bool = True,
    group: str = MAIN,
    cell_set: str = "full",
) -> list[Cell]:
    """Every framework x mode x strategy x batch x device; stock modes are parallel only.

    Strategy varies fastest, then mode, then framework: the cells a ratio compares (a
    mode's parallel and sequential; numpy and torch eager) run seconds apart in every
    round, so a neighbour's burst on the shared machine rarely hits only one of them.
    group: the process group the cells run in (process_groups), recorded on each.
    cell_set: "full" (every cell), "default" (in_default_set's) or SCALING (in_scaling_set's).
    """
    modes = framework_modes(keras_spe)
    grid = [
        Cell(fw, mode, comp, spe, strategy, batch, device, group)
        for device in devices
        for batch in batches
        for fw in frameworks
        for mode, comp, spe in modes[fw]
        for strategy in strategies
        if not is_stock(mode) or (stock and strategy == "parallel")
    ]
    if cell_set == SCALING:
        return [c for c in grid if in_scaling_set(c, keras_spe)]
    return grid if cell_set == "full" else [c for c in grid if in_default_set(c, keras_spe, batches)]


def build(cell: Cell, spec: MLPSpec, x: np.ndarray, y: np.ndarray, seed: int, optimizer: OptimizerSpec) -> Model | None:
    """The cell's backend with the train set loaded, or None (the cell says why)."""
    t0 = time.perf_counter()  # set-up time only: epochs are timed by timed_epoch
    init = init_params(spec, InitSpec(seed=seed), "float32")
    keras = cell.framework in KERAS_BACKENDS
    extra = {"steps_per_execution": cell.steps_per_execution} if keras else {}  # Keras's own option
    try:
        if is_stock(cell.mode):
            from backprop_bench.bench import stock  # imports no framework until a model is made

            backend = stock.make_stock(
                cell.framework, spec, init, optimizer.lr, device=cell.device, compile=cell.compile, **extra
            )
        else:
            backend = make_backend(
                cell.framework,
                spec,
                init,
                optimizer,
                strategy=cell.strategy,
                device=cell.device,
                dtype="float32",
                compile=cell.compile,
                **extra,
            )
        backend.load(x, y)
        backend.synchronize()
    except Exception as err:  # one cell's failure must not end the run; it becomes a row
        cell.fail(err, "build")
        return None
    cell.build_seconds = time.perf_counter() - t0
    return backend


def run_epoch(cell: Cell, backend: Model, order: np.ndarray) -> float | None:
    """Seconds of one epoch by timed_epoch, or None when it failed (the cell says why)."""
    try:
        loss, seconds = timed_epoch(backend, order, cell.batch)
    except Exception as err:
        cell.fail(err, "train_epoch")
        return None
    if not math.isfinite(loss):  # NaN / inf arithmetic is no honest timing
        cell.last_loss = None  # JSON has no NaN; the reason holds the value
        cell.fail(FloatingPointError(f"the epoch loss is {loss}: training diverged"), "train_epoch")
        return None
    cell.last_loss = loss
    return seconds


def run_cells(cells: list[Cell], made: dict[str, Model], orders: list[np.ndarray]) -> int:
    """orders[0] is the warm-up epoch, orders[1:] the timed rounds. Returns the rounds done.

    Ctrl-C (or SIGTERM, see __main__) stops early: the rounds done so far are still reported.
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
            gc.collect()  # between rounds, never inside an epoch (timed_epoch turns it off)
            start = r % max(len(live), 1)  # rotate: no cell always runs right after another
            for cell in live[start:] + live[:start]:
                if cell.status == "pending":
                    cpu = time.process_time()  # every thread of the process; read outside the epoch's clock
                    seconds = run_epoch(cell, made[cell.name], order)
                    if seconds is not None:
                        cell.epoch_seconds.append(seconds)
                        cell.cpu_seconds.append(time.process_time() - cpu)
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
