"""repro.py (`make run`): which stages run side by side and in what order, the time summary,
bad arguments. The whole pipeline through it: test_study_dvc.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from repo_copy import ROOT

from backprop_bench.repro import DATA_STAGE, SIDE_STAGES, Done, describe, main, side_by_side
from backprop_bench.results.grid import StudyParams


def params(frameworks=("numpy", "torch", "tensorflow", "keras"), devices=("cpu",)) -> StudyParams:
    return StudyParams(frameworks, ("sequential", "parallel"), devices, ("controlled", "native"), 3, 5, 64)


def test_side_by_side_runs_the_longest_first_and_cuda_before_cpu():
    assert side_by_side(params()) == [
        "study@keras-cpu",
        "study@tensorflow-cpu",
        "study@torch-cpu",
        "study@numpy-cpu",
        "stability",
    ]
    assert side_by_side(params(("numpy", "torch"), ("cpu", "cuda"))) == [
        "study@torch-cuda",
        "study@numpy-cuda",
        "study@torch-cpu",
        "study@numpy-cpu",
        "stability",
    ]


def test_keras_on_other_backends_runs_in_the_keras_on_stages():
    p = params(("numpy", "jax", "keras-jax", "keras-torch"), ("cpu",))
    assert side_by_side(p) == [
        "keras-on@torch-cpu",
        "keras-on@jax-cpu",
        "study@jax-cpu",
        "study@numpy-cpu",
        "stability",
    ]


def test_the_stage_names_are_the_pipelines():
    """dvc.yaml has the data stage, the side stages, and the study matrix whose names
    side_by_side builds (DVC names a two-key matrix's stages study@<framework>-<device>)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert DATA_STAGE in stages and all(s in stages for s in SIDE_STAGES)
    assert list(stages["study"]["matrix"]) == ["framework", "device"]
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    with open(ROOT / "params.yaml") as f:
        study = yaml.safe_load(f)["study"]
    p = params(tuple(study["frameworks"]), tuple(study["devices"]))
    assert set(side_by_side(p)) <= set(out.stdout.split())


def test_describe_says_where_the_time_went():
    stages = [Done("study@keras-cpu", 0, 24.04, ""), Done("stability", 0, 5.0, "")]
    text = describe([("data", 3.5), ("side by side", 30.0), ("compare and the rest", 4.25)], stages, 2)
    assert text == (
        "repro: 37.8 s in all: data 3.5 s; side by side (2 at a time) 30.0 s "
        "[study@keras-cpu 24.0 s, stability 5.0 s]; compare and the rest 4.2 s"
    )


def test_bad_arguments_name_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--jobs", "-1"])
    assert "--jobs must be >= 0 (0: one per usable CPU), got -1" in capsys.readouterr().err
    bad = tmp_path / "params.yaml"
    bad.write_text("study:\n  frameworks: [mxnet]\n")
    assert main(["--params", str(bad)]) == 2
    assert f"repro: {bad}: study.frameworks[0]='mxnet': must be one of" in capsys.readouterr().err


def test_a_stop_signal_reaches_the_running_commands_process_group_and_starts_nothing(monkeypatch):
    """forward() Ctrl-Cs each running command's whole process group (dvc and its stage: here a
    shell and the sleep it runs) and later commands never start."""
    import signal
    import threading
    import time

    from backprop_bench import repro

    monkeypatch.setattr(repro, "_stopped", [])
    # As main() does. It also matters here: a child inherits an ignored SIGINT (pytest started
    # as a background job has one), while a handled one is reset to the default in the child.
    previous = signal.signal(signal.SIGINT, repro.forward)
    script = "trap 'echo got-int; exit 7' INT; sleep 60; echo not-interrupted"
    result: list = []
    thread = threading.Thread(target=lambda: result.append(repro.run_dvc("x", ["sh", "-c", script], capture=True)))
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not repro._live and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the shell has set its trap
        repro.forward(signal.SIGTERM)
        thread.join(30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not thread.is_alive()
    (done,) = result
    assert (done.returncode, done.output.strip()) == (7, "got-int") and done.seconds < 30
    later = repro.run_dvc("y", ["true"], capture=False)
    assert (later.returncode, later.output) == (128 + signal.SIGTERM, "not started: stopped by a signal")
