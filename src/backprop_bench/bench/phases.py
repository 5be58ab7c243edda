"""Where the time of one training step goes: forward, backward, update and the rest.

After a process group's rounds, each plain and fastest mode (cells.default_modes), parallel, at
every batch (the default cell set: at its smallest), is timed once more on its cell's own backend:
the backend's phase_fns (backends/base.py), three calls on one fixed batch of the cell's size,
already on the device, each run the way the mode runs its step (compiled where it compiles):

    forward   = t(forward)
    backward  = t(forward + backward) - t(forward)
    update    = t(step) - t(forward + backward)
    rest      = the cell's epoch time / its steps - t(step)   (batch selection, dispatch, Python, the loop)

Each t is seconds per call: a repeat loops one function long enough for the clock (PHASE_SECONDS),
after WARMUP_CALLS untimed calls, and the three functions take turns in every repeat, so a
neighbour's burst hits the three of one repeat alike. forward, backward and update are the medians
over PHASE_REPEATS repeats of the per-repeat differences, with their min-max. docs/benchmark.md
says what each phase holds per framework and mode. Imports no framework: the backends do.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backprop_bench.backends.base import n_steps
from backprop_bench.bench.cells import Cell, Model, default_modes
from backprop_bench.core.files import atomic_write
from backprop_bench.core.specs import MLPSpec
from backprop_bench.report.tables import markdown_table

PHASES = ("forward", "backward", "update", "rest")
PHASE_REPEATS = 15  # repeats of the three functions, short and many: a burst on the shared machine hits few
PHASE_SECONDS = 0.01  # the least length of one repeat of one function, s: the clock resolves it
WARMUP_CALLS = 3  # untimed calls first: tracing, compilation, first touch of the buffers
MAX_CALLS = 1 << 14  # a repeat never loops more calls than this, however fast the function


def phase_cells(cells: list[Cell], keras_spe: list[int], cell_set: str = "full") -> list[Cell]:
    """The cells whose phases are measured: each framework's plain and fastest mode
    (cells.default_modes), parallel strategy, every group, at every batch of the full set and at
    the smallest batch of the default one (where per-step overhead shows most; a phase split costs
    a compilation or three per cell); a cell skipped for want of a device is left out (the report
    lists it already)."""
    modes = default_modes(keras_spe)
    todo = [c for c in cells if c.strategy == "parallel" and c.mode in modes[c.framework] and c.status != "skipped"]
    smallest = min((c.batch for c in todo), default=None)
    return [c for c in todo if cell_set == "full" or c.batch == smallest]


# ----------------------------------------------------------------------------- timing


def seconds_per_call(fn: Callable[[], object], wait: Callable[[object], None], calls: int) -> float:
    """Seconds per call of `calls` calls in a row, waited for at the end; no garbage collection inside."""
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        wait(out)
        return (time.perf_counter() - start) / calls
    finally:
        gc.enable()


def calls_for(fn: Callable[[], object], wait: Callable[[object], None], min_seconds: float) -> int:
    """The calls a repeat loops: doubled until they last min_seconds (at most MAX_CALLS)."""
    calls = 1
    while calls < MAX_CALLS and seconds_per_call(fn, wait, calls) * calls < min_seconds:
        calls *= 2
    return calls


def time_phases(
    fns: tuple[Callable[[], object], ...], wait: Callable[[object], None], repeats: int, min_seconds: float
) -> list[list[float]]:
    """[repeat][function] seconds per call of (forward, forward_backward, step), in turns."""
    for fn in fns:
        for _ in range(WARMUP_CALLS):
            wait(fn())
    calls = [calls_for(fn, wait, min_seconds) for fn in fns]
    return [[seconds_per_call(fn, wait, n) for fn, n in zip(fns, calls)] for _ in range(repeats)]


def spread(values: list[float]) -> dict:
    """{median, min, max} of values (seconds)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def split(samples: list[list[float]], epoch_seconds: list[float], steps: int) -> dict:
    """The phases from time_phases' samples and the cell's epochs: {forward, backward, update, step, rest},
    each a spread. rest: per round, epoch / steps - the median step (its spread is the rounds')."""
    fwd, fb, step = (list(s) for s in zip(*samples))
    out = {
        "forward": spread(fwd),
        "backward": spread([b - f for f, b in zip(fwd, fb)]),
        "update": spread([s - b for b, s in zip(fb, step)]),
        "step": spread(step),
    }
    out["rest"] = spread([e / steps - out["step"]["median"] for e in epoch_seconds])
    return out


