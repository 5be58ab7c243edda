"""Stage study@<framework>-<device>: every strategy x mode x seed of one framework, one process.

    python -m backprop_bench.study --framework torch --device cpu    # params.yaml: train:, study:
    dvc repro study@torch-cpu

The framework and mlflow are imported once per stage, not once per run. Each run is
train.run (its own MLflow run under one parent run per stage) and writes
runs/<framework>-<device>/<strategy>-<mode>-s<seed>/. A run that fails is recorded FAILED
and the others go on; the stage exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backprop_bench.backends import FRAMEWORKS, backend_class, limit_threads
from backprop_bench.io import exit_now
from backprop_bench.model import DEVICES, MODES, STRATEGIES, check, check_choice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyParams:
    """params.yaml's `study:` and the study's `train:` keys, checked."""

    frameworks: tuple[str, ...]
    strategies: tuple[str, ...]
    devices: tuple[str, ...]
    modes: tuple[str, ...]
    seeds: int  # runs seeds 0, 1, ..., seeds - 1
    epochs: int
    batch_size: int
    threads: int = 1  # CPU threads per framework (backends.limit_threads); 0: each framework's default

    def runs(self) -> Iterator[tuple[str, str, int]]:
        """(strategy, mode, seed) of every run of one stage, in run order."""
        for mode in self.modes:
            for seed in range(self.seeds):
                for strategy in self.strategies:
                    yield strategy, mode, seed


def read_study_params(path: str | Path) -> StudyParams:
    """params.yaml -> StudyParams; errors name the file and the option."""
    import yaml  # PyYAML comes with DVC and OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: params file not found")
    params = yaml.safe_load(path.read_text()) or {}
    study, train = params.get("study") or {}, params.get("train") or {}

    def names(key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = study.get(key)
        check(isinstance(value, list) and len(value) > 0, f"{path}: study.{key}", value, "must be a non-empty list")
        for item in value:
            check_choice(f"{path}: study.{key}", item, allowed)
        return tuple(value)

    def count(section: dict, key: str, where: str) -> int:
        value = section.get(key)
        check(isinstance(value, int) and value >= 1, f"{path}: {where}.{key}", value, "must be an integer >= 1")
        return value

    threads = study.get("threads", 1)
    ok = isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0
    check(ok, f"{path}: study.threads", threads, "must be an integer >= 0 (0: each framework's default)")
    return StudyParams(
        frameworks=names("frameworks", FRAMEWORKS),
        strategies=names("strategies", STRATEGIES),
        devices=names("devices", DEVICES),
        modes=names("modes", MODES),
        seeds=count(study, "seeds", "study"),
        epochs=count(train, "epochs", "train"),
        batch_size=count(train, "batch_size", "train"),
        threads=threads,
    )


def run_dir(framework: str, device: str, strategy: str, mode: str, seed: int) -> str:
    """Where one run's files go, relative to the project root."""
    return f"runs/{framework}-{device}/{strategy}-{mode}-s{seed}"


def overrides(framework: str, device: str, strategy: str, mode: str, seed: int, p: StudyParams) -> list[str]:
    """The Hydra overrides of one run: the study's values over conf/'s defaults."""
    return [
        f"framework={framework}",
        f"strategy={strategy}",
        f"device={device}",
        *(f"{key}={value}" for key, value in per_run(framework, device, strategy, mode, seed).items()),
        f"train.epochs={p.epochs}",
        f"train.batch_size={p.batch_size}",
        "tracking.plots=false",  # the report draws every run's curves; per-run PNGs cost ~0.8 s each
    ]


def per_run(framework: str, device: str, strategy: str, mode: str, seed: int) -> dict[str, object]:
    """The keys that differ between the runs of one strategy (the rest is composed once)."""
    return {"train.mode": mode, "train.seed": seed, "out_dir": run_dir(framework, device, strategy, mode, seed)}


