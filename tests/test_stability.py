"""stability.py: the params checks, the three classes on made-up loss histories, the largest-lr
rules on a made-up table, runs of each class on a tiny set, the three reports, and
`python -m backprop_bench.stability` end to end (whose imports must be exactly the stage's deps in dvc.yaml)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_tiny_npz, run_app

from backprop_bench import stability
from backprop_bench.core.checks import ParamsError
from backprop_bench.stability import DIVERGED, LEARNED, STALLED, classify, largest_lr, split_sentence

PARAMS = {"lrs": [1e-4, 1e4], "batch_sizes": [16], "epochs": 2, "seed": 0, "subset": None, "blowup": 10}
PARAMS |= {"stall_margin": 0.05}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


def write_params(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({"stability": PARAMS | changes}))
    return path


def row(lr: float, strategy: str = "sequential", batch: int = 64, status: str = LEARNED, epoch: int | None = None):
    finished = status != DIVERGED
    return dict(
        lr=lr, strategy=strategy, batch_size=batch, status=status, diverged_epoch=None if finished else epoch or 2,
        final_loss=(0.25 if status == LEARNED else 2.3) if finished else None, test_accuracy=0.9 if finished else None,
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
        ({"stall_margin": 1}, "stability.stall_margin=1: must be a number >= 0 and < 1"),
        ({"stall_margin": -0.1}, "stability.stall_margin=-0.1: must be a number >= 0 and < 1"),
        ({"stall_margin": "5%"}, "stability.stall_margin='5%': must be a number"),
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


# initial loss 2.0, blowup 10, stall_margin 0.25: limit 20.0, stall level 1.5 (all exact in binary)
LIMIT, STALL = 20.0, 1.5


@pytest.mark.parametrize(
    "losses, status",
    [
        ([1.9, 1.2, 0.4], LEARNED),
        ([2.5, 1.4], LEARNED),  # above the initial loss in epoch 1 does not matter: the last epoch does
        ([1.9, 1.6, 1.51], STALLED),
        ([2.3], STALLED),  # worse than the initial loss, but not blown up
        ([1.0, 0.5, 1.7], STALLED),  # learned, then lost it: the last epoch decides
        ([STALL], LEARNED),  # the boundary: at the stall level counts as learned...
        ([1.0, math.nextafter(STALL, math.inf)], STALLED),  # ...the next float above it stalled
        ([LIMIT], STALLED),  # at the blow-up threshold: not diverged
        ([1.0, math.nextafter(LIMIT, math.inf)], DIVERGED),
        ([1.0, math.nan], DIVERGED),
        ([math.inf], DIVERGED),
        ([1.0, 50.0, 0.3], DIVERGED),  # an epoch above the threshold, whatever came after
    ],
)
def test_classify_on_constructed_loss_histories(losses, status):
    assert classify(losses, LIMIT, STALL) == status


def test_the_repository_margin_stalls_a_run_at_chance_level_and_not_a_slow_learner():
    """The default margin on the default data's numbers (docs/stability.md): initial loss 2.362; parallel,
    batch 16, lr 1 ended at 2.323 (chance level, 10 % accuracy); the slowest learner, batch 256 at lr 0.01,
    at 2.035 (38 % accuracy)."""
    p = stability.read_params(ROOT / "params.yaml")
    initial = 2.362
    limit, stall_level = p["blowup"] * initial, (1 - p["stall_margin"]) * initial
    assert stall_level < math.log(10)  # a net that only got down to chance level (uniform output) stalls
    assert classify([2.741, 2.321, 2.323], limit, stall_level) == STALLED
    assert classify([2.292, 2.155, 2.035], limit, stall_level) == LEARNED


def test_largest_lr_on_a_constructed_table():
    runs = [
        *(row(lr, "parallel") for lr in (0.01, 0.1, 1.0)),  # all learn: the largest
        row(0.01), row(0.1), row(1.0, status=DIVERGED),  # sequential gives out at 1.0
        row(0.01, batch=16), row(0.1, batch=16, status=DIVERGED), row(1.0, batch=16),  # learned above a divergence
        row(0.01, "parallel", 16, DIVERGED), row(0.1, "parallel", 16, DIVERGED), row(1.0, "parallel", 16, DIVERGED),
        row(0.01, batch=256, status=STALLED), row(0.1, batch=256), row(1.0, batch=256, status=STALLED),  # too small,
        row(0.01, "parallel", 256), row(0.1, "parallel", 256, STALLED), row(1.0, "parallel", 256),  # stalled between
        row(0.01, batch=32, status=STALLED), row(0.1, batch=32, status=DIVERGED), row(1.0, batch=32),  # never learns
    ]  # fmt: skip
    learning = {("parallel", 64): 1.0, ("sequential", 64): 0.1, ("sequential", 16): 0.01, ("parallel", 16): None}
    learning |= {("sequential", 256): 0.1, ("parallel", 256): 0.01, ("sequential", 32): None}
    assert largest_lr(runs[::-1], {LEARNED}) == learning  # the order of the runs does not matter
    nondiverging = learning | {("sequential", 256): 1.0, ("parallel", 256): 1.0, ("sequential", 32): 0.01}
    assert largest_lr(runs, {LEARNED, STALLED}) == nondiverging


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
    stalls = [row(0.1), row(0.1, "parallel"), row(1.0, status=DIVERGED, epoch=1), row(1.0, "parallel", status=STALLED)]
    assert "while parallel does not diverge there but stalls (final loss 2.300, test accuracy 90.0%)" in (
        split_sentence(stalls, 64)
    )


# ---------------------------------------------------------------- runs on a tiny set


def test_runs_of_each_class_on_a_tiny_set(tiny):
    """On the tiny set (initial loss 2.44): lr 1e4 blows up in epoch 1, lr 1e-4 barely moves the loss
    in 3 epochs, lr 0.1 learns."""
    data = stability.load_data(tiny, None, 0)
    limit, stall_level = 10 * 2.44, 0.95 * 2.44
    bad = stability.train_run(data, 1e4, "sequential", 16, 3, 0, limit, stall_level)
    assert (bad["status"], bad["diverged_epoch"], bad["test_accuracy"]) == (DIVERGED, 1, None)
    assert len(bad["epoch_losses"]) == 1
    slow = stability.train_run(data, 1e-4, "sequential", 16, 3, 0, limit, stall_level)
    assert (slow["status"], slow["diverged_epoch"]) == (STALLED, None)
    assert len(slow["epoch_losses"]) == 3 and all(stall_level < v < limit for v in slow["epoch_losses"])
    good = stability.train_run(data, 0.1, "sequential", 16, 3, 0, limit, stall_level)
    assert (good["status"], good["diverged_epoch"]) == (LEARNED, None) and good["final_loss"] < stall_level
    for run in (slow, good):
        assert run["final_loss"] == run["epoch_losses"][-1] and 0 <= run["test_accuracy"] <= 1


def test_the_sweep_writes_its_three_reports(tiny, tmp_path):
    lrs = [1e-4, 0.1, 1.0, 1e4]
    result = stability.map_stability(tiny, tmp_path, **(PARAMS | {"lrs": lrs, "batch_sizes": [16, 32]}))
    assert len(result["runs"]) == 4 * 2 * 2
    assert result["stall_level"] == pytest.approx(0.95 * result["initial_loss"])
    assert result["limit"] == pytest.approx(10 * result["initial_loss"])
    status = {(r["strategy"], r["batch_size"], r["lr"]): r["status"] for r in result["runs"]}
    # lr 1e-4 is too small to move the loss in 2 epochs; at lr 1, batch 16, parallel survives but stalls
    assert [status[("parallel", 16, lr)] for lr in lrs] == [STALLED, LEARNED, STALLED, DIVERGED]
    assert [status[("sequential", 16, lr)] for lr in lrs] == [STALLED, LEARNED, DIVERGED, DIVERGED]
    assert [status[("parallel", 32, lr)] for lr in lrs] == [STALLED, LEARNED, LEARNED, DIVERGED]
    summary = {(s["strategy"], s["batch_size"]): s for s in result["lr_summary"]}
    assert summary[("parallel", 16)] == {
        "strategy": "parallel", "batch_size": 16, "largest_learning_lr": 0.1, "largest_nondiverging_lr": 1.0,
        "lowest_loss_lr": 0.1,
    }  # fmt: skip
    assert [summary[(s, 32)]["largest_learning_lr"] for s in ("sequential", "parallel")] == [0.1, 1.0]
    saved = json.loads((tmp_path / "stability.json").read_text())
    assert saved["runs"] == result["runs"] and saved["params"]["lrs"] == lrs and saved["params"]["stall_margin"] == 0.05
    md = (tmp_path / "stability.md").read_text()
    assert "| 16 | 0.1 | 0.1 | 0.1 / 1 | 0.1 / 0.1 |" in md and "| 32 | 0.1 | 1 | 0.1 / 1 |" in md
    assert "| 10000 | x e1 |" in md and "parity tests" in md
    assert re.search(r"^\| 1 \| x e\d \| [\d.]+ \(stalled\) \|", md, re.M)  # lr 1: sequential 16, parallel 16
    assert (
        "batch 16: sequential first diverges at lr 1 (epoch 1) while parallel does not diverge there but stalls" in md
    )
    assert "batch 32: sequential first diverges at lr 1 (epoch 2) while parallel still learns there" in md
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
    # lr 1e-4 stalls (nothing learns before 1e4 diverges), but it does not diverge
    assert (
        "| batch | sequential | parallel |" in done.stdout and "| 16 | none | none | 0.0001 / 0.0001 |" in done.stdout
    )
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
