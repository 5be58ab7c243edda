"""The bench's figures and its report: one row per cell, paired ratios, the goals, markdown.

Rows carry seconds per epoch (min, median), samples/s, GFLOP/s, % of the square-sgemm peak,
% of the matmul ceiling (the MLP's own products timed alone), and ratios paired per round:
speed-up over torch eager, time over the framework's fastest configuration, sequential
over parallel; and what each Keras framework costs over its own backend's. A ratio only ever
pairs two cells of one process group (cells.process_groups): the same rounds, one process.
The project's goals are defined in docs/benchmark.md.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict

from backprop_bench.backends import KERAS_BACKENDS
from backprop_bench.bench import baseline, phases
from backprop_bench.bench.cells import MAIN, STOCK, Cell, framework_modes, is_stock
from backprop_bench.core.specs import MLPSpec
from backprop_bench.report.tables import markdown_table

# The project's speed goals (docs/benchmark.md), judged on CPU cells of one run.
CELL_SET_NOTE = {  # --cells, as the header names it
    "default": "the default set (plain, fastest and stock modes; --cells full for every mode and strategy)",
    "full": "the full grid (every mode and strategy)",
}
GOAL_PEAK_FRACTION = {256: 0.70, 64: 0.50}  # NumPy parallel GFLOP/s over the square-sgemm median
GOAL_NUMPY_OVER_TORCH_B64 = 2.0  # NumPy samples/s over torch eager's, batch 64, parallel
GOAL_SEQ_OVER_PAR = 1.15  # sequential epoch time over parallel, per framework, worst mode/batch
GOAL_WITHIN_BEST = 1.2  # a backend's mode over its framework's fastest configuration (stock included)
GOAL_FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")  # the frameworks with a stock idiom to beat
GOAL_NUMPY_OVER_XLA = {256: 1.0, 64: 1.15}  # NumPy fast's epoch over TF XLA's (tensorflow-jit), paired, parallel
GOAL_NUMPY_OVER_FLOOR_B256 = 1.3  # NumPy fast's epoch over its own matmul floor (1 / % ceiling), batch 256


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[r] / denominator[r]: the two epochs of a round ran
    seconds to minutes apart, so machine drift cancels in each ratio, and the median drops
    the round where a neighbour's burst hit only one of the two."""
    return statistics.median(round_ratios(numerator, denominator))


def round_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """numerator[r] / denominator[r] for every round both cells finished."""
    return [a / b for a, b in zip(numerator, denominator)]


def cell_rows(
    cells: list[Cell], spec: MLPSpec, n_samples: int, numpy_peak: float | None, ceiling: dict[int, dict] | None = None
) -> list[dict]:
    """Each cell's record plus its figures. numpy_peak: NumPy's square-sgemm median GFLOP/s;
    ceiling: {batch: {gflops, library}} of the MLP's own products (peak.ceiling)."""
    gflop = spec.needed_flops(n_samples) / 1e9
    rows = []
    for c in cells:
        row = asdict(c) | {"cell": c.name}
        if c.status == "ok":
            med = statistics.median(c.epoch_seconds)
            cpu = c.device == "cpu"  # a CPU matmul rate says nothing of a GPU's
            top = (ceiling or {}).get(c.batch)
            row |= {
                "min_epoch_seconds": min(c.epoch_seconds),
                "median_epoch_seconds": med,
                "samples_per_second": n_samples / med,
                "gflops": gflop / med,
                "peak_fraction": gflop / med / numpy_peak if numpy_peak and cpu else None,
                "ceiling_fraction": gflop / med / top["gflops"] if top and cpu else None,
            }
        rows.append(row)
    _pair(rows)
    return rows


