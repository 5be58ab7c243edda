"""What a run tells whoever listens: the seam between training and tracking.

``training.run.run`` calls these methods in this order, and nothing else of the outside
world: run_started, data_loaded, backend_built, epoch_ended (once per epoch),
outputs_staged (the run's files, written but not yet moved into place), and then exactly
one of run_ended or run_failed. The MLflow tracker (tracking/listener.py) implements them;
``Listener`` itself listens to nothing, for a run with tracking off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backprop_bench.core.dataset import Dataset
from backprop_bench.results.key import RunKey
from backprop_bench.results.metrics import EpochStats, RunMetrics

OUT_FILES = ("metrics.json", "history.csv", "weights.npz", "predictions.npy")  # what a run leaves in its folder


@dataclass(frozen=True)
class Outputs:
    """A run's four files, as values: what run writes, and what a listener may log."""

    metrics: RunMetrics
    history: Sequence[EpochStats]
    predictions: np.ndarray  # (N_test,) predicted labels


class Listener:
    """A run's events; each method does nothing here. run_id: the tracker's id of the run
    ("" without one), which metrics.json records."""

    run_id = ""

    def run_started(self, key: RunKey) -> None: ...

    def data_loaded(self, data: Dataset) -> None: ...

    def backend_built(self, info: Mapping[str, str]) -> None: ...

    def epoch_ended(self, stats: EpochStats) -> None: ...

    def outputs_staged(self, folder: Path, outputs: Outputs) -> None:
        """The files are in ``folder`` (staging); an exception here leaves the old outputs in place."""

    def run_ended(self, metrics: RunMetrics) -> None: ...

    def run_failed(self, error: BaseException) -> None: ...
