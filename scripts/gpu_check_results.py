"""gpu-check's last look at its results (scripts/gpu_check.sh); reads files, imports no framework.

    python scripts/gpu_check_results.py FOLDER WORK DEVICE

Prints "INFO ..." lines (test counts, bench cells) and one "FAIL ..." line per study row
that did not finish every seed, per bench cell on DEVICE that did not run, and when on cuda
every GPU test skipped.
"""

from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_lines(path: Path, device: str) -> list[str]:
    """Its counts; on cuda a FAIL line when every GPU test skipped (none of them saw the GPU)."""
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    lines = [
        f"INFO {path.name}: {n['tests']} tests, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"
    ]
    if device == "cuda" and path.name == "junit-gpu.xml" and n["skipped"] == n["tests"]:
        lines.append(f"FAIL tests-gpu: all {n['tests']} GPU tests skipped on a machine with a GPU")
    return lines


def study_failures(comparison_csv: Path) -> list[str]:
    keys = ("framework", "strategy", "device", "mode")
    rows = csv.DictReader(comparison_csv.open())
    return [
        f"study {'-'.join(r[k] for k in keys)}: {r['status']} {r['note']}".rstrip()
        for r in rows
        if r["status"] != "finished"
    ]


def bench_lines(bench_json: Path, device: str) -> list[str]:
    cells = [c for c in json.loads(bench_json.read_text())["cells"] if c["device"] == device]
    bad = [c for c in cells if c["status"] != "ok"]
    lines = [f"INFO bench: {len(cells) - len(bad)} of {len(cells)} {device} cells ran"]
    return lines + [f"FAIL bench {c['cell']}: {c['status']}: {c.get('reason', '')}" for c in bad]


def main(out: Path, work: Path, device: str) -> int:
    for name in ("junit-gpu.xml", "junit-cuda.xml"):
        if (out / name).is_file():
            print(*junit_lines(out / name, device), sep="\n")
    if (work / "reports" / "comparison.csv").is_file():
        for line in study_failures(work / "reports" / "comparison.csv"):
            print("FAIL", line)
    if (out / "bench.json").is_file():
        print(*bench_lines(out / "bench.json", device), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
