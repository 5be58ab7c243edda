"""Load test of an MLflow tracking server, as a team's sweeps load it (docs/cluster.md).

PROCESSES x THREADS runs at once: each thread opens one run, and once every run is open (all
RUNNING together) logs one batch of a training epoch's metrics per epoch, then a small
artifact, then ends its run FINISHED. It writes what it measured as JSON:

    source <state folder>/env    # MLFLOW_TRACKING_URI and the project user's credentials
    python scripts/mlflow_load.py --out reports/load.json   # 4 x 16 runs, 50 epochs each

throughput: log calls (one log_batch per epoch) per second over the whole logging phase;
latency: each log call's wall time in ms (p50, p99, max), retries by the client included.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from pathlib import Path

from backprop_bench.core.files import atomic_write

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")  # one batch per epoch, as a run logs


def one_run(client, experiment_id: str, name: str, epochs: int, start: threading.Barrier) -> tuple[list[float], float]:
    """A run's life: open, wait for all, one log_batch per epoch, an artifact, FINISHED.
    Seconds per log call, and when its last one returned (epoch seconds)."""
    from mlflow.entities import Metric

    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    try:
        start.wait()  # every run of every process is RUNNING before any logs
        latencies = []
        for epoch in range(epochs):
            now = int(time.time() * 1000)
            loss = 1.0 / (epoch + 1)
            metrics = [Metric(key, loss if "loss" in key else 1 - loss, now, epoch) for key in METRICS]
            began = time.perf_counter()
            client.log_batch(run_id, metrics=metrics)
            latencies.append(time.perf_counter() - began)
        done = time.time()
        client.log_text(run_id, f"{name}: {epochs} epochs\n", "summary.txt")
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # never left RUNNING
        raise
    client.set_terminated(run_id, "FINISHED")
    return latencies, done


def one_process(index: int, experiment_id: str, threads: int, epochs: int, everyone: mp.Barrier, out: mp.Queue):
    """THREADS runs in this process; the threads' barrier waits for every process's (action)."""
    os.environ["MLFLOW_HTTP_POOL_MAXSIZE"] = str(threads)  # a connection per thread, none discarded
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # MLFLOW_TRACKING_URI and the credentials from the environment
    began: list[float] = []

    def all_open() -> None:  # run by the last thread to arrive: wait for the other processes too
        everyone.wait(timeout=600)
        began.append(time.time())

    start = threading.Barrier(threads, action=all_open)
    results: list[tuple[list[float], float]] = [([], 0.0)] * threads
    errors: list[str] = []

    def work(t: int) -> None:
        try:
            results[t] = one_run(client, experiment_id, f"load-p{index}-t{t}", epochs, start)
        except Exception as error:  # counted and reported, not raised: one thread must not hide the others
            errors.append(f"load-p{index}-t{t}: {type(error).__name__}: {error}")
            start.abort()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(([x for lat, _ in results for x in lat], began, max(done for _, done in results), errors))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16, help="runs per process")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--experiment", default=f"load-{int(time.time())}")
    parser.add_argument("--out", type=Path, default=Path("reports/load.json"))
    args = parser.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        parser.error("MLFLOW_TRACKING_URI: expected the server's http(s):// URI (source <state folder>/env)")

    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient().create_experiment(args.experiment)
    ctx = mp.get_context("spawn")  # no forked mlflow client state
    everyone, out = ctx.Barrier(args.processes), ctx.Queue()
    procs = [
        ctx.Process(target=one_process, args=(i, experiment_id, args.threads, args.epochs, everyone, out))
        for i in range(args.processes)
    ]
    for p in procs:
        p.start()
    gathered = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    latencies = [x for lat, *_ in gathered for x in lat]
    errors = [e for *_, errs in gathered for e in errs]
    # The logging phase: from the moment every run was open to the last log call's return.
    starts = [t for _, began, _, _ in gathered for t in began]
    wall = max(done for _, _, done, _ in gathered) - min(starts) if starts else float("nan")
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    report = {
        "experiment": args.experiment,
        "runs": args.processes * args.threads,
        "processes": args.processes,
        "threads": args.threads,
        "epochs": args.epochs,
        "metrics_per_call": len(METRICS),
        "log_calls": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "log_calls_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p99": round(percentile(ms, 99), 1),
            "max": round(ms[-1], 1),
        },
    }
    atomic_write(args.out, json.dumps(report, indent=2) + "\n")  # a reader sees the old report or the new one
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
