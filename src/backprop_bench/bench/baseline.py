"""--baseline: this bench's epoch times against an earlier bench.json's, cell by cell.

A cell is matched by its name and process group. Rounds of two runs are not paired (they ran
hours apart), so the interval is the unpaired min-max one: every ratio of one of this run's
epochs to one of the baseline's lies in [min this / max baseline, max this / min baseline].
The ratio itself is the ratio of the two medians. Above 1 this run is slower.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from backprop_bench.report.tables import markdown_table

TOLERANCE = 0.05  # a change within 5 % is never flagged, however tight the interval
SLOWER, FASTER, SAME = "slower", "faster", "same within noise"


def load(path: Path) -> dict:
    """An earlier bench.json, or SystemExit naming --baseline and what was expected."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"--baseline {path}: expected a bench.json written by the bench ({err})") from err
    if not isinstance(result, dict) or not isinstance(result.get("cells"), list):
        raise SystemExit(f"--baseline {path}: expected a bench.json written by the bench (no 'cells' list)")
    return result


def _timed(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    """{(cell name, group): its epoch seconds} of the cells that have any (older files: group main)."""
    return {(r["cell"], r.get("group", "main")): r["epoch_seconds"] for r in rows if r.get("epoch_seconds")}


def ratio(mine: list[float], theirs: list[float], tolerance: float = TOLERANCE) -> dict:
    """mine's epoch time over theirs: {ratio (of medians), low, high (the min-max interval), verdict}."""
    low, high = min(mine) / max(theirs), max(mine) / min(theirs)
    verdict = SLOWER if low > 1 + tolerance else FASTER if high < 1 - tolerance else SAME
    return {
        "ratio": statistics.median(mine) / statistics.median(theirs),
        "low": low,
        "high": high,
        "verdict": verdict,
        "rounds": [len(mine), len(theirs)],
    }


def compare(result: dict, baseline: dict, path: str, tolerance: float = TOLERANCE) -> dict:
    """bench.json's "baseline": each cell timed in both runs with its ratio, and the cells timed in only one."""
    here, there = _timed(result["cells"]), _timed(baseline["cells"])
    cells = [{"cell": c, "group": g} | ratio(here[c, g], there[c, g], tolerance) for c, g in here if (c, g) in there]
    return {
        "path": path,
        "command": baseline.get("command"),
        "tolerance": tolerance,
        "interval": "min-max over rounds, unpaired: [min this / max baseline, max this / min baseline]",
        "cells": cells,
        "only_here": [{"cell": c, "group": g} for c, g in here if (c, g) not in there],
        "only_baseline": [{"cell": c, "group": g} for c, g in there if (c, g) not in here],
        "machine": {"here": machine_speed(result), "baseline": machine_speed(baseline)},
    }


def machine_speed(result: dict) -> list[float] | None:
    """NumPy's square-sgemm median GFLOP/s before and after the rounds (peak.py), or None (no peak).

    The min-max interval holds each run's round-to-round noise, not a change of the whole machine
    between the runs (another job started): these two figures show that one."""
    numpy = next((lib for lib in (result.get("peak") or {}).get("libraries", []) if lib["library"] == "numpy"), None)
    if numpy is None:
        return None
    return [numpy["square"]["median"], numpy.get("square_after", numpy["square"])["median"]]


def markdown(comparison: dict) -> list[str]:
    """The report's section "Against the baseline"."""
    tol = comparison["tolerance"]
    lines = [
        "",
        f"## Against the baseline ({comparison['path']})",
        "",
        f"Baseline command: `{comparison['command']}`. Ratio: this run's median epoch time over the "
        "baseline's (above 1: slower now), with the unpaired min-max interval over rounds (every "
        f"ratio of one epoch here to one there lies in it). Flagged when the whole interval is above "
        f"{1 + tol:.2f} (slower) or below {1 - tol:.2f} (faster), else same within noise.",
        "",
    ]
    rows = [
        [c["cell"], c["group"], f"{c['ratio']:.2f}", f"{c['low']:.2f}-{c['high']:.2f}", _verdict(c["verdict"])]
        for c in comparison["cells"]
    ]
    lines.append(markdown_table(["cell", "group", "ratio", "interval", "verdict"], rows, align="llrll"))
    here, there = comparison["machine"]["here"], comparison["machine"]["baseline"]
    if here and there:
        lines += [
            "",
            f"The machine: NumPy's square sgemm ran at {here[0]:.1f} / {here[1]:.1f} GFLOP/s (before / after "
            f"the rounds) here, {there[0]:.1f} / {there[1]:.1f} in the baseline. Verdicts that merely follow "
            "a change there are the machine's, not the code's.",
        ]
    for key, where in (("only_here", "Timed in this run only"), ("only_baseline", "Timed in the baseline only")):
        if comparison[key]:
            lines += ["", f"{where}: " + ", ".join(f"{c['cell']} ({c['group']})" for c in comparison[key]) + "."]
    return lines


def _verdict(verdict: str) -> str:
    return verdict if verdict == SAME else f"**{verdict}**"
