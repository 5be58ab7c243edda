"""RunKey: the one name of a run, and every form that name takes (folder, MLflow name and tags).

A run of the study is fixed by five values; every other value of its config comes from
params.yaml and conf/, the same for all runs of a study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunKey:
    framework: str  # backends.FRAMEWORKS: numpy | torch | tensorflow | keras | jax | keras-jax | keras-torch
    device: str  # cpu | cuda | auto, as asked
    strategy: str  # parallel | sequential
    mode: str  # controlled | native
    seed: int

    @property
    def cell(self) -> str:
        """metrics.json's `cell`: framework-strategy-device, what the runs of one report row
        (before mode and seed) share."""
        return f"{self.framework}-{self.strategy}-{self.device}"

    @property
    def name(self) -> str:
        """The MLflow run name, unique within a study: numpy-parallel-cpu-controlled-s0."""
        return f"{self.cell}-{self.mode}-s{self.seed}"

    @property
    def stage(self) -> str:
        """The study stage that runs it (study@<stage>) and its folder under runs/."""
        return f"{self.framework}-{self.device}"

    @property
    def folder(self) -> str:
        """Where its files go, relative to the project root."""
        return f"runs/{self.stage}/{self.strategy}-{self.mode}-s{self.seed}"

    def fields(self) -> dict[str, str | int]:
        """The key's fields and its cell: what metrics.json and the MLflow tags start with."""
        return {"cell": self.cell, **asdict(self)}
