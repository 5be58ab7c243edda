"""The Hydra app: one run per call (a multirun: one per combination).

    python -m backprop_bench.train [group=option ...] [key=value ...]   # conf/config.yaml
    python -m backprop_bench.train -m framework=numpy,torch strategy=sequential,parallel
    python -m backprop_bench.train --cfg job                              # the composed config

A run writes metrics.json, history.csv, weights.npz and predictions.npy into ``out_dir``
and logs to MLflow (training/run.py). Outcomes and exit codes: docs/architecture.md, "A run".
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from backprop_bench.core.files import under
from backprop_bench.tracking.uri import redact, take_process_credentials
from backprop_bench.training.config import CONF_DIR, register_configs, to_components
from backprop_bench.training.run import run
from backprop_bench.training.signals import terminate_as_interrupt

log = logging.getLogger(__name__)

DEFAULT_DATA = "data/processed/mnist.npz"  # conf/data/mnist.yaml's path

register_configs()


def main() -> None:
    """The entry point: a password in tracking.uri or $MLFLOW_TRACKING_URI moves into the
    environment before Hydra records the command line (.hydra/, multirun.yaml, its error lines)."""
    try:
        take_process_credentials(sys.argv)
    except ValueError as err:  # TrackingUriError: a password this store cannot take from the environment
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    app()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from backprop_bench.tracking.listener import for_run
    from backprop_bench.tracking.sweep import read_sweep_info

    terminate_as_interrupt()
    c = to_components(cfg)  # validation first: a bad value fails before any work
    hc = HydraConfig.get()
    root = Path(hc.runtime.cwd)
    out_dir = under(root, c.out_dir) if c.out_dir else Path(hc.runtime.output_dir)
    sweep = read_sweep_info(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else {}
    make_default_data(c.data.name, c.data.path, root)
    listener = for_run(c, root, OmegaConf.to_container(cfg, resolve=True), sweep)  # checks the tracking URI
    try:
        run(c, out_dir, root, listener)
    except Exception as err:
        log.error("FAILED %s: %s: %s", c.key.name, type(err).__name__, redact(str(err)))
        raise


def make_default_data(name: str, path: str | None, root: Path) -> None:
    """Outside a checkout (no dvc.yaml) there is no pipeline to make the default data: make it
    as the pipeline's defaults would, from the embedded MNIST sample (offline), and say so.
    In a checkout, a missing file stays an error that points to `dvc repro`."""
    target = root / DEFAULT_DATA
    if name != "mnist" or path != DEFAULT_DATA or target.exists() or (root / "dvc.yaml").exists():
        return
    from backprop_bench.data import download, preprocess

    params = str(Path(download.__file__).with_name("embedded.yaml"))
    log.warning("%s not found and no dvc.yaml here: making it from the embedded MNIST sample (%s)", target, params)
    raw, cache = root / "data" / "raw", root / "data" / "downloads"
    steps = (
        download.main(["--params", params, "--out-dir", str(raw), "--cache-dir", str(cache), "--no-progress"]),
        preprocess.main(["--params", params, "--raw-dir", str(raw), "--out-dir", str(target.parent)]),
    )
    if any(steps):
        raise RuntimeError(f"could not make {target} from the embedded sample (see the errors above)")


if __name__ == "__main__":
    main()
