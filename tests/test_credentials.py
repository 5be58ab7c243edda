"""A password written into a tracking URI never leaves the environment: one sentinel password goes
through every entry point (a tracking.uri override, $MLFLOW_TRACKING_URI, a multirun sweep, a
succeeding run, a failing run, a store that cannot take a password from the environment, `reap`) against a real
`mlflow server` on 127.0.0.1, and is then looked for, as bytes, in every file the runs and the
server wrote (Hydra's .hydra/ and logs, out_dir, the sweep dir, the server's database and
artifacts) and in everything the processes printed: it is nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_app, shrunk
from test_tracking_processes import free_port, mlflow_server, runs_in  # noqa: F401 - mlflow_server: a fixture

SENTINEL = "Sentinel-7f3a9c1e-pw"


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under root whose bytes hold secret."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_uri_password_is_in_no_output_param_tag_artifact_or_log_line(mlflow_server, tiny_npz, tmp_path):  # noqa: F811
    url, _ = mlflow_server
    secret_url = url.replace("http://", f"http://alice:{SENTINEL}@")
    project = tmp_path / "project"
    project.mkdir()

    def train(*args: str, uri: str | None = None, env: dict | None = None, name: str):
        base = [a for a in shrunk(tiny_npz, tmp_path / f"out-{name}", None) if a != "tracking=off"]
        base += ["tracking.plots=false", f"hydra.run.dir={tmp_path / f'hydra-{name}'}"]
        base += [f"tracking.uri={uri}"] if uri else []
        multirun = ["-m"] if "-m" in args else []  # Hydra wants it before the overrides
        rest = [a for a in args if a != "-m"]
        return run_app("backprop_bench.train", *multirun, *base, *rest, cwd=project, env_extra=env)

    refused = f"mysql://alice:{SENTINEL}@127.0.0.1:{free_port()}/mlflow"  # no variable to move it into
    done = {
        "override": train(uri=secret_url, name="override"),
        "env": train(env={"MLFLOW_TRACKING_URI": secret_url}, name="env"),
        "sweep": train(
            "-m", "train.seed=1,2", f"hydra.sweep.dir={tmp_path / 'multirun'}", uri=secret_url, name="sweep"
        ),
        "failing": train(f"data.path={tmp_path / 'no-such.npz'}", uri=secret_url, name="failing"),
        "refused": train(uri=refused, name="refused"),
        "reap": run_app("backprop_bench.tracking", "reap", "--tracking-uri", secret_url, cwd=project),
    }
    codes = {name: proc.returncode for name, proc in done.items()}
    assert codes == {"override": 0, "env": 0, "sweep": 0, "failing": 1, "refused": 1, "reap": 0}, {
        n: p.stderr[-2000:] for n, p in done.items()
    }

    # Each way in reached the server, authenticating from the environment; each run names the
    # store by its URI without the password.
    client, runs = runs_in(url)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED"] + ["FINISHED"] * 5, statuses  # 2 runs, a sweep's parent and 2 cells; 1 failed
    assert {r.data.params["tracking.uri"] for r in runs if r.data.params} == {"None", url}  # None: from the env
    (failed,) = [r for r in runs if r.info.status == "FAILED"]
    assert "no-such.npz" in failed.data.tags["error"]
    assert (tmp_path / "multirun" / "mlflow_sweep.json").read_text().count(url) == 1

    # ... and the password is nowhere: not on the terminal, not in a file, not in the store.
    printed = {name: proc.stdout + proc.stderr for name, proc in done.items()}
    assert [name for name, text in printed.items() if SENTINEL in text] == [], printed
    assert files_holding(tmp_path, SENTINEL) == []
    for name, text in printed.items():  # the warning, or the refusal, points to the supported ways
        assert "MLFLOW_TRACKING_PASSWORD" in text and "PGPASSFILE" in text, (name, text[-2000:])
    assert "mysql://alice:***@127.0.0.1" in printed["refused"] and not (tmp_path / "hydra-refused").exists()


def test_hydra_records_the_command_line_without_the_password(tiny_npz, tmp_path):
    # Tracking off: nothing is logged, yet Hydra writes every override into .hydra/ before
    # the run starts, so the password must be gone from the command line by then.
    args = shrunk(tiny_npz, tmp_path / "out", None, f"hydra.run.dir={tmp_path / 'h'}")
    proc = run_app("backprop_bench.train", *args, f"tracking.uri=http://alice:{SENTINEL}@127.0.0.1:1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracking.uri=http://127.0.0.1:1" in (tmp_path / "h" / ".hydra" / "overrides.yaml").read_text()
    assert SENTINEL not in proc.stdout + proc.stderr and files_holding(tmp_path, SENTINEL) == []