def _pair(rows: list[dict]) -> None:
    """Add the paired ratios: vs_torch_eager, seq_over_par, vs_framework_best (within the row's group)."""
    ok = _ok(rows)
    by_key = {(r["group"], r["framework"], r["mode"], r["strategy"], r["batch"], r["device"]): r for r in ok}
    for r in ok:
        eager = by_key.get((r["group"], "torch", "eager", r["strategy"], r["batch"], r["device"]))
        if eager:  # > 1: this cell is that many times faster than torch eager
            r["vs_torch_eager"] = paired_ratio(eager["epoch_seconds"], r["epoch_seconds"])
        par = by_key.get((r["group"], r["framework"], r["mode"], "parallel", r["batch"], r["device"]))
        if r["strategy"] == "sequential" and par:
            r["seq_over_par"] = paired_ratio(r["epoch_seconds"], par["epoch_seconds"])
        peers = _ok(rows, group=r["group"], framework=r["framework"], batch=r["batch"], device=r["device"])
        best = _fastest(peers)  # any mode and strategy, stock idioms included
        r["vs_framework_best"] = paired_ratio(r["epoch_seconds"], best["epoch_seconds"])  # >= 1: slower
        r["framework_best"] = best["cell"]


def _ok(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if "median_epoch_seconds" in r and all(r[k] == v for k, v in match.items())]


def _fastest(rows: list[dict]) -> dict | None:
    return min(rows, key=lambda r: r["median_epoch_seconds"]) if rows else None


def plain_mode(fw: str) -> str:
    """The framework's plain mode, the study's default."""
    return framework_modes([])[fw][0][0]


def plain_vs_numpy(rows: list[dict], batch: int, device: str = "cpu") -> list[dict]:
    """Each framework's plain mode against NumPy's, the study's "speed vs NumPy" as the bench measures
    it: per strategy at one batch size, paired round by round within NumPy's group (the main one).

    Returns [{framework, mode, strategy, speed, min, max, rounds}]: speed is the median over rounds
    of NumPy's epoch time over the framework's (> 1: faster than NumPy), min / max its range;
    NumPy itself and the frameworks of other groups (keras-jax, keras-torch) are left out."""
    where = {"group": MAIN, "batch": batch, "device": device}
    out = []
    for numpy in _ok(rows, framework="numpy", mode=plain_mode("numpy"), **where):
        for r in _ok(rows, strategy=numpy["strategy"], **where):
            if r["framework"] == "numpy" or r["mode"] != plain_mode(r["framework"]):
                continue
            ratios = round_ratios(numpy["epoch_seconds"], r["epoch_seconds"])
            out.append(
                {"framework": r["framework"], "mode": r["mode"], "strategy": r["strategy"]}
                | {"speed": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}
            )
    return out


# ----------------------------------------------------------------------------- what Keras costs


def keras_costs(rows: list[dict]) -> list[dict]:
    """Each Keras framework against its own backend's framework (KERAS_BACKENDS), per group, device,
    strategy and batch: {keras, backend, group, device, strategy, batch, plain, fastest, note}.

    plain: the Keras plain mode's epoch time over the backend's plain mode's; fastest: the Keras
    framework's fastest backend mode over the backend's fastest (by median; stock idioms left out,
    they run other code). Each {keras_mode, backend_mode, median, min, max, rounds}: the median and
    range of the per-round ratios, > 1: Keras is slower; None when a cell did not run. Both cells
    always come from one group: the one the Keras framework ran in."""
    out = []
    for keras, backend in KERAS_BACKENDS.items():
        shown = [r for r in rows if r["framework"] == keras and not (r["status"] == "skipped" and r["device"] != "cpu")]
        keys = dict.fromkeys((r["group"], r["device"], r["strategy"], r["batch"]) for r in shown)
        for group, device, strategy, batch in keys:  # in the order the cells ran
            where = {"group": group, "device": device, "strategy": strategy, "batch": batch}
            mine, theirs = (
                [r for r in _ok(rows, framework=fw, **where) if not is_stock(r["mode"])] for fw in (keras, backend)
            )
            entry = {"keras": keras, "backend": backend, **where, "plain": None, "fastest": None, "note": ""}
            if not mine or not theirs:
                ran = keras if not mine else backend
                entry["note"] = f"{ran} did not run in group {group}" if mine or theirs else "neither ran"
            else:
                plain = [_mode(mine, plain_mode(keras)), _mode(theirs, plain_mode(backend))]
                entry["plain"] = _paired(*plain) if all(plain) else None
                entry["fastest"] = _paired(_fastest(mine), _fastest(theirs))
            out.append(entry)
    return out


