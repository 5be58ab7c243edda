"""The study's run grid: params.yaml's `study:` section, checked, and where each run's files go."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backprop_bench.backends import FRAMEWORKS
from backprop_bench.core.checks import read_section
from backprop_bench.core.specs import DEVICES, MODES, STRATEGIES
from backprop_bench.results.key import RunKey


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

    def keys(self, framework: str, device: str) -> Iterator[RunKey]:
        """Every run of one stage (study@<framework>-<device>), in run order."""
        for mode in self.modes:
            for seed in range(self.seeds):
                for strategy in self.strategies:
                    yield RunKey(framework, device, strategy, mode, seed)


def read_study_params(path: str | Path) -> StudyParams:
    """params.yaml -> StudyParams; a ParamsError names the file, the key, the value and the rule."""
    study = read_section(path, "study")
    frameworks, strategies = study.choices("frameworks", FRAMEWORKS), study.choices("strategies", STRATEGIES)
    devices, modes = study.choices("devices", DEVICES), study.choices("modes", MODES)
    seeds = study.integer("seeds", 1)
    threads = study.integer("threads", 0, 1, "must be an integer >= 0 (0: each framework's default)")
    train = read_section(path, "train")  # read second: a bad study: key is named even when train: is absent
    epochs, batch_size = train.integer("epochs", 1), train.integer("batch_size", 1)
    return StudyParams(frameworks, strategies, devices, modes, seeds, epochs, batch_size, threads)
