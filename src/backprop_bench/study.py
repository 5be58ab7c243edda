"""Stage study@<framework>-<device>: every strategy x mode x seed of one framework, one process.

    python -m backprop_bench.study --framework torch --device cpu    # params.yaml: train:, study:
    dvc repro study@torch-cpu

The framework and mlflow are imported once per stage, not once per run. Each run is
training.run (its own MLflow run under one parent run per stage) and writes
runs/<framework>-<device>/<strategy>-<mode>-s<seed>/. A run that fails is recorded FAILED
and the others go on; the stage exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from backprop_bench.backends import FRAMEWORKS, backend_class, limit_threads
from backprop_bench.core.files import exit_now
from backprop_bench.core.specs import DEVICES
from backprop_bench.results.grid import StudyParams, read_study_params
from backprop_bench.results.key import RunKey

log = logging.getLogger(__name__)


def overrides(key: RunKey, p: StudyParams) -> list[str]:
    """The Hydra overrides of one run: the study's values over conf/'s defaults."""
    return [
        f"framework={key.framework}",
        f"strategy={key.strategy}",
        f"device={key.device}",
        *(f"{name}={value}" for name, value in per_run(key).items()),
        f"train.epochs={p.epochs}",
        f"train.batch_size={p.batch_size}",
        "tracking.plots=false",  # the report draws every run's curves; per-run PNGs cost ~0.8 s each
    ]


def per_run(key: RunKey) -> dict[str, object]:
    """The keys that differ between the runs of one strategy (the rest is composed once)."""
    return {"train.mode": key.mode, "train.seed": key.seed, "out_dir": key.folder}


@dataclass
class StageTimes:
    """Where a stage's seconds go (wall clock): what `make run` prints per stage."""

    runs: int = 0
    failed: int = 0
    total: float = 0.0  # run_stage, the imports of the framework and mlflow included
    in_runs: float = (
        0.0  # inside training.run.run: data, backend set-up and tracing, training, evaluation, files, MLflow
    )
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

    from backprop_bench.tracking.listener import for_run
    from backprop_bench.tracking.sweep import close_parent, open_parent
    from backprop_bench.tracking.uri import resolve_uri
    from backprop_bench.training.config import CONF_DIR, register_configs, to_components
    from backprop_bench.training.run import run

    times, start = StageTimes(), time.perf_counter()
    register_configs()
    backend_class(framework, compile=False)  # import the framework here, so it counts as set-up, not as a run
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        # one composition per strategy (~0.4 s each); a run only changes mode, seed and out_dir
        composed = {
            s: compose("config", overrides=overrides(RunKey(framework, device, s, "controlled", 0), p))
            for s in p.strategies
        }
    t = to_components(composed[p.strategies[0]]).tracking
    parent, sweep = None, {}
    if t.enabled:
        uri, sweep_id = resolve_uri(t.uri, root), uuid.uuid4().hex[:12]
        parent = open_parent(uri, t.experiment, f"study-{framework}-{device}", sweep_id, {})
        sweep = {"sweep_id": sweep_id, "parent_run_id": parent.run_id, "uri": uri}
    ended, pool = False, {}  # pool: one backend per strategy, restarted for each run (no retracing)
    try:
        for key in p.keys(framework, device):
            cfg = copy.deepcopy(composed[key.strategy])
            for name, value in per_run(key).items():
                OmegaConf.update(cfg, name, value)
            c = to_components(cfg)
            times.runs += 1
            run_start = time.perf_counter()
            try:
                listener = for_run(c, root, OmegaConf.to_container(cfg, resolve=True), sweep)
                m = run(c, root / c.out_dir, root, listener, pool)
                times.training += m.train_seconds or 0.0
                times.first_epochs += m.first_epoch_seconds or 0.0
            except Exception as err:  # recorded FAILED in MLflow by the listener; the others go on
                log.error("FAILED %s: %s: %s", key.name, type(err).__name__, err)
                times.failed += 1
            times.in_runs += time.perf_counter() - run_start
        ended = True
    finally:
        if parent is not None:
            close_parent(parent, ended)
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
    from backprop_bench.training.signals import terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM (dvc, a scheduler) ends the current run KILLED, not RUNNING
    limit_threads(p.threads)  # before run_stage imports the framework
    times = run_stage(args.framework, args.device, p, Path.cwd())
    print(f"study {args.framework}-{args.device}: {times.describe()}")
    return 1 if times.failed else 0


if __name__ == "__main__":
    exit_now(main())  # no teardown of mlflow and the framework (seconds a stage)