def _mode(rows: list[dict], mode: str) -> dict | None:
    return next((r for r in rows if r["mode"] == mode), None)


def _paired(mine: dict, theirs: dict) -> dict:
    """mine's epoch time over theirs, round by round: {keras_mode, backend_mode, median, min, max, rounds}."""
    ratios = round_ratios(mine["epoch_seconds"], theirs["epoch_seconds"])
    return {
        "keras_mode": mine["mode"],
        "backend_mode": theirs["mode"],
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "rounds": len(ratios),
    }


# ----------------------------------------------------------------------------- goals


def evaluate_goals(
    rows: list[dict], square_n: int = 2048, device: str = "cpu", matmul_ceiling: dict[int, float] | None = None
) -> list[dict]:
    """The project's goals, each {goal, met (True/False/None = not evaluated), detail}.

    NumPy goals judge NumPy's fastest mode. matmul_ceiling: {batch: fraction of the square
    peak that the MLP's own products reach with NumPy's BLAS}: no NumPy code can pass it.
    Each framework is judged on its cells of one group (home_rows).
    """
    rows = home_rows(rows)
    out = []
    for batch, need in sorted(GOAL_PEAK_FRACTION.items(), reverse=True):
        r = _fastest(_ok(rows, framework="numpy", strategy="parallel", batch=batch, device=device))
        frac = None if r is None else r["peak_fraction"]
        top = (matmul_ceiling or {}).get(batch)
        out.append(
            {
                "goal": f"NumPy parallel >= {need:.0%} of the {square_n}^2 sgemm peak at batch {batch}",
                "met": None if frac is None else frac >= need,
                "detail": "not measured"
                if frac is None
                else f"{frac:.1%} ({r['gflops']:.1f} GFLOP/s, {r['mode']})"
                + (
                    ""
                    if top is None
                    else f"; the step's products alone, at their own shapes, reach {top:.1%}"
                    f" ({frac / top:.0%} of that ceiling)"
                ),
            }
        )
    np64 = _fastest(_ok(rows, framework="numpy", strategy="parallel", batch=64, device=device))
    ratio = None if np64 is None else np64.get("vs_torch_eager")
    out.append(
        {
            "goal": f"NumPy >= {GOAL_NUMPY_OVER_TORCH_B64:g}x torch eager samples/s at batch 64 (parallel)",
            "met": None if ratio is None else ratio >= GOAL_NUMPY_OVER_TORCH_B64,
            "detail": "not measured" if ratio is None else f"{ratio:.2f}x ({np64['mode']})",
        }
    )
    for fw in framework_modes([]):
        seq = [r for r in _ok(rows, framework=fw, strategy="sequential", device=device) if "seq_over_par" in r]
        worst = max(seq, key=lambda r: r["seq_over_par"]) if seq else None
        out.append(
            {
                "goal": f"{fw}: sequential <= {GOAL_SEQ_OVER_PAR}x parallel (worst mode/batch)",
                "met": None if worst is None else worst["seq_over_par"] <= GOAL_SEQ_OVER_PAR,
                "detail": "not measured"
                if worst is None
                else f"{worst['seq_over_par']:.2f}x ({worst['mode']}, b{worst['batch']})",
            }
        )
    for fw in GOAL_FRAMEWORKS:
        out.append(_within_best(rows, fw, device, plain_only=False))
        out.append(_within_best(rows, fw, device, plain_only=True))
    return out + _numpy_at_xla(rows, device)


