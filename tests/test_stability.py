"""stability.py: the params checks, the largest-stable-lr rule on a made-up table, divergence
detected and recorded, the three reports, and `python -m backprop_bench.stability` end to end
(whose imports must be exactly the stage's deps in dvc.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_tiny_npz, run_app

from backprop_bench import stability
from backprop_bench.core.checks import ParamsError
from backprop_bench.stability import DIVERGED, FINISHED, largest_stable_lr, split_sentence

PARAMS = {"lrs": [1e-4, 1e4], "batch_sizes": [16], "epochs": 2, "seed": 0, "subset": None, "blowup": 10}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


def write_params(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({"stability": PARAMS | changes}))
    return path


def row(lr: float, strategy: str = "sequential", batch: int = 64, status: str = FINISHED, epoch: int | None = None):
    finished = status == FINISHED
    return dict(
        lr=lr, strategy=strategy, batch_size=batch, status=status, diverged_epoch=None if finished else epoch or 2,
        final_loss=0.25 if finished else None, test_accuracy=0.9 if finished else None,
    )  # fmt: skip


# ---------------------------------------------------------------- params


def test_the_repository_params_are_valid():
    p = stability.read_params(ROOT / "params.yaml")
    assert len(p["lrs"]) >= 8 and p["batch_sizes"] == [16, 64, 256]
    assert set(p) == set(stability.KEYS)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, "stability.epochs=0: must be an integer >= 1"),
        ({"lrs": [0.1, 0.01]}, "stability.lrs=[0.1, 0.01]: must list at least 2 increasing"),
        ({"lrs": [0.01, -1.0]}, "stability.lrs="),
        ({"batch_sizes": [16, 0]}, "stability.batch_sizes=[16, 0]"),
        ({"seed": -1}, "stability.seed=-1"),
        ({"subset": True}, "stability.subset=True"),
        ({"blowup": 1}, "stability.blowup=1: must be a number > 1"),
    ],
)
def test_a_bad_param_names_the_option(tmp_path, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        stability.read_params(write_params(tmp_path / "params.yaml", **change))


def test_a_missing_param_or_section_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"stability": {k: v for k, v in PARAMS.items() if k != "blowup"}}))
    with pytest.raises(ParamsError, match="params.yaml: stability.blowup=None: is missing"):
        stability.read_params(path)
    path.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    with pytest.raises(ValueError, match="'stability:' section"):
        stability.read_params(path)
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        stability.read_params(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- the rules, on made-up tables


def test_largest_stable_lr_on_a_constructed_table():
    runs = [
        *(row(lr, "parallel") for lr in (0.01, 0.1, 1.0)),  # all finish: the largest
        row(0.01), row(0.1), row(1.0, status=DIVERGED),  # sequential gives out at 1.0
        row(0.01, batch=16), row(0.1, batch=16, status=DIVERGED), row(1.0, batch=16),  # finished above a divergence
        row(0.01, "parallel", 16, DIVERGED), row(0.1, "parallel", 16, DIVERGED), row(1.0, "parallel", 16, DIVERGED),
    ]  # fmt: skip
    assert largest_stable_lr(runs[::-1]) == {  # the order of the runs does not matter
        ("parallel", 64): 1.0,
        ("sequential", 64): 0.1,
        ("sequential", 16): 0.01,
        ("parallel", 16): None,
    }


def test_split_sentence_says_where_sequential_gives_out_first():
    runs = [row(0.1), row(0.1, "parallel"), row(1.0, status=DIVERGED, epoch=3), row(1.0, "parallel")]
    assert split_sentence(runs, 64) == (
        "batch 64: sequential first diverges at lr 1 (epoch 3) while parallel still learns there "
        "(final loss 0.250, test accuracy 90.0%); parallel never diverges on this grid."
    )
    both = [row(0.1), row(0.1, "parallel"), row(1.0, status=DIVERGED), row(1.0, "parallel", status=DIVERGED, epoch=1)]
    assert "both strategies first diverge at lr 1 (sequential in epoch 2, parallel in epoch 1)" in split_sentence(
        both, 64
    )
    assert "sequential never diverges" in split_sentence([row(0.1), row(0.1, "parallel")], 64)


# ---------------------------------------------------------------- runs on a tiny set


def test_a_huge_lr_diverges_in_epoch_1_and_a_tiny_one_stays_finite(tiny):
    data = stability.load_data(tiny, None, 0)
    limit = 10 * 2.5
    bad = stability.train_run(data, 1e4, "sequential", 16, 3, 0, limit)
    assert (bad["status"], bad["diverged_epoch"], bad["test_accuracy"]) == (DIVERGED, 1, None)
    assert len(bad["epoch_losses"]) == 1
    good = stability.train_run(data, 1e-4, "sequential", 16, 3, 0, limit)
    assert (good["status"], good["diverged_epoch"]) == (FINISHED, None)
    assert len(good["epoch_losses"]) == 3 and all(0 < v < limit for v in good["epoch_losses"])
    assert good["final_loss"] == good["epoch_losses"][-1] and 0 <= good["test_accuracy"] <= 1


def test_the_sweep_writes_its_three_reports(tiny, tmp_path):
    result = stability.map_stability(tiny, tmp_path, **(PARAMS | {"lrs": [1e-4, 0.01, 1e4], "batch_sizes": [16, 32]}))
    assert len(result["runs"]) == 3 * 2 * 2
    stable = {(s["strategy"], s["batch_size"]): s["lr"] for s in result["largest_stable_lr"]}
    assert stable == {(s, b): 0.01 for s in ("sequential", "parallel") for b in (16, 32)}
    saved = json.loads((tmp_path / "stability.json").read_text())
    assert saved["runs"] == result["runs"] and saved["params"]["lrs"] == [1e-4, 0.01, 1e4]
    md = (tmp_path / "stability.md").read_text()
    assert "| 16 | 0.01 | 0.01 |" in md and "| 10000 | x e1 |" in md and "parity tests" in md
    assert "both strategies first diverge at lr 10000" in md
    assert (tmp_path / "stability.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path):
    import numpy as np

    path = tmp_path / "small.npz"
    np.savez(path, **{f"{p}_{s}": np.zeros((4, 3) if p == "x" else 4, "float32" if p == "x" else "int64")
                      for s in ("train", "val", "test") for p in "xy"})  # fmt: skip
    with pytest.raises(ValueError, match="784-128-64-10; the data has 3 features"):
        stability.load_data(path, None, 0)


# ---------------------------------------------------------------- the stage


def test_the_stage_end_to_end(tiny, tmp_path):
    params, out = write_params(tmp_path / "params.yaml", subset=40), tmp_path / "reports"
    args = ["--params", params, "--data", tiny, "--out-dir", out]
    done = run_app("backprop_bench.stability", *map(str, args), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"stability.json", "stability.md", "stability.png"}
    assert "| batch | sequential | parallel |" in done.stdout and "| 16 | 0.0001 | 0.0001 |" in done.stdout
    assert json.loads((out / "stability.json").read_text())["data"]["n_train"] == 40


# Runs the stage's main(), then prints the files of every project module that got imported.
LIST_MODULES = """
import json, sys
from backprop_bench.stability import main
assert main(sys.argv[1:]) == 0
print(json.dumps([m.__file__ for name, m in sys.modules.items() if name.startswith("backprop_bench")]))
"""


def test_the_dvc_stage_covers_every_module_it_runs(tiny, tmp_path):
    params = write_params(tmp_path / "params.yaml", subset=40)  # a subset also runs data/split.py
    args = ["--params", params, "--data", tiny, "--out-dir", tmp_path / "reports"]
    done = subprocess.run([sys.executable, "-c", LIST_MODULES, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    files = {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(done.stdout.splitlines()[-1])}
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["stability"]
    deps = [d for d in stage["deps"] if d.startswith("src/")]
    # every module the stage loaded is covered by a dep (a file, or the package folder holding it)
    assert not [f for f in files if not any(f == d or f.startswith(d + "/") for d in deps)]
    assert "data/processed/mnist.npz" in stage["deps"] and stage["params"] == ["stability"]
    assert stage["outs"] == [f"reports/stability.{ext}" for ext in ("json", "md", "png")]


def test_the_stage_exits_1_on_bad_params_and_writes_nothing(tiny, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", epochs=0)
    assert stability.main(["--params", str(params), "--data", str(tiny), "--out-dir", str(tmp_path / "r")]) == 1
    assert "stability.epochs=0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