@dataclass
class StageTimes:
    """Where a stage's seconds go (wall clock): what `make run` prints per stage."""

    runs: int = 0
    failed: int = 0
    total: float = 0.0  # run_stage, the imports of the framework and mlflow included
    in_runs: float = 0.0  # inside train.run: data, backend set-up and tracing, training, evaluation, files, MLflow
    training: float = 0.0  # the timed training loops (train_epoch only), all epochs
    first_epochs: float = 0.0  # of which the first epochs: tracing, compilation, warm-up

    def describe(self) -> str:
        rest, done = self.in_runs - self.training, self.runs - self.failed
        return (
            f"{done} of {self.runs} runs in {self.total:.1f} s: training loops {self.training:.1f} s "
            f"(first epochs {self.first_epochs:.1f} s), evaluation + files + MLflow {rest:.1f} s, "
            f"imports and set-up {self.total - self.in_runs:.1f} s"
        )


def run_stage(framework: str, device: str, p: StudyParams, root: Path) -> StageTimes:
    """Every run of one stage, in this process; a failed run is logged and counted."""
    import copy

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from backprop_bench import tracking
    from backprop_bench.config import register_configs, to_components
    from backprop_bench.train import CONF_DIR, run

    times, start = StageTimes(), time.perf_counter()
    register_configs()
    backend_class(framework, compile=False)  # import the framework here, so it counts as set-up, not as a run
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        # one composition per strategy (~0.4 s each); a run only changes mode, seed and out_dir
        composed = {
            s: compose("config", overrides=overrides(framework, device, s, "controlled", 0, p)) for s in p.strategies
        }
    t = to_components(composed[p.strategies[0]]).tracking
    parent, sweep = None, {}
    if t.enabled:
        uri, sweep_id = tracking.resolve_uri(t.uri, root), uuid.uuid4().hex[:12]
        parent = tracking.open_parent(uri, t.experiment, f"study-{framework}-{device}", sweep_id, {})
        sweep = {"sweep_id": sweep_id, "parent_run_id": parent.run_id, "uri": uri}
    ended, pool = False, {}  # pool: one backend per strategy, restarted for each run (no retracing)
    try:
        for strategy, mode, seed in p.runs():
            cfg = copy.deepcopy(composed[strategy])
            for key, value in per_run(framework, device, strategy, mode, seed).items():
                OmegaConf.update(cfg, key, value)
            c = to_components(cfg)
            times.runs += 1
            run_start = time.perf_counter()
            try:
                m = run(
                    c,
                    project_root=root,
                    out_dir=root / c.out_dir,
                    resolved=OmegaConf.to_container(cfg, resolve=True),
                    sweep=sweep,
                    pool=pool,
                )
                times.training += m.get("train_seconds") or 0.0
                times.first_epochs += m.get("first_epoch_seconds") or 0.0
            except Exception as err:  # recorded FAILED in MLflow by run(); the others go on
                log.error("FAILED %s %s seed %d: %s: %s", c.cell, mode, seed, type(err).__name__, err)
                times.failed += 1
            times.in_runs += time.perf_counter() - run_start
        ended = True
    finally:
        if parent is not None:
            tracking.close_parent(parent, ended)
    times.total = time.perf_counter() - start
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--device", required=True, choices=DEVICES)
    parser.add_argument("--params", default="params.yaml", help="its study: and train: sections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        p = read_study_params(args.params)
    except ValueError as err:
        print(f"study: {err}", file=sys.stderr)
        return 2
    from backprop_bench.train import terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM (dvc, a scheduler) ends the current run KILLED, not RUNNING
    limit_threads(p.threads)  # before run_stage imports the framework
    times = run_stage(args.framework, args.device, p, Path.cwd())
    print(f"study {args.framework}-{args.device}: {times.describe()}")
    return 1 if times.failed else 0


if __name__ == "__main__":
    exit_now(main())  # no teardown of mlflow and the framework (seconds a stage)