# ----------------------------------------------------------------------------- measuring


def entry(cell: Cell) -> dict:
    """A cell's phase record before it is measured."""
    keys = ("framework", "mode", "batch", "device", "group")
    return {k: getattr(cell, k) for k in keys} | {"cell": cell.name, "status": "failed", "reason": ""}


def measure_cell(
    cell: Cell, backend: Model | None, n_samples: int, repeats: int = PHASE_REPEATS, min_seconds: float = PHASE_SECONDS
) -> dict:
    """One cell's phases: {framework, mode, batch, device, group, cell, status ok|failed, reason,
    steps_per_epoch, repeats, forward, backward, update, step, rest, note}. A phase that raises makes
    the entry failed with its reason; it is never left out."""
    out = entry(cell) | {"note": note(cell.framework, cell.mode)}
    if cell.status != "ok" or backend is None:
        return out | {"reason": f"its cell did not run ({cell.status}: {cell.reason})"}
    try:
        fns = backend.phase_fns(np.arange(cell.batch))  # a fixed batch: the train set's first rows
        samples = time_phases(fns, backend.wait, repeats, min_seconds)
    except Exception as err:  # one framework's failure must not end the bench; it is reported
        out["reason"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
        print(f"bench: phases of {cell.name} failed: {out['reason']}", file=sys.stderr)
        return out
    steps = n_steps(n_samples, cell.batch)
    out |= {"status": "ok", "steps_per_epoch": steps, "repeats": repeats}
    return out | split(samples, cell.epoch_seconds, steps)


def measure(
    cells: list[Cell], made: dict[str, Model], n_samples: int, keras_spe: list[int], cell_set: str = "full"
) -> list[dict]:
    """The phases of every phase_cells cell of one process group, on its built backends, after the rounds.
    Ctrl-C stops early: the cells not measured yet are reported failed, "interrupted"."""
    out: list[dict] = []
    todo = phase_cells(cells, keras_spe, cell_set)
    try:
        for cell in todo:
            out.append(measure_cell(cell, made.get(cell.name), n_samples))
            if out[-1]["status"] == "ok":
                print(f"bench: phases {cell.name}: {_line(out[-1])}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: phases interrupted; reporting what was measured", file=sys.stderr)
    return out + [entry(c) | {"reason": "interrupted", "note": ""} for c in todo[len(out) :]]


def _line(e: dict) -> str:
    return ", ".join(f"{p} {_us(e[p]['median'])} us" for p in (*PHASES, "step"))


def add_floors(entries: list[dict], spec: MLPSpec, ceiling: dict[int, dict]) -> None:
    """Each CPU entry's floor_seconds: one step's matmul work (a full batch) at the ceiling's rate for its
    batch (peak.ceiling), the step's share of the epoch's matmul floor. None on a GPU or without a ceiling."""
    for e in entries:
        top = ceiling.get(e["batch"])
        cpu = e["device"] == "cpu"
        e["floor_seconds"] = spec.needed_flops(e["batch"]) / (top["gflops"] * 1e9) if top and cpu else None


def note(framework: str, mode: str) -> str:
    """What the table must say of a mode whose phases are not its epoch's own pieces."""
    if framework == "jax" and mode == "epoch-scan":
        return "the epoch is one lax.scan: phases are step-jit's per-step jitted functions (rest < 0: what scan saves)"
    if framework == "tensorflow":
        return "the epoch is one tf.function: each phase is a tf.function call of its own, call overhead included"
    if framework == "keras":
        calls = " (fit runs its steps_per_execution steps per call)" if "spe" in mode else ""
        return "step: one train_step in a tf.function, one step per call" + calls
    if framework == "keras-jax":
        calls = " (fit runs its steps_per_execution steps per call)" if "spe" in mode else ""
        return "step: jax.jit(train_step), one step per call" + calls
    if framework == "keras-torch":
        return "step: one train_step; fit's loop, data adapter and callbacks are in rest"
    if framework == "numpy" and mode == "fast":
        return "plain SGD's step runs inside the weight-gradient GEMMs (update < 0: they write no gradient buffer)"
    return ""


# ----------------------------------------------------------------------------- the report


def _us(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e6:,.0f}"


def _cell(e: dict, phase: str) -> str:
    s = e[phase]
    return f"{_us(s['median'])} ({_us(s['min'])} to {_us(s['max'])})"


def label(e: dict) -> str:
    """framework-mode b{batch}, with the device off the CPU and the group off main."""
    where = "" if e["device"] == "cpu" else f" {e['device']}"
    group = "" if e["group"] == "main" else f" [{e['group']}]"
    return f"{e['framework']}-{e['mode']} b{e['batch']}{where}{group}"


def markdown(entries: list[dict], plot: str | None = None) -> list[str]:
    """The section "Where the time goes": one row per entry, microseconds per step."""
    lines = ["", "## Where the time goes (microseconds per step)", ""]
    if not entries:
        return lines + ["No phases measured: no plain or fastest parallel cell ran, or the rounds were interrupted."]
    header = ["cell", *PHASES, "step", "epoch / steps", "matmul floor", "step / floor", "note"]
    rows = []
    for e in entries:
        if e["status"] != "ok":
            rows.append([label(e), "failed", "", "", "", "", "", "", "", e["reason"]])
            continue
        per_step = e["step"]["median"] + e["rest"]["median"]  # = the median epoch / steps
        floor = e.get("floor_seconds")
        ratio = "" if not floor else f"{e['step']['median'] / floor:.1f}"
        rows.append(
            [label(e), *(_cell(e, p) for p in PHASES), _cell(e, "step"), _us(per_step), _us(floor), ratio, e["note"]]
        )
    lines.append(markdown_table(header, rows, align="l" + "r" * 8 + "l"))
    lines += [
        "",
        "Each phase: median (min to max) over repeats, in microseconds, of one step on a fixed batch of the "
        "cell's size, timed after the rounds on the cell's own backend (docs/benchmark.md). forward = "
        "t(forward), backward = t(forward+backward) - t(forward), update = t(step) - t(forward+backward), "
        "step = t(step); rest = epoch time / steps - t(step) per round (batch selection, dispatch, Python, "
        "the loop), negative where the epoch runs its steps cheaper than one call each. matmul floor: a "
        "step's matmul work at the ceiling's rate for its batch; step / floor: how far the step is from it.",
    ]
    if plot:
        lines.append(f"\nThe same as stacked bars: {plot}.")
    return lines


COLORS = {"forward": "tab:blue", "backward": "tab:orange", "update": "tab:green", "rest": "tab:gray"}


def plot(entries: list[dict], path: Path) -> Path:
    """Stacked horizontal bars per entry, one panel per batch, microseconds per step: forward, backward,
    update, rest (a negative one is not drawn: its value is written beside the bar), the matmul floor as a
    black marker. A failed entry is a labelled empty row. Written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    batches = sorted({e["batch"] for e in entries})
    heights = [sum(e["batch"] == b for e in entries) for b in batches]
    fig = Figure(figsize=(10, 1.2 + 0.35 * sum(heights) + 0.6 * len(batches)))
    axes = fig.subplots(len(batches), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, batch in zip(axes, batches):
        _panel(ax, [e for e in entries if e["batch"] == batch])
        ax.set_title(f"batch {batch}", fontsize=10, loc="left")
    axes[-1].set_xlabel("microseconds per step (median over repeats)")
    handles = [Patch(color=COLORS[p], label=p) for p in PHASES]
    handles.append(Line2D([], [], color="k", marker="D", linestyle="", label="matmul floor"))
    fig.legend(handles=handles, loc="upper right", ncols=5, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def _panel(ax, entries: list[dict]) -> None:
    """One batch's bars, the first entry on top."""
    rows = list(range(len(entries)))[::-1]
    for y, e in zip(rows, entries):
        if e["status"] != "ok":
            ax.text(0, y, " failed: " + e["reason"][:60], va="center", fontsize=7, color="tab:red")
            continue
        left, negative = 0.0, []
        for phase in PHASES:
            width = e[phase]["median"] * 1e6
            if width < 0:  # noise or a saving (a scanned epoch's rest): written, not drawn
                negative.append(f"{phase} {width:,.0f}")
                continue
            ax.barh(y, width, left=left, color=COLORS[phase])
            left += width
        floor = (e.get("floor_seconds") or 0.0) * 1e6
        if floor:
            ax.plot(floor, y, "kD", markersize=5)
        if negative:  # past the bar and the floor's marker, so neither hides it
            ax.text(max(left, floor), y, "  " + ", ".join(negative), va="center", fontsize=7)
    ax.set_yticks(rows, [label(e) for e in entries], fontsize=8)
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
