"""The study's run grid: params.yaml's `study:` section, checked, and where each run's files go."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backprop_bench.backends import FRAMEWORKS
from backprop_bench.core.checks import read_section
from backprop_bench.core.specs import DEVICES, MODES, STRATEGIES
from backprop_bench.results.key import RunKey

# Keras 3 on a backend other than TensorFlow: params.yaml study.keras_on: [jax, torch] adds the
# frameworks keras-jax and keras-torch, each in a stage of dvc.yaml's `keras-on` matrix.
KERAS_ON = ("jax", "torch")
STUDY_FRAMEWORKS = tuple(f for f in FRAMEWORKS if not f.startswith("keras-"))  # study.frameworks' choices


def stage_name(framework: str, device: str) -> str:
    """The dvc.yaml stage that runs one framework on one device: study@<framework>-<device>, or
    keras-on@<backend>-<device> for Keras on JAX or torch (a matrix of its own: its deps differ)."""
    if framework.startswith("keras-"):
        return f"keras-on@{framework.removeprefix('keras-')}-{device}"
    return f"study@{framework}-{device}"


@dataclass(frozen=True)
class StudyParams:
    """params.yaml's `study:` and the study's `train:` keys, checked. frameworks: study.frameworks,
    then keras-<backend> for each of study.keras_on."""

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
    frameworks, strategies = study.choices("frameworks", STUDY_FRAMEWORKS), study.choices("strategies", STRATEGIES)
    frameworks += tuple(f"keras-{b}" for b in study.choices("keras_on", KERAS_ON, default=[]))
    devices, modes = study.choices("devices", DEVICES), study.choices("modes", MODES)
    seeds = study.integer("seeds", 1)
    threads = study.integer("threads", 0, 1, "must be an integer >= 0 (0: each framework's default)")
    train = read_section(path, "train")  # read second: a bad study: key is named even when train: is absent
    epochs, batch_size = train.integer("epochs", 1), train.integer("batch_size", 1)
    return StudyParams(frameworks, strategies, devices, modes, seeds, epochs, batch_size, threads)