def _numpy_at_xla(rows: list[dict], device: str) -> list[dict]:
    """NumPy's fast path against TF XLA (paired, the two cells of one process) and its own floor."""
    out = []
    for batch, most in sorted(GOAL_NUMPY_OVER_XLA.items(), reverse=True):
        fast = _mode(_ok(rows, framework="numpy", strategy="parallel", batch=batch, device=device), "fast")
        xla = _mode(_ok(rows, framework="tensorflow", strategy="parallel", batch=batch, device=device), "jit")
        one_process = fast and xla and fast["group"] == xla["group"] and fast.get("epoch_seconds")
        r = _paired(fast, xla) if one_process else None
        out.append(
            {
                "goal": f"NumPy fast <= {most:g}x TF XLA's epoch at batch {batch} (parallel, paired)",
                "met": None if r is None else r["median"] <= most,
                "detail": "not measured (needs numpy-fast and tensorflow-jit in one process)"
                if r is None
                else f"{r['median']:.2f}x over {r['rounds']} rounds ({r['min']:.2f}-{r['max']:.2f}); "
                f"medians {fast['median_epoch_seconds']:.3f} s against {xla['median_epoch_seconds']:.3f} s",
            }
        )
    fast = _mode(_ok(rows, framework="numpy", strategy="parallel", batch=256, device=device), "fast")
    share = None if fast is None else fast.get("ceiling_fraction")  # the floor's share of the epoch
    out.append(
        {
            "goal": f"NumPy fast <= {GOAL_NUMPY_OVER_FLOOR_B256:g}x its own matmul floor at batch 256 (parallel)",
            "met": None if not share else 1 / share <= GOAL_NUMPY_OVER_FLOOR_B256,
            "detail": "not measured"
            if not share
            else f"{1 / share:.2f}x (epoch {fast['median_epoch_seconds']:.3f} s, "
            f"the step's products alone {fast['median_epoch_seconds'] * share:.3f} s)",
        }
    )
    return out


def home_rows(rows: list[dict]) -> list[dict]:
    """Each framework's rows of one group only: the first group, in the rows' order (main first),
    where it has a cell that ran. jax beside keras-jax is so never judged against jax in main."""
    home: dict[str, str] = {}
    for r in _ok(rows):
        home.setdefault(r["framework"], r["group"])
    return [r for r in rows if home.get(r["framework"]) == r["group"]]


def _within_best(rows: list[dict], fw: str, device: str, plain_only: bool) -> dict:
    """The backend's fastest mode (or its plain mode) over the fastest configuration of the
    framework (backend modes and stock idioms), parallel, worst batch. Medians."""
    plain = plain_mode(fw)
    worst = None  # (ratio, batch, backend mode, best configuration)
    for batch in sorted({r["batch"] for r in _ok(rows, framework=fw, device=device)}):
        peers = _ok(rows, framework=fw, strategy="parallel", batch=batch, device=device)
        mine = _fastest([r for r in peers if (r["mode"] == plain if plain_only else not is_stock(r["mode"]))])
        if mine is None or len(peers) < 2:
            continue
        best = _fastest(peers)
        ratio = mine["median_epoch_seconds"] / best["median_epoch_seconds"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, batch, mine["mode"], best["mode"])
    what = f"plain mode ({plain}, the study's default)" if plain_only else "backend's fastest mode"
    return {
        "goal": f"{fw}: {what} within {GOAL_WITHIN_BEST}x of the framework's fastest configuration",
        "met": None if worst is None else worst[0] <= GOAL_WITHIN_BEST,
        "detail": "not measured (needs two configurations)"
        if worst is None
        else f"worst {worst[0]:.2f}x: {worst[2]} against {worst[3]} (b{worst[1]}, parallel)",
    }


# ----------------------------------------------------------------------------- markdown


def _f(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f}"


def _header(result: dict) -> list[str]:
    d, m, env = result["data"], result["machine"], result["blas_env"]
    blas = "; ".join(
        " ".join(str(b[k]) for k in ("internal_api", "version", "architecture") if b[k])
        + f" ({b['file']}, {b['num_threads']} threads)"
        for b in result["blas"]
    )
    return [
        "# Backprop bench",
        "",
        f"MLP {'-'.join(map(str, result['sizes']))}, float32, {result['optimizer']}; data: {d['source']} "
        f"({d['n']} x {result['sizes'][0]}, {d['path'] or d.get('why', '')}); "
        f"{result['gflop_per_epoch']:.2f} GFLOP of needed matmul work per epoch; {result['rounds']} timed "
        f"round{'' if result['rounds'] == 1 else 's'} (one epoch of every cell of a process group each, "
        "interleaved) after one warm-up epoch. Cells: " + CELL_SET_NOTE.get(result.get("cell_set", "full"), "?") + ".",
        "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores. Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
        + ".",
        "",
        f"BLAS (architecture = the kernel that ran): {blas}.",
        "",
        f"OpenBLAS environment: in effect {env['in_effect']}, unset by the bench: "
        f"{env['unset_by_bench'] or 'nothing'}" + (" (--keep-blas-env)" if env["keep_blas_env"] else "") + ".",
    ]


