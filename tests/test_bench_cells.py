"""bench/cells.py: the train set from the catalog, the grid, and the interleaved rounds timed
by the trainer's clock. Fake backends record what the rounds do; no timing is asserted.

    .venv/bin/python -m pytest tests/test_bench_cells.py -x -q
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from backprop_bench.backends import base
from backprop_bench.bench import cells
from backprop_bench.data.formats import write_idx

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- data


def _params(tmp_path: Path, local_dir: str | None) -> Path:
    """A params.yaml whose fashion_mnist catalog entry is the real one but for local_dir."""
    real = yaml.safe_load((ROOT / "params.yaml").read_text())
    real["data"]["catalog"]["fashion_mnist"]["local_dir"] = local_dir
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(real))
    return path


def _write_fashion(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_the_train_set_comes_from_the_params_catalog(tmp_path):
    images, labels = _write_fashion(tmp_path, 50)
    x, y, data = cells.load_train_set("fashion-mnist", 40, 0, params=_params(tmp_path, str(tmp_path)))
    assert data == {"source": "fashion-mnist", "path": str(tmp_path), "n": 40}
    assert x.shape == (40, 784) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, images[:40].reshape(40, 784) / np.float32(255))
    np.testing.assert_array_equal(y, labels[:40])
    _, _, auto = cells.load_train_set("auto", 40, 0, params=_params(tmp_path, str(tmp_path)))
    assert auto["source"] == "fashion-mnist"


def test_the_bench_reads_the_projects_params_file():
    """The default folder is params.yaml's catalog entry, whatever it says."""
    catalog = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["catalog"]["fashion_mnist"]
    paths = cells.fashion_mnist_files(ROOT / "params.yaml")
    assert [p.parent for p in paths] == [Path(catalog["local_dir"])] * 2
    assert [p.name for p in paths] == [catalog["url"]["files"][r]["name"] for r in ("train_images", "train_labels")]


def test_data_dir_overrides_the_catalog_folder(tmp_path):
    _write_fashion(tmp_path / "elsewhere", 20)
    _, _, data = cells.load_train_set(
        "fashion-mnist", 20, 0, params=_params(tmp_path, "/nonexistent"), data_dir=tmp_path / "elsewhere"
    )
    assert data["path"] == str(tmp_path / "elsewhere")


def test_fashion_mnist_required_but_missing_says_where(tmp_path):
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte.gz"):
        cells.load_train_set("fashion-mnist", 100, 0, params=_params(tmp_path, str(tmp_path)))
    with pytest.raises(SystemExit, match="local_dir=None: must be set"):
        cells.load_train_set("fashion-mnist", 100, 0, params=_params(tmp_path, None))
    with pytest.raises(SystemExit, match="params file not found"):
        cells.load_train_set("fashion-mnist", 100, 0, params=tmp_path / "none.yaml")


