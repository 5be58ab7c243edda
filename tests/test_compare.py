"""The compare stage on a fake-but-valid study built in a temp dir (no training, no network).

The study: numpy and torch x sequential and parallel x controlled and native x seeds 0-2 on
cpu, each run written as study.py's runs write it (docs/architecture.md, "A study cell"). Their
validation accuracy reaches the target (TARGET) at epoch 1, 2 or 3, or never (val_accuracies).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from backprop_bench import compare
from backprop_bench.core.checks import ParamsError
from backprop_bench.core.files import write_npy
from backprop_bench.report import stats
from backprop_bench.results.grid import read_study_params
from backprop_bench.results.metrics import EpochStats, RunMetrics, write_history, write_metrics

ROOT = Path(__file__).resolve().parents[1]
N_TEST, SEEDS, TARGET = 12, 3, 0.88
FRAMEWORKS, STRATEGIES, MODES = ("numpy", "torch"), ("sequential", "parallel"), ("controlled", "native")
Y_TEST = np.arange(N_TEST) % 10
# Native mode's wrong test rows per (framework, strategy, seed); every other prediction is right.
WRONG = {("torch", "parallel", 0): [3, 7], ("torch", "parallel", 1): [3], ("numpy", "sequential", 0): [5]}


def accuracy(framework: str, strategy: str, mode: str, seed: int) -> float:
    return 0.90 + 0.01 * (framework == "torch") + 0.004 * (mode == "native") + 0.001 * seed**2


def final_loss(framework: str, strategy: str, mode: str, seed: int) -> float:
    parallel = 0.40 + 0.01 * seed + 0.005 * (framework == "torch")
    return parallel + (0.02 + 0.002 * seed if strategy == "sequential" else 0.0)  # sequential above, every seed


def samples_per_second(framework: str, strategy: str, mode: str, seed: int) -> float:
    base = {("numpy", "sequential"): 2000, ("numpy", "parallel"): 2500, ("torch", "sequential"): 1000}
    return base.get((framework, strategy), 500) + 10.0 * seed + 3.0 * seed**2


def val_accuracies(framework: str, strategy: str, mode: str, seed: int) -> tuple[float, float, float]:
    """Per epoch: TARGET reached at epoch 2 (seeds 0, 1) or 3 (seed 2); at epoch 1 by numpy parallel
    controlled seed 1; never by torch native sequential, nor by its parallel seed 0."""
    if (framework, mode) == ("torch", "native") and (strategy == "sequential" or seed == 0):
        return (0.70, 0.80, 0.85)
    if (framework, strategy, mode, seed) == ("numpy", "parallel", "controlled", 1):
        return (0.90, 0.90, 0.91)
    return (0.80, 0.88, 0.89) if seed < 2 else (0.80, 0.87, 0.90)


def epoch_seconds(seed: int) -> tuple[float, float, float]:
    return (1.5, 0.75 + 0.01 * seed, 0.75 + 0.01 * seed)  # the first epoch compiles


def run_folder(runs: Path, framework: str, strategy: str, mode: str, seed: int, device: str = "cpu") -> Path:
    return runs / f"{framework}-{device}" / f"{strategy}-{mode}-s{seed}"


def write_run(runs: Path, framework: str, strategy: str, mode: str, seed: int, device: str = "cpu", **status) -> Path:
    """One run folder: metrics.json, history.csv, predictions.npy (skipped: metrics.json alone)."""
    folder = run_folder(runs, framework, strategy, mode, seed, device)
    cell = dict(cell=f"{framework}-{strategy}-{device}", framework=framework, strategy=strategy, device=device)
    if status:
        write_metrics(folder / "metrics.json", RunMetrics(**cell, mode=mode, seed=seed, **status))
        return folder
    loss, sps = final_loss(framework, strategy, mode, seed), samples_per_second(framework, strategy, mode, seed)
    metrics = RunMetrics(
        **cell,
        status="finished",
        mode=mode,
        seed=seed,
        test_accuracy=accuracy(framework, strategy, mode, seed),
        test_loss=0.3,
        train_seconds=3.0,
        first_epoch_seconds=1.5,
        steady_epoch_seconds=0.75 + 0.01 * seed,
        samples_per_second=sps,
        peak_memory_mb=100.0,
        final_train_loss=loss,
        n_train=1000,
        epochs=3,
        batch_size=64,
        dtype="float32",
    )
    write_metrics(folder / "metrics.json", metrics)
    epochs = zip((1.0 + 0.1 * seed, 0.7, loss), val_accuracies(framework, strategy, mode, seed), epoch_seconds(seed))
    write_history(
        folder / "history.csv",
        [EpochStats(e, x, 0.8, x + 0.1, a, t, sps, 0.01) for e, (x, a, t) in enumerate(epochs, 1)],
    )
    predictions = Y_TEST.copy()
    wrong = WRONG.get((framework, strategy, seed), []) if mode == "native" else []
    predictions[wrong] = (predictions[wrong] + 1) % 10
    write_npy(folder / "predictions.npy", predictions.astype(np.int64))
    return folder


def write_params(path: Path, frameworks=FRAMEWORKS, devices=("cpu",), modes=MODES, seeds=SEEDS, target=TARGET) -> Path:
    path.write_text(
        f"train:\n  epochs: 3\n  batch_size: 64\nstudy:\n  frameworks: {list(frameworks)}\n"
        f"  strategies: {list(STRATEGIES)}\n  devices: {list(devices)}\n  modes: {list(modes)}\n  seeds: {seeds}\n"
        f"compare:\n  target_accuracy: {target!r}\n"
    )
    return path


@pytest.fixture
def study(tmp_path):
    runs = tmp_path / "runs"
    for f in FRAMEWORKS:
        for s in STRATEGIES:
            for m in MODES:
                for seed in range(SEEDS):
                    write_run(runs, f, s, m, seed)
    data = tmp_path / "mnist.npz"
    x_test = np.random.default_rng(0).random((N_TEST, 784), dtype=np.float32)
    np.savez(data, x_test=x_test, y_test=Y_TEST.astype(np.int64))
    return runs, data, tmp_path / "reports", write_params(tmp_path / "params.yaml")


def run_compare(study, params: Path | None = None) -> str:
    runs, data, reports, default = study
    params = params or default
    return compare.compare(runs, reports, data, read_study_params(params), compare.read_target_accuracy(params))[0]


def read_csv_rows(path: Path) -> dict[tuple, dict]:
    with open(path, newline="") as f:
        return {(r["framework"], r["strategy"], r["device"], r["mode"]): r for r in csv.DictReader(f)}


def values(fn, framework: str, strategy: str, mode: str) -> list[float]:
    return [fn(framework, strategy, mode, seed) for seed in range(SEEDS)]


def test_table_rows_hold_the_intervals_over_seeds(study):
    report = run_compare(study)
    rows = read_csv_rows(study[2] / "comparison.csv")
    # controlled block, then native; in each, params.yaml's framework order, sequential first
    assert list(rows) == [(f, s, "cpu", m) for m in MODES for f in FRAMEWORKS for s in STRATEGIES]
    for (f, s, _, m), row in rows.items():
        assert (row["status"], row["n_finished"], row["n_seeds"], row["note"]) == ("finished", "3", "3", "")
        for key, fn in (("test_accuracy", accuracy), ("final_train_loss", final_loss)):
            expected = stats.mean_interval(values(fn, f, s, m))
            assert float(row[key]) == pytest.approx(expected.mean, rel=1e-12)
            assert float(row[f"{key}_hw"]) == pytest.approx(expected.half_width, rel=1e-12)
        sps = stats.mean_interval(values(samples_per_second, f, s, m))
        assert float(row["samples_per_second_hw"]) == pytest.approx(sps.half_width, rel=1e-12)
        numpy_sps = np.mean(values(samples_per_second, "numpy", s, m))
        assert float(row["speed_vs_numpy"]) == pytest.approx(sps.mean / numpy_sps, rel=1e-12)
    acc = stats.mean_interval(values(accuracy, "torch", "parallel", "native"))
    sps = stats.mean_interval(values(samples_per_second, "torch", "parallel", "native"))
    speed = sps.mean / np.mean(values(samples_per_second, "numpy", "parallel", "native"))
    line = f"| torch | parallel | cpu | native | 3/3 | {100 * acc.mean:.2f} ± {100 * acc.half_width:.2f} % |"
    assert line in report
    assert f"| {sps.mean:,.0f} ± {sps.half_width:,.0f} | {speed:.2f}× |" in report


def test_the_report_says_how_many_threads_the_frameworks_had(study):
    assert "times are the training loop only, each framework on 1 CPU thread (study.threads: 1)." in run_compare(study)
    assert compare.threads_note(2) == "2 CPU threads (study.threads: 2)"
    assert compare.threads_note(0) == "its default number of CPU threads (study.threads: 0)"


def test_paired_section_tests_sequential_minus_parallel_by_seed(study):
    report = run_compare(study)
    section = report.split("## sequential − parallel, paired by seed")[1].split("##")[0]
    for f in FRAMEWORKS:
        for m in MODES:
            t = stats.paired_test(values(final_loss, f, "sequential", m), values(final_loss, f, "parallel", m))
            assert t.p_value == 0.25 and t.verdict.startswith("not distinguishable from zero at 3 seeds")
            low, high = t.interval.low, t.interval.high
            line = f"| {f} | cpu | {m} | final train loss | 3 | {t.mean_diff:+.4f} | [{low:+.4f}, {high:+.4f}] | 0.25 |"
            assert line + f" {t.verdict} |" in section
    # the same strategy's accuracy in both: every difference is zero
    assert "| numpy | cpu | controlled | test accuracy (pp) | 3 | +0.00 | [+0.00, +0.00] | 1 |" in section
    assert "every difference is zero" in section


def test_summary_json_is_small_and_numeric(study):
    run_compare(study)
    summary = json.loads((study[2] / "summary.json").read_text())
    # 3 + one per framework (7 in the default study): a glance that keeps dvc exp show narrow
    assert summary.keys() == {"acc", "x"}
    assert list(summary["acc"]) == ["seq", "par", "hw"]
    assert list(summary["x"]) == [compare.SHORT[f] for f in FRAMEWORKS if f != "numpy"]
    leaves = [v for group in summary.values() for v in group.values()]
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves)
    widths = []
    for s, short in (("sequential", "seq"), ("parallel", "par")):
        # per seed the mean over frameworks (controlled mode: equal by construction), then over seeds
        per_seed = [np.mean([accuracy(f, s, "controlled", i) for f in FRAMEWORKS]) for i in range(SEEDS)]
        acc = stats.mean_interval(per_seed)
        assert summary["acc"][short] == round(acc.mean, 4)
        widths.append(acc.half_width)
    assert summary["acc"]["hw"] == round(max(widths), 4)
    for f, short in ((f, compare.SHORT[f]) for f in FRAMEWORKS if f != "numpy"):
        ratios = [
            np.mean(values(samples_per_second, f, s, "controlled"))
            / np.mean(values(samples_per_second, "numpy", s, "controlled"))
            for s in STRATEGIES
        ]
        assert summary["x"][short] == round(np.mean(ratios), 2)  # times NumPy's speed, 2 decimals
    # what dvc exp show makes of it: a column per number, as wide as its name or its value
    columns = [max(len(f"{g}.{k}"), len(str(v))) + 3 for g, group in summary.items() for k, v in group.items()]
    assert sum(columns) <= 67, columns  # 160 minus Experiment, Created, train.epochs and the runs hash (93)


def test_four_significant_digits():
    assert compare._sig(0.9103333) == 0.9103 and compare._sig(0.0021345) == 0.002135
    assert compare._sig(136314.2) == 136300 and isinstance(compare._sig(136314.2), int)
    assert compare._sig(0.0) == 0.0 and compare._sig(-12.3456) == -12.35


def test_a_missing_run_is_reported_not_fatal(study, tmp_path):
    runs = study[0]
    shutil.rmtree(run_folder(runs, "torch", "parallel", "native", 2))  # its stage has not run
    params = write_params(tmp_path / "more.yaml", frameworks=("numpy", "torch", "keras"))  # keras: nothing ran
    report = run_compare(study, params)
    rows = read_csv_rows(study[2] / "comparison.csv")
    partial = rows[("torch", "parallel", "cpu", "native")]
    assert (partial["status"], partial["n_finished"]) == ("incomplete", "2")
    assert partial["note"] == "seed 2 missing: no metrics.json: not run yet, or the run failed (see its stage's log)"
    acc = stats.mean_interval(values(accuracy, "torch", "parallel", "native")[:2])
    assert float(partial["test_accuracy_hw"]) == pytest.approx(acc.half_width)
    keras = rows[("keras", "sequential", "cpu", "controlled")]
    assert (keras["status"], keras["n_finished"], keras["test_accuracy"], keras["speed_vs_numpy"]) == (
        "missing",
        "0",
        "",
        "",
    )
    assert "| keras | sequential | cpu | controlled | 0/3 | – | – | – | – | – |" in report
    assert "36 runs: 23 finished, 13 missing" in report
    seed1 = "they disagree on 1 of 12 test digits; right on those: numpy 1, torch 0 (not finished: keras)"
    assert f"- parallel, cpu, seed 1: {seed1}" in report
    assert "- parallel, cpu, seed 2: fewer than two frameworks finished" in report  # numpy alone
    # torch native pairs the two seeds both strategies finished
    assert "| torch | cpu | native | final train loss | 2 |" in report
    assert (
        "| keras | cpu | controlled | final train loss | 0 | – | – | – | no seed finished under both strategies |"
        in report
    )
    assert list(json.loads((study[2] / "summary.json").read_text())["x"]) == ["pt"]  # keras: nothing ran


def test_a_skipped_run_is_listed_with_its_reason(study, tmp_path):
    runs = study[0]
    for s in STRATEGIES:
        for seed in range(SEEDS):
            write_run(
                runs, "torch", s, "controlled", seed, device="cuda", status="skipped", reason="no CUDA device here"
            )
    params = write_params(tmp_path / "gpu.yaml", frameworks=("torch",), devices=("cpu", "cuda"), modes=("controlled",))
    report = run_compare(study, params)
    row = read_csv_rows(study[2] / "comparison.csv")[("torch", "parallel", "cuda", "controlled")]
    assert (row["status"], row["note"]) == ("skipped", "seed 0, 1, 2 skipped: no CUDA device here")
    assert "| torch | parallel | cuda | controlled | 0/3 |" in report
    assert "Native mode is not in this study" in report
    assert "x" not in json.loads((study[2] / "summary.json").read_text())  # no NumPy here: no ratios to it


def test_native_spread_and_disagreements(study):
    report = run_compare(study)
    section = report.split("## Native mode: do frameworks differ?")[1]
    for s in STRATEGIES:
        groups = {f: [100 * a for a in values(accuracy, f, s, "native")] for f in FRAMEWORKS}
        assert f"- {s}, cpu: {stats.spread(groups).describe()}" in section
    assert "- parallel, cpu, seed 0: they disagree on 2 of 12 test digits; right on those: numpy 2, torch 0" in section
    assert "- parallel, cpu, seed 1: they disagree on 1 of 12 test digits; right on those: numpy 1, torch 0" in section
    assert "- parallel, cpu, seed 2: they disagree on 0 of 12 test digits\n" in section
    assert (
        "- sequential, cpu, seed 0: they disagree on 1 of 12 test digits; right on those: numpy 0, torch 1" in section
    )
    # pooled agreement, parallel: (10 + 11 + 12) / 36 test digits
    parallel = section.split("parallel, cpu, seeds pooled:")[1]
    assert "| numpy | 100.0 % | 91.7 % |" in parallel and "| torch | 91.7 % | 100.0 % |" in parallel
    assert "same label on 72 of 72 test digits" in section  # controlled: 2 strategies x 3 seeds x 12


def test_agreement_matrix_on_constructed_predictions():
    y = np.array([0, 1, 2, 3])
    seed0 = {"a": y, "b": np.array([0, 1, 2, 0]), "c": np.array([1, 1, 2, 0])}
    seed1 = {"a": y, "b": y}  # c did not finish this seed
    share = compare.agreement_matrix([seed0, seed1], ["a", "b", "c", "d"])
    assert share[:3, :3] == pytest.approx(np.array([[1, 7 / 8, 2 / 4], [7 / 8, 1, 3 / 4], [2 / 4, 3 / 4, 1]]))
    assert np.isnan(share[3]).all() and np.isnan(share[:, 3]).all()  # d never finished
    assert list(compare.find_disagreements(seed0)) == [0, 3]


def test_a_one_epoch_run_has_no_steady_epoch_time(study):
    runs, data, reports, params = study
    for seed in range(SEEDS):
        path = run_folder(runs, "numpy", "sequential", "controlled", seed) / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["steady_epoch_seconds"] = None  # what train.py writes after a single epoch
        path.write_text(json.dumps(metrics))
    run_compare(study)
    row = read_csv_rows(reports / "comparison.csv")[("numpy", "sequential", "cpu", "controlled")]
    assert row["steady_epoch_seconds"] == row["steady_epoch_seconds_hw"] == "" and row["samples_per_second"] != ""
    metrics["train_seconds"] = None  # but only that one may be null
    path.write_text(json.dumps(metrics))
    with pytest.raises(compare.ReportError, match=r"s2/metrics.json: key 'train_seconds' is None, expected a number"):
        run_compare(study)


def test_loc_is_counted_from_the_real_backend_files(study):
    report = run_compare(study)
    rows = read_csv_rows(study[2] / "comparison.csv")
    for framework in FRAMEWORKS:
        source = compare.BACKENDS_DIR / f"{framework}_backend.py"
        loc = int(rows[(framework, "parallel", "cpu", "native")]["backend_loc"])
        assert loc == compare.count_loc(source)
        assert 0 < loc < len(source.read_text().splitlines())  # comments, docstrings and blank lines are left out
    assert "non-blank lines" in report  # the report says how it counts


def test_tf_backends_count_their_shared_module(tmp_path):
    backends = tmp_path / "backends"
    backends.mkdir()
    (backends / "_tf_common.py").write_text("import os\nx = 1\n")
    (backends / "keras_backend.py").write_text("y = 2\n")
    (backends / "numpy_backend.py").write_text("z = 3\n")
    assert compare.backend_loc("keras", backends) == (3, "keras_backend.py 1 + _tf_common.py 2")
    assert compare.backend_loc("numpy", backends) == (1, "numpy_backend.py 1")
    assert compare.backend_loc("torch", backends) == (None, "no torch_backend.py")


def test_count_loc_leaves_out_comments_docstrings_and_blanks(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        '"""Module docstring,\n\nover three lines."""\n'
        "\n"
        "# a comment\n"
        "import os  # code with a comment counts\n"
        "\n"
        "def f(x):\n"
        "    '''One-line docstring.'''\n"
        "    s = '# not a comment'\n"
        "    return (x +\n"
        "            1)\n"
    )
    # import, def, s = ..., return (two lines)
    assert compare.count_loc(source) == 5


def test_plots_are_written(study):
    run_compare(study)
    reports = study[2]
    for name in compare.PNGS:
        png = (reports / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    assert sorted(p.name for p in reports.iterdir()) == sorted(compare.REPORT_FILES)  # no temp files left


def test_the_plots_drawn_aside_are_the_same_and_meanwhile_runs_beside_them(study, tmp_path):
    runs, data, reports, params = study
    run_compare(study)
    alone = {name: (reports / name).read_bytes() for name in compare.PNGS}
    seen = []
    p, target = read_study_params(params), compare.read_target_accuracy(params)
    compare.compare(runs, reports, data, p, target, meanwhile=lambda: seen.append(os.getpid()))
    assert seen == [os.getpid()]  # in this process, the plots in a child
    assert {name: (reports / name).read_bytes() for name in compare.PNGS} == alone


def test_a_plot_failing_aside_is_an_error_and_meanwhiles_error_waits_for_the_plots(tmp_path):
    def fail() -> None:
        raise RuntimeError("no font")

    with pytest.raises(compare.ReportError, match="drawing the report's plots failed in a child process"):
        compare.draw_aside(fail, lambda: None)
    done = tmp_path / "drawn"

    def slow_draw() -> None:
        time.sleep(0.5)
        done.write_text("yes")

    def broken_store() -> None:
        raise ValueError("bad tracking URI")

    with pytest.raises(ValueError, match="bad tracking URI"):
        compare.draw_aside(slow_draw, broken_store)
    assert done.read_text() == "yes"  # the child was waited for, not left writing


def test_main_prints_one_line_and_print_only_prints_the_report(study, capsys):
    runs, data, reports, params = study
    args = ["--runs-dir", str(runs), "--reports-dir", str(reports), "--data", str(data), "--params", str(params)]
    assert compare.main(args) == 0
    printed = capsys.readouterr().out
    assert printed == f"compare: wrote {reports}/ (24 runs: 24 finished); print it with --print-only\n"
    assert compare.main(["--reports-dir", str(reports), "--print-only"]) == 0
    assert capsys.readouterr().out == (reports / "comparison.md").read_text()
    assert compare.main([*args[:-1], str(params.parent / "none.yaml")]) == 1
    assert "none.yaml: params file not found" in capsys.readouterr().err


def test_print_only_without_a_report_says_what_to_run(tmp_path, capsys):
    assert compare.main(["--reports-dir", str(tmp_path), "--print-only"]) == 1
    assert "comparison.md: not found: run `dvc repro`" in capsys.readouterr().err


def test_malformed_metrics_name_the_file_and_key(study):
    reports = study[2]
    path = run_folder(study[0], "torch", "sequential", "controlled", 0) / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["samples_per_second"]
    path.write_text(json.dumps(metrics))
    where = r"torch-cpu/sequential-controlled-s0/metrics.json"
    with pytest.raises(compare.ReportError, match=where + r": missing key 'samples_per_second'"):
        run_compare(study)
    path.write_text(json.dumps(metrics | {"samples_per_second": 1.0, "seed": 5}))  # a run in the wrong folder
    with pytest.raises(compare.ReportError, match=where + r": key 'seed' is 5, expected 0"):
        run_compare(study)
    del metrics["status"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(compare.ReportError, match=r"metrics.json: missing key 'status'"):
        run_compare(study)
    path.write_text("{not json")
    with pytest.raises(compare.ReportError, match=r"metrics.json: line 1 column 2: not valid JSON"):
        run_compare(study)
    assert not reports.exists()  # nothing half-written


def test_bad_history_and_predictions_name_the_file(study):
    folder = run_folder(study[0], "numpy", "parallel", "native", 1)
    (folder / "history.csv").write_text("epoch,val_loss\n1,0.5\n")
    with pytest.raises(compare.ReportError, match=r"parallel-native-s1/history.csv: missing column 'train_loss'"):
        run_compare(study)
    columns = "epoch,train_loss,val_accuracy,epoch_seconds\n"
    (folder / "history.csv").write_text(columns + "1,nan,0.5,1.0\n2,oops,0.5,1.0\n")
    with pytest.raises(compare.ReportError, match=r"history.csv: row 3, column 'train_loss': 'oops' is not a number"):
        run_compare(study)
    (folder / "history.csv").write_text(columns + "1,0.5,0.5,1.0\n")
    write_npy(folder / "predictions.npy", np.zeros(N_TEST + 1, dtype=np.int64))
    with pytest.raises(
        compare.ReportError, match=r"parallel-native-s1/predictions.npy: shape \(13,\), expected \(12,\)"
    ):
        run_compare(study)
    (folder / "predictions.npy").unlink()
    with pytest.raises(compare.ReportError, match=r"parallel-native-s1/predictions.npy: not found"):
        run_compare(study)


def test_no_runs_at_all_is_a_report_of_missing_rows(study, tmp_path):
    runs, data, reports, params = study
    report = compare.compare(tmp_path / "empty", reports, data, read_study_params(params), TARGET)[0]
    assert "24 runs: 24 missing" in report and "fewer than two frameworks finished" in report
    assert json.loads((reports / "summary.json").read_text()) == {}
    with pytest.raises(compare.ReportError, match=r"nothing.npz: not found"):
        compare.compare(runs, reports, tmp_path / "nothing.npz", read_study_params(params), TARGET)


def test_one_seed_has_no_interval(study, tmp_path):
    report = run_compare(study, write_params(tmp_path / "one.yaml", seeds=1))
    row = read_csv_rows(study[2] / "comparison.csv")[("numpy", "sequential", "cpu", "controlled")]
    assert row["test_accuracy_hw"] == "" and math.isclose(float(row["test_accuracy"]), accuracy("numpy", "", "", 0))
    assert "| numpy | sequential | cpu | controlled | 1/1 | 90.00 % |" in report
    assert json.loads((study[2] / "summary.json").read_text()).keys() == {"acc", "x"}  # no interval


def test_keras_over_its_backend_is_a_ratio_per_seed(study, tmp_path):
    """keras beside tensorflow: the steady epoch time of Keras over the backend's, per seed."""
    runs = study[0]
    for f in ("tensorflow", "keras"):
        for s in STRATEGIES:
            for m in MODES:
                for seed in range(SEEDS):
                    write_run(runs, f, s, m, seed)
    for seed in range(SEEDS):  # keras 3x, 4x, 5x tensorflow's epoch time in sequential controlled
        folder = run_folder(runs, "keras", "sequential", "controlled", seed)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["steady_epoch_seconds"] *= 3 + seed
        (folder / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(run_folder(runs, "keras", "parallel", "native", 0))
    report = run_compare(study, write_params(tmp_path / "k.yaml", frameworks=("numpy", "tensorflow", "keras")))
    section = report.split("## What Keras costs over its own backend")[1].split("## Native mode")[0]
    ratio = stats.mean_interval([3.0, 4.0, 5.0])
    assert (
        f"| keras | tensorflow | sequential | cpu | controlled | 3 | {ratio.mean:.2f} ± {ratio.half_width:.2f}× |  |"
        in section
    )
    assert "| keras | tensorflow | parallel | cpu | controlled | 3 | 1.00 ± 0.00× |  |" in section
    assert "| keras | tensorflow | parallel | cpu | native | 2 | 1.00 ± 0.00× |  |" in section  # seed 0 missing
    alone = run_compare(study, write_params(tmp_path / "n.yaml", frameworks=("numpy", "keras")))
    assert "The study runs no Keras framework beside its own backend (keras beside tensorflow" in alone


def test_time_to_target_per_row_over_the_seeds_that_reached_it(study):
    report = run_compare(study)
    main_table = report.index("## Per framework, strategy, device and mode")
    section = report.split("## Time to 88 % validation accuracy")[1].split("## sequential − parallel")[0]
    assert main_table < report.index("## Time to 88 % validation accuracy") < report.index("## sequential − parallel")
    assert "params.yaml `compare.target_accuracy`" in section
    rows = read_csv_rows(study[2] / "comparison.csv")
    # seeds 0, 1 reach 0.88 at epoch 2 (1.5 s + the second epoch), seed 2 at epoch 3
    times = stats.mean_interval([1.5 + 0.75, 1.5 + 0.76, 1.5 + 0.77 + 0.77])
    row = rows[("numpy", "sequential", "cpu", "controlled")]
    assert float(row["time_to_target_s"]) == pytest.approx(times.mean, rel=1e-12)
    assert float(row["time_to_target_s_hw"]) == pytest.approx(times.half_width, rel=1e-12)
    assert (float(row["epochs_to_target"]), row["n_reached"]) == (pytest.approx(7 / 3), "3")
    line = f"| numpy | sequential | cpu | controlled | 3 of 3 | {times.mean:.2f} ± {times.half_width:.2f} | 2.3 |  |"
    assert line in section
    # numpy parallel controlled: seed 1 at the end of epoch 1
    fast = stats.mean_interval([2.25, 1.5, 3.04])
    assert float(rows[("numpy", "parallel", "cpu", "controlled")]["time_to_target_s"]) == pytest.approx(fast.mean)
    # torch native parallel: seed 0 never reaches it, the two others pool
    partial = rows[("torch", "parallel", "cpu", "native")]
    two = stats.mean_interval([1.5 + 0.76, 1.5 + 0.77 + 0.77])
    assert (float(partial["time_to_target_s"]), partial["n_reached"]) == (pytest.approx(two.mean), "2")
    note = "never: seed 0 (best 85.00 %)"
    assert (
        f"| torch | parallel | cpu | native | 2 of 3 | {two.mean:.2f} ± {two.half_width:.2f} | 2.5 | {note} |"
        in section
    )
    # torch native sequential: no seed reaches it
    never = rows[("torch", "sequential", "cpu", "native")]
    assert (never["time_to_target_s"], never["time_to_target_s_hw"], never["epochs_to_target"]) == ("", "", "")
    assert never["n_reached"] == "0" and never["status"] == "finished"  # the run finished; the target is apart
    note = "never: seed 0 (best 85.00 %), 1 (best 85.00 %), 2 (best 85.00 %)"
    assert f"| torch | sequential | cpu | native | 0 of 3 | – | – | {note} |" in section
    assert list(never) == list(compare.CSV_COLUMNS)


def test_time_to_target_follows_the_target_and_says_when_there_is_no_val_split(study, tmp_path):
    runs = study[0]
    for seed in range(SEEDS):  # data.val_fraction 0: validation accuracy is NaN in every epoch
        path = run_folder(runs, "numpy", "sequential", "native", seed) / "history.csv"
        with open(path, newline="") as f:
            epochs = [r | {"val_loss": "nan", "val_accuracy": "nan"} for r in csv.DictReader(f)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, epochs[0].keys())
            writer.writeheader()
            writer.writerows(epochs)
    shutil.rmtree(run_folder(runs, "numpy", "parallel", "native", 2))
    report = run_compare(study, write_params(tmp_path / "low.yaml", target=0.5))
    section = report.split("## Time to 50 % validation accuracy")[1].split("##")[0]
    rows = read_csv_rows(study[2] / "comparison.csv")
    for f, s, m in ((f, s, m) for f in FRAMEWORKS for s in STRATEGIES for m in MODES):
        row = rows[(f, s, "cpu", m)]
        if (f, s, m) == ("numpy", "sequential", "native"):
            assert (row["n_reached"], row["time_to_target_s"]) == ("0", "")
            assert (
                "| numpy | sequential | cpu | native | 0 of 3 | – | – | no validation split: seed 0, 1, 2 |" in section
            )
        else:  # every other run passes 50 % at the end of epoch 1
            assert (float(row["time_to_target_s"]), float(row["epochs_to_target"])) == (1.5, 1.0)
    assert "| numpy | parallel | cpu | native | 2 of 2 | 1.50 ± 0.00 | 1.0 |  |" in section  # seed 2 missing
    rows = compare.target_rows(compare.load_study(runs, read_study_params(study[3]), N_TEST), 0.5)
    statuses = {tuple(r[k] for k in compare.KEYS): r["status"] for r in rows}
    assert statuses[("numpy", "sequential", "cpu", "native")] == "no validation split"  # the plot's empty bar
    assert statuses[("numpy", "parallel", "cpu", "native")] == "incomplete"
    rows = compare.target_rows(compare.load_study(runs, read_study_params(study[3]), N_TEST), 0.99)
    assert {r["status"] for r in rows} == {"none of 3 reached it", "none of 2 reached it", "no validation split"}


@pytest.mark.parametrize(
    "section, expected",
    [
        ("compare:\n  target_accuracy: 1.5\n", "compare.target_accuracy=1.5: must be a number in (0, 1]"),
        ("compare:\n  target_accuracy: x\n", "compare.target_accuracy='x': must be a number in (0, 1]"),
        ("compare:\n  target_accuracy: 0\n", "compare.target_accuracy=0: must be a number in (0, 1]"),
        ("compare:\n  target_accuracy: true\n", "compare.target_accuracy=True: must be a number in (0, 1]"),
        ("compare:\n  target: 0.9\n", "compare.target_accuracy=None: is missing"),
        ("", "compare=None: must be a top-level 'compare:' section"),
    ],
)
def test_a_bad_target_names_the_params_key_and_its_range(study, tmp_path, capsys, section, expected):
    runs, data, reports, params = study
    path = tmp_path / "bad.yaml"
    path.write_text(params.read_text().split("compare:")[0] + section)
    with pytest.raises(ParamsError, match=re.escape(f"{path}: {expected}")):
        compare.read_target_accuracy(path)
    args = ["--runs-dir", str(runs), "--reports-dir", str(reports), "--data", str(data), "--params", str(path)]
    assert compare.main(args) == 1
    assert expected in capsys.readouterr().err and not reports.exists()


def test_the_target_reruns_compare_alone():
    """dvc.yaml: compare lists compare.target_accuracy among its params, no study stage does."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "compare.target_accuracy" in stages["compare"]["params"]
    for name, stage in stages.items():
        if name != "compare":
            assert not any(str(p).startswith("compare") for p in stage.get("params", [])), name
    assert "reports/time_to_accuracy.png" in stages["compare"]["plots"]
    assert 0 < compare.read_target_accuracy(ROOT / "params.yaml") <= 1
    assert compare.percent(0.88) == "88 %" and compare.percent(0.885) == "88.5 %" and compare.percent(1) == "100 %"


def bench_cell(framework, mode, strategy, batch, seconds, group="main", device="cpu"):
    """One row of bench.json's cells, as bench/report.py's cell_rows writes it (the keys the note reads)."""
    return dict(framework=framework, mode=mode, strategy=strategy, batch=batch, device=device, group=group) | {
        "status": "ok",
        "epoch_seconds": seconds,
        "median_epoch_seconds": float(np.median(seconds)),
    }


def test_the_study_speed_says_it_is_a_rough_order_and_that_the_bench_measures(study):
    report = run_compare(study)
    assert "3 short epochs a run, timed while other stages shared the machine: a rough order" in report
    assert "No bench result is here yet (reports/bench.json)." in report


def test_the_study_speed_quotes_the_benchs_paired_plain_ratios_at_the_study_batch(study):
    cells = [
        bench_cell("numpy", "plain", "parallel", 64, [1.0, 2.0, 1.0]),
        bench_cell("torch", "eager", "parallel", 64, [2.0, 2.0, 4.0]),  # ratios 0.5, 1.0, 0.25
        bench_cell("torch", "compile", "parallel", 64, [0.1, 0.1, 0.1]),  # not the plain mode
        bench_cell("numpy", "plain", "sequential", 64, [1.0, 1.0, 1.0]),
        bench_cell("torch", "eager", "sequential", 64, [0.5, 0.5, 0.5]),
        bench_cell("torch", "eager", "parallel", 256, [9.0, 9.0, 9.0]),  # another batch
        bench_cell("keras-jax", "fit", "parallel", 64, [1.0, 1.0, 1.0], group="keras-jax"),  # another process
        bench_cell("torch", "eager", "parallel", 64, [1.0, 1.0, 1.0], device="cuda"),
    ]
    reports = study[2]
    reports.mkdir()
    bench = {"cells": cells, "rounds": 3, "batches": [64, 256], "data": {"source": "synthetic"}}
    (reports / "bench.json").write_text(json.dumps(bench))
    report = run_compare(study)
    assert "(reports/bench.json: 3 rounds, synthetic data, each framework on its default threads)" in report
    assert "plain modes at batch 64" in report
    assert "parallel: torch 0.50× (0.25–1.00); sequential: torch 2.00× (2.00–2.00)." in report
    assert "keras-jax" not in report.split("Speed vs NumPy")[1].split("Test accuracy")[0]

    (reports / "bench.json").write_text(json.dumps(bench | {"cells": cells[5:], "batches": [256]}))
    assert "has no plain-mode pair with NumPy at batch 64 (its batches: 256)" in run_compare(study)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{", "bench.json: line 1 column 2: not valid JSON"), ('{"rounds": 3}', "bench.json: no 'cells' list")],
)
def test_a_broken_bench_result_names_the_file(study, text, expected):
    reports = study[2]
    reports.mkdir()
    (reports / "bench.json").write_text(text)
    with pytest.raises(compare.ReportError, match=re.escape(expected)):
        run_compare(study)