def _peak_table(result: dict) -> list[str]:
    p, batches = result["peak"], result["batches"]
    header = ["library", f"{p['square_n']}^2", f"{p['square_n']}^2 after the rounds"]
    header += [f"MLP shapes b{b}" for b in batches]
    rows = [
        [lib["library"], f"{lib['square']['median']:.1f}", f"{lib['square_after']['median']:.1f}"]
        + [f"{lib[f'mlp_b{b}']:.1f}" for b in batches]
        for lib in p["libraries"]
    ]
    lines = [
        "",
        "## Matmul peak (float32, median GFLOP/s)",
        "",
        markdown_table(header, rows, align="l" + "r" * (len(header) - 1)),
    ]
    gflop = result["gflop_per_epoch"]
    floors = ", ".join(f"b{b} {gflop / c['gflops']:.3f} s ({c['library']})" for b, c in p["ceiling"].items())
    lines.append(f"\nMatmul floor of one epoch (its products alone, at the fastest rate above): {floors}.")
    return lines + [f"\n{note}" for note in p["notes"]]


def _cell_table(rows: list[dict]) -> list[str]:
    header = ["cell", "status", "first epoch s", "min s", "median s", "samples/s", "GFLOP/s", "% peak", "% ceiling"]
    header += ["x torch eager", "/ fw best", "seq/par"]
    cells = [
        [r["cell"], r["status"], _f(r["first_epoch_seconds"], ".3f")]
        + [_f(r.get("min_epoch_seconds"), ".3f"), _f(r.get("median_epoch_seconds"), ".3f")]
        + [_f(r.get("samples_per_second"), ",.0f"), _f(r.get("gflops"), ".1f")]
        + [_pct(r.get("peak_fraction")), _pct(r.get("ceiling_fraction"))]
        + [_f(r.get(k), ".2f") for k in ("vs_torch_eager", "vs_framework_best", "seq_over_par")]
        for r in rows
        if not (r["status"] == "skipped" and r["device"] != "cpu")  # those are summarised in the GPU section
    ]
    lines = ["", markdown_table(header, cells, align="ll" + "r" * (len(header) - 2))]
    problems = [r for r in rows if r["status"] == "failed" or (r["status"] == "skipped" and r["device"] == "cpu")]
    if problems:
        lines += ["", "Cells that did not run:", ""] + [f"- {r['cell']}: {r['reason']}" for r in problems]
    return lines


def _cell_tables(result: dict) -> list[str]:
    """One table per process group that has cells; the group's own ratios only."""
    lines = ["", "## Cells (epoch = one pass over the train set)"]
    groups = [g for g in result["groups"] if any(r["group"] == g["group"] for r in result["cells"])]
    for g in groups:
        if len(groups) > 1:
            lines += ["", f"### Group {g['group']}: {', '.join(g['frameworks'])} ({_process(g)})"]
        lines += _cell_table([r for r in result["cells"] if r["group"] == g["group"]])
    return lines


def _process(group: dict) -> str:
    return "the bench's own process" if group["group"] == MAIN else "a child process of its own"


def _groups_section(result: dict) -> list[str]:
    """The process groups, when the bench ran more than its own process; a failed one with its error."""
    groups = result["groups"]
    if [g["group"] for g in groups] in ([], [MAIN]):
        return []
    lines = [
        "",
        "## Process groups",
        "",
        "Keras runs on one backend per process, so each Keras framework on another backend than "
        "TensorFlow runs in a child bench of its own, beside its backend's framework (docs/benchmark.md). "
        "Rounds are interleaved within a group; no ratio pairs cells of two groups.",
        "",
    ]
    for g in groups:
        state = f"{g['rounds']} round(s)" if g["ran"] else "not run (the bench was interrupted before it)"
        state = state if g["error"] is None else "**FAILED**"
        lines.append(f"- {g['group']} ({_process(g)}): {', '.join(g['frameworks'])}: {state}")
        if g["error"] is not None:
            lines += ["", "  ```", *(f"  {line}" for line in g["error"].splitlines()), "  ```"]
    return lines