def test_auto_falls_back_to_synthetic_and_says_why(tmp_path):
    x, y, data = cells.load_train_set("auto", 64, 5, params=_params(tmp_path, str(tmp_path / "absent")))
    assert data["source"] == "synthetic" and "absent" in data["why"] and "not found" in data["why"]
    assert x.shape == (64, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() < 1
    assert y.dtype == np.int64 and y.max() < 10
    x2, _, _ = cells.load_train_set("synthetic", 64, 5, params=tmp_path / "never-read.yaml")
    np.testing.assert_array_equal(x, x2)  # seeded: the same synthetic set either way


def test_no_dataset_path_is_hard_coded_in_the_bench():
    sources = (ROOT / "src/backprop_bench/bench").glob("*.py")
    assert not [p.name for p in sources if "/usr/share" in p.read_text()]


# ----------------------------------------------------------------------------- the grid


def test_compared_cells_run_next_to_each_other():
    got = cells.plan_cells(["numpy", "torch"], ["parallel", "sequential"], [64], ["cpu"], [], stock=False)
    assert [c.name for c in got] == [
        "numpy-plain-parallel-b64-cpu",
        "numpy-plain-sequential-b64-cpu",
        "numpy-fast-parallel-b64-cpu",
        "numpy-fast-sequential-b64-cpu",
        "torch-eager-parallel-b64-cpu",
        "torch-eager-sequential-b64-cpu",
        "torch-compile-parallel-b64-cpu",
        "torch-compile-sequential-b64-cpu",
    ]
    fast = got[2]
    assert (fast.compile, fast.steps_per_execution) == (True, 1)  # numpy fast = compile=True


def test_stock_cells_are_parallel_only_and_can_be_left_out():
    got = cells.plan_cells(["torch", "keras"], ["parallel", "sequential"], [64], ["cpu"], [16])
    stock = [c for c in got if cells.is_stock(c.mode)]
    assert {c.mode for c in stock} == {"stock-eager", "stock-compile", "stock-fit", "stock-jit-spe16"}
    assert all(c.strategy == "parallel" for c in stock)
    assert next(c for c in stock if c.mode == "stock-jit-spe16").steps_per_execution == 16
    assert not [
        c for c in cells.plan_cells(["torch"], ["parallel"], [64], ["cpu"], [], stock=False) if cells.is_stock(c.mode)
    ]


def test_only_keras_cells_get_steps_per_execution(monkeypatch):
    seen = {}
    monkeypatch.setattr(cells, "make_backend", lambda fw, *a, **kw: seen.setdefault(fw, kw) and None)
    frameworks = ["numpy", "torch", "keras", "keras-torch", "keras-jax"]
    plan = cells.plan_cells(frameworks, ["parallel"], [64], ["cpu"], [16], stock=False)
    x, y = np.zeros((64, 784), np.float32), np.zeros(64, np.int64)
    spec, opt = cells.MLPSpec(cells.SIZES), cells.OptimizerSpec("sgd", lr=cells.BENCH_LR)
    for cell in plan:
        cells.build(cell, spec, x, y, 0, opt)  # None.load fails: each cell becomes a failed row
    assert seen["keras"]["steps_per_execution"] == 1  # the first keras cell: fit
    assert seen["keras-jax"]["steps_per_execution"] == 1 and seen["keras-torch"]["steps_per_execution"] == 1
    assert "steps_per_execution" not in seen["numpy"] and "steps_per_execution" not in seen["torch"]
    assert seen["numpy"]["compile"] is False and seen["numpy"]["dtype"] == "float32"


# ----------------------------------------------------------------------------- the rounds


class _LogBackend:
    """Records the order in which the bench runs epochs."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def synchronize(self):
        pass

    def train_epoch(self, order, batch_size, masks=None):
        self.log.append(self.name)
        return 1.0


def test_cells_are_interleaved_in_rounds_after_a_warm_up():
    plan = cells.plan_cells(["numpy"], ["parallel", "sequential"], [64, 256], ["cpu"], [])
    log: list[str] = []
    made = {c.name: _LogBackend(c.name, log) for c in plan}
    cells.run_cells(plan, made, [np.arange(8)] * 4)  # warm-up + 3 rounds
    names = [c.name for c in plan]
    n = len(names)
    assert log[:n] == names  # the warm-up epoch of every cell comes first
    rounds = [log[n * (r + 1) : n * (r + 2)] for r in range(3)]
    for r, got in enumerate(rounds):
        assert got == names[r:] + names[:r]  # every cell once per round, start rotated
    assert all(c.status == "ok" and len(c.epoch_seconds) == 3 for c in plan)
    assert all(len(c.cpu_seconds) == 3 and min(c.cpu_seconds) >= 0 for c in plan)  # one per timed epoch


def test_a_timed_epoch_records_the_processes_cpu_time():
    """CPU time of the process, all threads, during each timed epoch: a busy epoch shows it."""
    busy = _LogBackend("busy", [])

    def spin(order, batch_size, masks=None):
        end = time.process_time() + 0.03
        while time.process_time() < end:
            pass
        return 1.0

    busy.train_epoch = spin
    plan = cells.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])
    cells.run_cells(plan[:1], {plan[0].name: busy}, [np.arange(8)] * 3)
    assert len(plan[0].cpu_seconds) == 2 and min(plan[0].cpu_seconds) >= 0.03


def test_cells_are_timed_by_the_trainers_clock(monkeypatch):
    assert cells.timed_epoch is base.timed_epoch  # one clock rule: the trainer's function
    calls = []

    def spy(backend, order, batch_size):
        calls.append((backend.name, batch_size))
        return 0.5, 0.25

    monkeypatch.setattr(cells, "timed_epoch", spy)
    plan = cells.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])
    cells.run_cells(plan, {plan[0].name: _LogBackend("a", [])}, [np.arange(8)] * 3)
    assert calls == [("a", 64)] * 3  # warm-up + 2 rounds, every one through timed_epoch
    assert plan[0].first_epoch_seconds == 0.25 and plan[0].epoch_seconds == [0.25, 0.25]
    assert plan[0].last_loss == 0.5


def test_an_epoch_is_timed_around_train_epoch():
    slow = _LogBackend("slow", [])
    slow.train_epoch = lambda order, batch_size, masks=None: time.sleep(0.02) or 1.0
    plan = cells.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])
    assert cells.run_epoch(plan[0], slow, np.arange(8)) >= 0.02


def test_a_cell_failing_mid_run_drops_out_and_says_why():
    plan = cells.plan_cells(["numpy"], ["parallel"], [64, 256], ["cpu"], [])
    good, bad = _LogBackend("good", []), _LogBackend("bad", [])
    bad.train_epoch = lambda order, batch_size, masks=None: (_ for _ in ()).throw(RuntimeError("XLA is not available"))
    cells.run_cells(plan[:2], {plan[0].name: good, plan[1].name: bad}, [np.arange(8)] * 3)
    assert plan[0].status == "ok" and len(plan[0].epoch_seconds) == 2
    assert plan[1].status == "failed" and "RuntimeError: XLA is not available" in plan[1].reason


def test_no_garbage_collection_inside_the_clock():
    plan = cells.plan_cells(["numpy"], ["parallel"], [64, 256], ["cpu"], [])
    seen = []
    good, bad = _LogBackend("good", []), _LogBackend("bad", [])
    good.train_epoch = lambda order, batch_size, masks=None: seen.append(gc.isenabled()) or 1.0
    bad.train_epoch = lambda order, batch_size, masks=None: (_ for _ in ()).throw(RuntimeError("boom"))
    cells.run_cells(plan[:2], {plan[0].name: good, plan[1].name: bad}, [np.arange(8)] * 3)
    assert seen == [False, False, False]
    assert gc.isenabled(), "the bench must give garbage collection back, also after a failed epoch"


def test_garbage_is_collected_between_rounds(monkeypatch):
    collected = []
    monkeypatch.setattr(cells.gc, "collect", lambda *a: collected.append(1) or 0)
    plan = cells.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])
    cells.run_cells(plan, {plan[0].name: _LogBackend("a", [])}, [np.arange(8)] * 4)
    assert len(collected) == 3  # once before each timed round


def test_a_diverged_cell_stops_and_says_so():
    plan = cells.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])
    nan = _LogBackend("nan", [])
    nan.train_epoch = lambda order, batch_size, masks=None: float("nan")
    cells.run_cells(plan, {plan[0].name: nan}, [np.arange(8)] * 3)
    assert plan[0].status == "failed" and "FloatingPointError" in plan[0].reason and "diverged" in plan[0].reason


def test_an_interrupted_run_keeps_the_rounds_it_finished():
    plan = cells.plan_cells(["numpy"], ["parallel"], [64, 256], ["cpu"], [])[:2]
    log: list[str] = []
    first, second = _LogBackend("a", log), _LogBackend("b", log)

    def stop_in_round_two(order, batch_size, masks=None):
        log.append("b")
        if log.count("b") == 3:  # warm-up, round 1, then Ctrl-C inside round 2
            raise KeyboardInterrupt
        return 1.0

    second.train_epoch = stop_in_round_two
    done = cells.run_cells(plan, {plan[0].name: first, plan[1].name: second}, [np.arange(8)] * 4)
    assert done == 1
    assert [c.status for c in plan] == ["ok", "ok"]
    assert len(plan[1].epoch_seconds) == 1


def test_every_framework_has_bench_modes_and_jax_benches_its_step_its_epoch_and_its_stock_idiom():
    from backprop_bench.backends import FRAMEWORKS

    modes = cells.framework_modes([16])
    assert set(modes) == set(FRAMEWORKS)
    # compile=False: the step jitted; compile=True: the epoch (lax.scan); stock: Flax + optax, jitted step
    assert modes["jax"] == [("step-jit", False, 1), ("epoch-scan", True, 1), ("stock-jit", False, 1)]
    planned = cells.plan_cells(["jax"], ["parallel", "sequential"], [64], ["cpu"], [16])
    assert [(c.framework, c.mode, c.strategy) for c in planned] == [
        ("jax", "step-jit", "parallel"),
        ("jax", "step-jit", "sequential"),
        ("jax", "epoch-scan", "parallel"),
        ("jax", "epoch-scan", "sequential"),
        ("jax", "stock-jit", "parallel"),
    ]


def test_keras_on_jax_benches_fit_and_steps_per_execution_keras_on_torch_fit_alone():
    """Neither takes compile=True (Keras on JAX always jits its step); Keras on torch runs one step per call."""
    modes = cells.framework_modes([1, 16, 64])
    assert modes["keras-jax"] == [("fit", False, 1), ("fit-spe16", False, 16), ("fit-spe64", False, 64)]
    assert modes["keras-torch"] == [("fit", False, 1)]
    assert cells.framework_modes([])["keras-jax"] == [("fit", False, 1)]


def test_each_keras_backend_but_tensorflow_gets_a_process_group_beside_its_backend():
    from backprop_bench.backends import FRAMEWORKS

    assert cells.process_groups(list(FRAMEWORKS)) == {
        "main": ["numpy", "torch", "tensorflow", "keras", "jax"],
        "keras-jax": ["keras-jax", "jax"],
        "keras-torch": ["keras-torch", "torch"],
    }
    assert cells.process_groups(["numpy", "keras"]) == {"main": ["numpy", "keras"]}  # Keras on TF stays
    assert cells.process_groups(["keras-torch"]) == {"keras-torch": ["keras-torch", "torch"]}  # no empty main
    assert cells.process_groups(["keras-jax", "numpy"]) == {"main": ["numpy"], "keras-jax": ["keras-jax", "jax"]}
    assert cells.CHILD_GROUPS == ("keras-jax", "keras-torch")


def test_scaling_keras_groups_hold_the_keras_framework_alone():
    from backprop_bench.backends import FRAMEWORKS

    assert cells.process_groups(list(FRAMEWORKS), pairs=False) == {
        "main": ["numpy", "torch", "tensorflow", "keras", "jax"],
        "keras-jax": ["keras-jax"],
        "keras-torch": ["keras-torch"],
    }


def test_the_scaling_set_is_each_frameworks_plain_and_fastest_mode_parallel_on_cpu():
    from backprop_bench.backends import FRAMEWORKS

    got = cells.plan_cells(
        list(FRAMEWORKS), ["parallel", "sequential"], [16, 1024], ["cpu", "cuda"], [16], cell_set="scaling"
    )
    assert {(c.strategy, c.device) for c in got} == {("parallel", "cpu")}
    modes = {fw: sorted({c.mode for c in got if c.framework == fw}) for fw in FRAMEWORKS}
    assert modes == {
        "numpy": ["fast", "plain"],
        "torch": ["compile", "eager"],
        "tensorflow": ["function", "jit"],
        "keras": ["fit", "jit-spe16"],
        "jax": ["epoch-scan", "step-jit"],
        "keras-jax": ["fit", "fit-spe16"],
        "keras-torch": ["fit"],
    }
    assert all(len([c for c in got if (c.framework, c.mode) == (fw, m)]) == 2 for fw in modes for m in modes[fw])


def test_cells_carry_their_group():
    got = cells.plan_cells(["keras-jax", "jax"], ["parallel"], [64], ["cpu"], [16], stock=False, group="keras-jax")
    assert [(c.name, c.group) for c in got] == [
        ("keras-jax-fit-parallel-b64-cpu", "keras-jax"),
        ("keras-jax-fit-spe16-parallel-b64-cpu", "keras-jax"),
        ("jax-step-jit-parallel-b64-cpu", "keras-jax"),
        ("jax-epoch-scan-parallel-b64-cpu", "keras-jax"),
    ]
    assert got[1].steps_per_execution == 16 and not got[1].compile
    assert {c.group for c in cells.plan_cells(["numpy"], ["parallel"], [64], ["cpu"], [])} == {"main"}


def test_the_default_set_keeps_fastest_at_every_batch_and_plain_at_the_smallest_parallel_only():
    grid = dict(strategies=["parallel", "sequential"], batches=[64, 256], devices=["cpu"], keras_spe=[16])
    got = [c.name for c in cells.plan_cells(["numpy", "torch", "keras"], **grid, cell_set="default")]
    assert sorted(got) == sorted(
        [
            f"{fw}-{fast}-parallel-b{b}-cpu"
            for fw, fast in (("numpy", "fast"), ("torch", "compile"), ("keras", "jit-spe16"))
            for b in (64, 256)
        ]
        + ["numpy-plain-parallel-b64-cpu", "torch-eager-parallel-b64-cpu", "keras-fit-parallel-b64-cpu"]
    )  # no stock idiom, no sequential cell, no plain mode at 256: the full set has them
    full = cells.plan_cells(["numpy", "torch", "keras"], **grid)
    assert set(got) < {c.name for c in full} and any(cells.is_stock(c.mode) for c in full)


def test_every_default_mode_is_a_mode_of_its_framework():
    for spe in ([16], [4, 16], []):
        modes = cells.framework_modes(spe)
        for fw, chosen in cells.default_modes(spe).items():
            names = [m for m, _, _ in modes[fw]]
            assert chosen[0] == names[0]  # the plain mode
            assert set(chosen) <= set(names), (fw, chosen)
    assert cells.default_modes([4, 16])["keras"][1] == "jit-spe16"  # the largest steps_per_execution


def test_a_child_group_keeps_no_stock_cells_in_the_default_set():
    got = cells.plan_cells(
        ["keras-torch", "torch"], ["parallel"], [64], ["cpu"], [16], group="keras-torch", cell_set="default"
    )
    assert [c.mode for c in got] == ["fit", "eager", "compile"]
