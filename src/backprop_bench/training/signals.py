"""Stop signals: SIGTERM, SIGUSR2 and Ctrl-C end a run as an interrupt (MLflow KILLED, not RUNNING)."""

from __future__ import annotations

import signal

STOP_SIGNALS: list[int] = []  # the stop signals this process received (terminate_as_interrupt)


def terminate_as_interrupt() -> None:
    """SIGTERM, SIGUSR2 and Ctrl-C end the run as an interrupt: MLflow KILLED, not RUNNING.

    SIGTERM is how dvc, joblib and SLURM stop a job (scancel, the time limit); SIGUSR2 is
    the warning submitit has SLURM send before the time limit (signal_delay_s), whose own
    handler would requeue the job to resume from a checkpoint, which a run does not have.
    The handler raises KeyboardInterrupt and also records the signal: an exception raised
    while Python runs a finalizer (a library's __del__ or weakref callback) is printed and
    dropped, so fit() checks the record between epochs (raise_if_stopped). A SIGINT that
    the parent set to be ignored stays ignored.
    """

    def handler(signum: int, frame: object) -> None:
        STOP_SIGNALS.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    stops = [signal.SIGTERM, signal.SIGUSR2]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        stops.append(signal.SIGINT)
    try:
        for sig in stops:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread (a threaded launcher): keep the default
        pass


def raise_if_stopped() -> None:
    """Raise the interrupt a stop signal asked for, if it was swallowed on its way."""
    if STOP_SIGNALS:
        raise KeyboardInterrupt(f"signal {STOP_SIGNALS[-1]}")
