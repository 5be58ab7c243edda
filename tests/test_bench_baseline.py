"""bench/baseline.py: --baseline on constructed bench.json pairs, and through the bench.

.venv/bin/python -m pytest tests/test_bench_baseline.py -x -q
"""

from __future__ import annotations

import json

import pytest

from backprop_bench.bench import __main__ as bench
from backprop_bench.bench import baseline as B


def _result(cells: dict[tuple[str, str], list[float]], command: str = "python -m backprop_bench.bench") -> dict:
    """A bench.json holding only what the comparison reads."""
    rows = [{"cell": c, "group": g, "status": "ok", "epoch_seconds": s} for (c, g), s in cells.items()]
    return {"command": command, "cells": rows}


NOISY = [0.50, 0.56, 0.47, 0.53, 0.51]  # +-10 % round to round, as on the shared machine


def test_a_constructed_slowdown_is_flagged_and_noise_is_not():
    base = _result({("a", "main"): NOISY, ("b", "main"): NOISY, ("c", "main"): NOISY})
    now = _result(
        {
            ("a", "main"): [1.3 * s for s in NOISY],  # 30 % slower, every round
            ("b", "main"): [0.53, 0.49, 0.55, 0.50, 0.48],  # the same code, other noise
            ("c", "main"): [0.7 * s for s in NOISY],
        }
    )
    got = {c["cell"]: c for c in B.compare(now, base, "old.json")["cells"]}
    assert got["a"]["verdict"] == "slower" and got["a"]["ratio"] == pytest.approx(1.3)
    assert got["a"]["low"] == pytest.approx(1.3 * 0.47 / 0.56) and got["a"]["low"] > 1.05
    assert got["b"]["verdict"] == "same within noise" and got["b"]["low"] < 1 < got["b"]["high"]
    assert got["c"]["verdict"] == "faster" and got["c"]["high"] < 0.95
    assert got["a"]["rounds"] == [5, 5]


def test_a_small_change_within_the_tolerance_is_never_flagged():
    got = B.ratio([1.03, 1.03], [1.0, 1.0])
    assert got["low"] == pytest.approx(1.03) and got["verdict"] == "same within noise"
    assert B.ratio([1.03, 1.03], [1.0, 1.0], tolerance=0.01)["verdict"] == "slower"


def test_cells_in_one_side_only_are_listed_and_groups_are_never_mixed():
    base = _result({("jax-step-jit-parallel-b64-cpu", "main"): [1.0], ("gone", "main"): [1.0]})
    now = _result({("jax-step-jit-parallel-b64-cpu", "keras-jax"): [1.0], ("new", "main"): [1.0]})
    base["cells"].append({"cell": "failed-before", "group": "main", "status": "failed", "epoch_seconds": []})
    got = B.compare(now, base, "old.json")
    assert got["cells"] == []
    assert got["only_here"] == [
        {"cell": "jax-step-jit-parallel-b64-cpu", "group": "keras-jax"},
        {"cell": "new", "group": "main"},
    ]
    assert got["only_baseline"] == [
        {"cell": "jax-step-jit-parallel-b64-cpu", "group": "main"},
        {"cell": "gone", "group": "main"},
    ]
    md = "\n".join(B.markdown(got))
    assert "Timed in this run only: jax-step-jit-parallel-b64-cpu (keras-jax), new (main)." in md
    assert "Timed in the baseline only: jax-step-jit-parallel-b64-cpu (main), gone (main)." in md


def test_an_older_file_without_groups_counts_as_the_main_group():
    base = {"cells": [{"cell": "a", "status": "ok", "epoch_seconds": [1.0]}]}
    got = B.compare(_result({("a", "main"): [2.0]}), base, "old.json")
    assert [c["verdict"] for c in got["cells"]] == ["slower"] and got["command"] is None


@pytest.mark.parametrize("text", ["not json", '{"rounds": 3}', "[1, 2]"])
def test_a_file_that_is_no_bench_json_names_the_option(tmp_path, text):
    path = tmp_path / "bench.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match="--baseline .*bench.json"):
        bench.parse_args(["--baseline", str(path)])
    with pytest.raises(SystemExit, match="--baseline"):
        bench.parse_args(["--baseline", str(tmp_path / "missing.json")])


def test_the_bench_compares_itself_with_a_baseline_in_bench_json_and_bench_md(tmp_path):
    tiny = ["--data", "synthetic", "--samples", "256", "--rounds", "1", "--batches", "64", "--devices", "cpu"]
    tiny += ["--frameworks", "numpy", "--peak-size", "64", "--peak-repeats", "1", "--peak-seconds", "0.001"]
    tiny += ["--keep-blas-env", "--no-tracking", "--strategies", "parallel"]
    assert bench.main(tiny + ["--out-dir", str(tmp_path / "old")]) == 0
    old = json.loads((tmp_path / "old" / "bench.json").read_text())
    for row in old["cells"]:  # the baseline 100x as fast (ms epochs vary 2x run to run): flagged slower
        row["epoch_seconds"] = [s / 100 for s in row["epoch_seconds"]]
    old["cells"].append(old["cells"][0] | {"cell": "numpy-gone-parallel-b64-cpu"})
    (tmp_path / "old.json").write_text(json.dumps(old))

    assert bench.main(tiny + ["--out-dir", str(tmp_path / "new"), "--baseline", str(tmp_path / "old.json")]) == 0
    result = json.loads((tmp_path / "new" / "bench.json").read_text())
    got = result["baseline"]
    assert {c["cell"] for c in got["cells"]} == {"numpy-plain-parallel-b64-cpu", "numpy-fast-parallel-b64-cpu"}
    assert {c["verdict"] for c in got["cells"]} == {"slower"}
    assert got["only_baseline"] == [{"cell": "numpy-gone-parallel-b64-cpu", "group": "main"}]
    md = (tmp_path / "new" / "bench.md").read_text()
    assert f"## Against the baseline ({tmp_path / 'old.json'})" in md and "**slower**" in md
    peaks = [lib for lib in result["peak"]["libraries"] if lib["library"] == "numpy"][0]
    assert got["machine"]["here"] == [peaks["square"]["median"], peaks["square_after"]["median"]]
    assert got["machine"]["baseline"] == B.machine_speed(old) and "NumPy's square sgemm ran at" in md


def test_without_peaks_the_machine_line_is_left_out():
    got = B.compare(_result({("a", "main"): [1.0]}), _result({("a", "main"): [1.0]}), "old.json")
    assert got["machine"] == {"here": None, "baseline": None}
    assert "square sgemm" not in "\n".join(B.markdown(got))