def _ratio(entry: dict | None) -> list[str]:
    """[modes, median (min-max)] of one keras_costs ratio."""
    if entry is None:
        return ["", ""]
    spread = f"{entry['median']:.2f} ({entry['min']:.2f}-{entry['max']:.2f})"
    return [f"{entry['keras_mode']} / {entry['backend_mode']}", spread]


def _keras_section(result: dict) -> list[str]:
    costs = result["keras_costs"]
    lines = ["", "## What Keras costs over its own backend", ""]
    if not costs:
        return lines + ["No Keras framework benched."]
    header = ["Keras", "over", "group", "device", "strategy", "batch", "plain modes", "plain ratio"]
    header += ["fastest modes", "fastest ratio", "note"]
    table = [
        [c["keras"], c["backend"], c["group"], c["device"], c["strategy"], str(c["batch"])]
        + _ratio(c["plain"])
        + _ratio(c["fastest"])
        + [c["note"]]
        for c in costs
    ]
    lines.append(markdown_table(header, table, align="llllll" + "lr" * 2 + "l"))
    return lines + [
        "",
        "The Keras framework's epoch time over its backend's own framework's, both in the same process "
        "group (one process, the same interleaved rounds), device, strategy and batch; > 1: Keras is slower. "
        "The same arithmetic runs in both (docs/backends.md): the difference is Keras's loop, layers and "
        "variables. Median over rounds of the per-round ratio (min-max over rounds in brackets). plain: "
        "each one's plain mode; fastest: each one's fastest mode by median, stock idioms left out.",
    ]


LEGEND = (
    "How to read it (docs/benchmark.md): % peak = GFLOP/s over NumPy's {n}^2 sgemm median; % ceiling = "
    "GFLOP/s over the MLP's own products timed alone (the matmul floor). x torch eager = torch eager's "
    "epoch time over this cell's (> 1: faster); / fw best = this cell's time over its framework's fastest "
    "cell at that batch ({stock}-* idioms included; 1.00 = it is the fastest); seq/par = sequential over "
    "parallel, same mode and batch. All three ratios are paired: the median over rounds of the ratio of "
    "the two epochs run in the same round. Plain modes (the study's defaults): {plain}. {stock}-* cells "
    "are each framework's own idiom (bench/stock.py), parallel only. numpy-fast is the preallocated-buffer "
    "path, the cell that reports named numpy-plain before the plain/fast split; numpy-plain is now the "
    "readable path."
)


def markdown(result: dict) -> str:
    """The whole report as markdown (what bench.md holds and the bench prints)."""
    lines = _header(result) + _groups_section(result) + _peak_table(result) + _cell_tables(result)
    if result.get("phases") is not None:  # None: --no-phases
        lines += phases.markdown(result["phases"], result.get("phases_plot"))
    lines += _keras_section(result)
    if result.get("baseline"):
        lines += baseline.markdown(result["baseline"])
    lines += ["", "## GPU", "", result["gpu_note"], "", "## The project's goals (docs/benchmark.md)", ""]
    mark = {True: "met", False: "MISSED", None: "not evaluated"}
    lines += [f"- {g['goal']}: **{mark[g['met']]}** — {g['detail']}" for g in result["goals"]]
    plain = ", ".join(f"{fw} {modes[0][0]}" for fw, modes in framework_modes([]).items())
    lines += ["", LEGEND.format(n=result["peak"]["square_n"], stock=STOCK, plain=plain)]
    if result["rounds"] < result["rounds_requested"]:
        lines.append(
            f"\nInterrupted: {result['rounds']} of {result['rounds_requested']} rounds done "
            "(a cell may hold one more epoch than the complete rounds)."
        )
    if result["rounds"] < 3:
        lines.append(f"\nOnly {result['rounds']} timed round(s): the timing rules ask for at least 3.")
    return "\n".join(lines) + "\n"


def gpu_note(rows: list[dict], devices: list[str]) -> str:
    """One line on the GPU cells: not requested, how many ran, or why none did."""
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
