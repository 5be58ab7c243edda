"""The MLflow adapter: URI choice, run end states, and one full run read back from MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_in_process

from backprop_bench.tracking.run import MlflowRun, NullRun, flatten, open_run
from backprop_bench.tracking.uri import (
    TrackingUriError,
    redact,
    resolve_uri,
    take_process_credentials,
    validate_uri,
)
from backprop_bench.training.loop import Diverged

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def test_resolve_uri_config_then_env_then_project_sqlite(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert resolve_uri(None, tmp_path) == "http://server:5000"
    assert resolve_uri(f"sqlite:///{tmp_path}/y.db", tmp_path) == f"sqlite:///{tmp_path}/y.db"


def test_relative_sqlite_is_taken_from_the_project_root_and_made_absolute(monkeypatch, tmp_path):
    root = tmp_path.resolve()
    assert validate_uri("sqlite:///sweep.db", tmp_path) == f"sqlite:///{root}/sweep.db"
    (tmp_path / "db").mkdir()
    assert validate_uri("sqlite:///db/x.db?timeout=30", tmp_path) == f"sqlite:///{root}/db/x.db?timeout=30"
    assert validate_uri(f"sqlite:///{root}/x.db", tmp_path / "elsewhere") == f"sqlite:///{root}/x.db"
    assert validate_uri(f"sqlite:////{str(root).lstrip('/')}/x.db", tmp_path) == f"sqlite:///{root}/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_uri(None, tmp_path) == f"sqlite:///{root}/env.db"


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "postgresql://user@db/mlflow",
        "postgresql+psycopg2://db/mlflow",
        "mysql://db/mlflow",
        "databricks",
    ],
)
def test_servers_and_databases_pass_unchanged(uri, tmp_path):
    assert validate_uri(uri, tmp_path) == uri


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("file:./mlruns", "the file store (a path or file:) is not supported by MLflow 3.13 and later"),
        ("file:///abs/mlruns", "the file store"),
        ("./mlruns", "the file store"),
        ("/abs/mlruns", "the file store"),
        ("mlruns", "the file store"),
        ("foo://host/x", "unknown scheme foo:"),
        ("s3://bucket/runs", "unknown scheme s3:"),
        ("sqlite:///no/such/dir/x.db", "/no/such/dir does not exist"),
        ("sqlite://x.db", "a sqlite URI needs a file after three slashes"),
        ("sqlite:///", "a sqlite URI needs a file after three slashes"),
        ("sqlite:///:memory:", "a sqlite URI needs a file after three slashes"),
        ("http://", "no host after //"),
    ],
)
def test_a_uri_that_cannot_work_is_one_line_naming_the_option(uri, problem, tmp_path):
    with pytest.raises(TrackingUriError) as err:
        validate_uri(uri, tmp_path, "tracking.uri")
    message = str(err.value)
    assert message.startswith(f"tracking.uri={uri!r}: ") and problem in message and "\n" not in message
    assert "expected sqlite:///<file>.db" in message and "http(s)://" in message


def test_a_bad_environment_variable_is_named_as_such(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    with pytest.raises(TrackingUriError, match=r"^MLFLOW_TRACKING_URI='./mlruns': the file store"):
        resolve_uri(None, tmp_path)
    assert resolve_uri(f"sqlite:///{tmp_path}/x.db", tmp_path).endswith("/x.db")  # tracking.uri wins


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg2://user:S3CR@T@db:5432/mlflow", "postgresql+psycopg2://user:***@db:5432/mlflow"),
        ("https://bob:pw@server", "https://bob:***@server"),
        ("http://:pw@server:5000/x", "http://:***@server:5000/x"),
        ("mysql://u@h/db?charset=utf8&password=pw", "mysql://u@h/db?charset=utf8&password=***"),
        ("Error: 'postgresql://a:pw@h:1/d' and http://x:pw@z", "Error: 'postgresql://a:***@h:1/d' and http://x:***@z"),
        ("http://127.0.0.1:5000/a@b", "http://127.0.0.1:5000/a@b"),  # an @ in the path, no userinfo
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("no uri at all: user:pw@host", "no uri at all: user:pw@host"),
    ],
)
def test_redact_hides_every_uri_password(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize(
    ("uri", "clean", "env"),
    [
        (
            "http://bob:S%40CRET@127.0.0.1:5000",
            "http://127.0.0.1:5000",
            {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "S@CRET"},
        ),
        (
            "postgresql+psycopg2://bob:SECRET@db:5432/mlflow",
            "postgresql+psycopg2://bob@db:5432/mlflow",
            {"PGPASSWORD": "SECRET"},
        ),
        (
            "postgresql://bob@db/mlflow?password=SECRET&sslmode=require",
            "postgresql://bob@db/mlflow?sslmode=require",
            {"PGPASSWORD": "SECRET"},
        ),
    ],
)
def test_a_uri_password_moves_into_the_variable_its_client_reads(uri, clean, env, monkeypatch, tmp_path, caplog):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert validate_uri(uri, tmp_path) == clean
    assert {k: os.environ[k] for k in env} == env
    assert "SECRET" not in caplog.text and "MLFLOW_TRACKING_PASSWORD" in caplog.text and "PGPASSFILE" in caplog.text


def test_a_password_a_store_cannot_take_from_the_environment_is_refused_redacted(tmp_path):
    with pytest.raises(TrackingUriError) as err:
        validate_uri("mysql://bob:SECRET@db/mlflow", tmp_path, "tracking.uri")
    message = str(err.value)
    assert "SECRET" not in message and message.startswith("tracking.uri='mysql://bob:***@db/mlflow'")
    assert "MLFLOW_TRACKING_PASSWORD" in message and "PGPASSFILE" in message and "PGPASSWORD" in message


def test_the_command_line_and_the_environment_lose_their_passwords_before_hydra(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "https://env:SECRET1@server"}
    argv = ["train", "-m", "tracking.uri='http://cli:SECRET2@127.0.0.1:1'", "train.epochs=1"]
    take_process_credentials(argv, env)
    assert argv == ["train", "-m", "tracking.uri='http://127.0.0.1:1'", "train.epochs=1"]
    assert env == {
        "MLFLOW_TRACKING_URI": "https://server",
        "MLFLOW_TRACKING_USERNAME": "cli",  # the command line wins, as tracking.uri wins over the variable
        "MLFLOW_TRACKING_PASSWORD": "SECRET2",
    }


def test_a_queued_dvc_experiment_keeps_its_runs_in_the_project_store(monkeypatch, tmp_path):
    # DVC runs a queued experiment in <project>/.dvc/tmp/exps/<tmp>/ and deletes that copy afterwards.
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert resolve_uri(None, copy) == f"sqlite:///{project.resolve()}/mlflow.db"
    assert validate_uri("sqlite:///sweep.db", copy) == f"sqlite:///{project.resolve()}/sweep.db"
    # A DVC_ROOT the run does not lie in changes nothing.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "other"))
    assert resolve_uri(None, copy) == f"sqlite:///{copy.resolve()}/mlflow.db"


def test_a_directory_is_not_a_sqlite_file(tmp_path):
    (tmp_path / "d.db").mkdir()
    with pytest.raises(TrackingUriError, match="is a directory"):
        validate_uri("sqlite:///d.db", tmp_path)


def test_flatten_makes_dotted_string_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None"}


def test_tracking_off_is_a_null_run(tmp_path):
    run = open_run(False, None, "x", tmp_path, "name", {})
    assert isinstance(run, NullRun) and not isinstance(run, MlflowRun) and run.run_id == ""


def _only_run(uri: str, experiment: str = "backprop-bench"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_normal_exit_finishes_and_metrics_keep_their_steps(tracking_uri, tmp_path):
    with MlflowRun(tracking_uri, "backprop-bench", "r", {"framework": "numpy"}) as run:
        for epoch in (1, 2, 3):
            run.log_epoch(epoch, {"train_loss": 1.0 / epoch, "val_loss": float("nan")})
    client, r = _only_run(tracking_uri)
    assert r.info.status == "FINISHED" and r.info.run_name == "r" and r.data.tags["framework"] == "numpy"
    history = client.get_metric_history(r.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert "val_loss" not in r.data.metrics  # NaN (no val split) is not logged


def test_an_exception_fails_the_run_with_its_error_and_traceback(tracking_uri, tmp_path):
    with pytest.raises(ZeroDivisionError):
        with MlflowRun(tracking_uri, "backprop-bench", "r") as run:
            run.log_epoch(1, {"train_loss": 2.0})
            _ = 1 / 0
    client, r = _only_run(tracking_uri)
    assert r.info.status == "FAILED"
    assert r.data.tags["outcome"] == "failed" and "ZeroDivisionError" in r.data.tags["error"]
    assert r.data.metrics["train_loss"] == 2.0  # what was logged before the crash is kept
    text = Path(client.download_artifacts(r.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "1 / 0" in text


def test_a_failed_runs_error_traceback_params_and_tags_name_no_password(tracking_uri):
    secret = "postgresql://bob:SECRET@db/mlflow"
    with pytest.raises(RuntimeError):
        with MlflowRun(tracking_uri, "backprop-bench", "r", {"store": secret}) as run:
            run.log_params({"tracking.uri": secret})
            run.set_tags({"note": f"was {secret}"})
            raise RuntimeError(f"could not reach {secret}")
    client, r = _only_run(tracking_uri)
    traceback_txt = Path(client.download_artifacts(r.info.run_id, "traceback.txt")).read_text()
    shown = [
        r.data.tags["error"],
        r.data.tags["store"],
        r.data.tags["note"],
        r.data.params["tracking.uri"],
        traceback_txt,
    ]
    assert all("bob:***@db" in text and "SECRET" not in text for text in shown), shown


def test_ctrl_c_kills_the_run(tracking_uri):
    with pytest.raises(KeyboardInterrupt):
        with MlflowRun(tracking_uri, "backprop-bench", "r"):
            raise KeyboardInterrupt
    _, r = _only_run(tracking_uri)
    assert r.info.status == "KILLED" and r.data.tags["outcome"] == "killed"


def test_no_global_active_run_is_left_behind(tracking_uri):
    with MlflowRun(tracking_uri, "backprop-bench", "r"):
        assert mlflow.active_run() is None
    assert mlflow.active_run() is None


def test_a_whole_run_is_logged_completely(small_cfg, tracking_uri, tmp_path):
    metrics = run_in_process(small_cfg("train.epochs=3", "strategy=sequential", uri=tracking_uri), tmp_path)
    client, r = _only_run(tracking_uri)
    assert r.info.run_id == metrics["mlflow_run_id"]
    assert r.info.status == "FINISHED" and r.info.run_name == "numpy-sequential-cpu-controlled-s0"
    params = r.data.params
    assert params["train.epochs"] == "3" and params["strategy.name"] == "sequential"
    assert params["model.sizes"] == "[784, 128, 64, 10]" and params["optimizer.lr"] == "0.01"
    tags = r.data.tags
    for key in ("framework_version", "device_name", "blas", "data_sha256"):
        assert tags[key], key
    assert (tags["framework"], tags["strategy"], tags["device"], tags["outcome"]) == (
        "numpy",
        "sequential",
        "cpu",
        "finished",
    )
    assert len(tags["data_sha256"]) == 64 and "git_commit" in tags and tags["sweep_id"] == ""
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        assert [m.step for m in client.get_metric_history(r.info.run_id, name)] == [1, 2, 3], name
    for name in (
        "test_accuracy",
        "test_loss",
        "train_seconds",
        "first_epoch_seconds",
        "steady_epoch_seconds",
        "peak_memory_mb",
    ):
        assert r.data.metrics[name] == pytest.approx(metrics[name]), name
    assert r.data.metrics["steady_samples_per_second"] == pytest.approx(metrics["samples_per_second"])
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert artifacts == {
        "config.yaml",
        "curves.png",
        "confusion_matrix.png",
        "history.csv",
        "metrics.json",
        "predictions.npy",
        "weights.npz",
    }
    config = Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "epochs: 3" in config and "${" not in config  # resolved


def test_a_skipped_run_is_finished_and_tagged_skipped(small_cfg, tracking_uri, tmp_path):
    pytest.importorskip("backprop_bench.backends.numpy_backend")
    from backprop_bench.backends.numpy_backend import find_cupy

    if find_cupy()[0] is not None:
        pytest.skip("a GPU is usable here")
    metrics = run_in_process(small_cfg("device=cuda", uri=tracking_uri), tmp_path)
    _, r = _only_run(tracking_uri)
    assert metrics["status"] == "skipped" and r.info.status == "FINISHED"
    assert r.data.tags["outcome"] == "skipped" and "CuPy" in r.data.tags["skip_reason"]


def test_a_diverging_run_is_failed_in_mlflow(small_cfg, tracking_uri, tmp_path):
    cfg = small_cfg(
        "model.output_activation=identity", "model.loss=mse", "optimizer=sgd", "optimizer.lr=1e12", uri=tracking_uri
    )
    with pytest.raises(Diverged):
        run_in_process(cfg, tmp_path)
    _, r = _only_run(tracking_uri)
    assert r.info.status == "FAILED" and "diverged at epoch" in r.data.tags["error"]


# ---------------------------------------------------------------- every URI form, a whole run each


def _runs_in(uri: str):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("backprop-bench").experiment_id])


def _app_cfg(tiny_npz, tmp_path, *overrides):
    """The shrunk config with tracking on and tracking.uri left null unless an override sets it."""
    from conftest import compose

    return compose(
        f"data.path={tiny_npz}", "train.epochs=2", "train.batch_size=16", f"out_dir={tmp_path / 'out'}", *overrides
    )


@pytest.mark.parametrize("how", ["tracking.uri", "MLFLOW_TRACKING_URI"])
def test_a_relative_sqlite_uri_writes_beside_the_project_root(how, tiny_npz, tmp_path, monkeypatch, empty_mlflow_db):
    import shutil

    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)  # the directory the app is started in, as Hydra's runtime.cwd
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(empty_mlflow_db, root / "sweep.db")  # the schema only: creating it takes seconds
    if how == "tracking.uri":
        cfg = _app_cfg(tiny_npz, tmp_path, "tracking.uri=sqlite:///sweep.db")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///sweep.db")
        cfg = _app_cfg(tiny_npz, tmp_path)
    metrics = run_in_process(cfg, root)
    (r,) = _runs_in(f"sqlite:///{root}/sweep.db")
    assert r.info.run_id == metrics["mlflow_run_id"] and r.info.status == "FINISHED"
    assert Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(root / "mlartifacts")
    assert (root / "mlartifacts").is_dir() and not (root / "mlflow.db").exists()


def test_an_absolute_sqlite_uri(tiny_npz, tmp_path, tracking_uri, monkeypatch):
    assert tracking_uri.startswith("sqlite:////")
    monkeypatch.chdir(tmp_path)
    metrics = run_in_process(_app_cfg(tiny_npz, tmp_path, f"tracking.uri={tracking_uri}"), tmp_path / "elsewhere")
    (r,) = _runs_in(tracking_uri)
    assert r.info.run_id == metrics["mlflow_run_id"] and r.info.status == "FINISHED"


def test_tracking_off_logs_nothing_even_with_a_bad_environment_variable(tiny_npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:./mlruns")
    metrics = run_in_process(_app_cfg(tiny_npz, tmp_path, "tracking=off"), tmp_path)
    assert metrics["status"] == "finished" and metrics["mlflow_run_id"] == ""
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()


def test_a_bad_uri_fails_the_run_before_any_work(tiny_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    with pytest.raises(TrackingUriError, match=r"^MLFLOW_TRACKING_URI='foo://bar': unknown scheme foo:"):
        run_in_process(_app_cfg(tiny_npz, tmp_path), tmp_path)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- lost runs


def _running_run(uri: str, tags: dict) -> str:
    """A RUNNING run with the given tags, as a process that died would have left it."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("backprop-bench")
    exp_id = exp.experiment_id if exp else client.create_experiment("backprop-bench")
    return client.create_run(exp_id, tags=tags, run_name="left").info.run_id


def _dead_pid() -> int:
    """A pid no process can have: the kernel's pid_max itself."""
    return int(Path("/proc/sys/kernel/pid_max").read_text())


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")


@needs_proc
def test_every_run_records_its_host_pid_and_process_start(tracking_uri):
    import os
    import socket

    with MlflowRun(tracking_uri, "backprop-bench", "r"):
        pass
    _, r = _only_run(tracking_uri)
    tags = r.data.tags
    assert tags["host"] == socket.gethostname() and tags["pid"] == str(os.getpid())
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert tags["pid_start"] == stat[stat.rindex(")") + 2 :].split()[19]  # field 22


@needs_proc
def test_reap_fails_dead_and_reused_pids_of_this_host_only(tracking_uri):
    import os
    import socket

    from backprop_bench.tracking.reaper import process_tags, reap

    host, me = socket.gethostname(), process_tags()
    with MlflowRun(tracking_uri, "backprop-bench", "alive") as alive:  # this test process: live
        assert alive.tags["pid_start"] == me["pid_start"]
        dead = _running_run(tracking_uri, {"host": host, "pid": str(_dead_pid()), "pid_start": "1"})
        reused = _running_run(tracking_uri, {"host": host, "pid": str(os.getpid()), "pid_start": "1"})
        elsewhere = {"host": host + "-elsewhere", "pid": str(_dead_pid()), "pid_start": "1"}
        other_host = _running_run(tracking_uri, elsewhere)
        no_pid = _running_run(tracking_uri, {"host": host})  # from before these tags: unknowable
        reaped = reap(tracking_uri, "backprop-bench")
        client = MlflowClient(tracking_uri)
        assert client.get_run(alive.run_id).info.status == "RUNNING"
    assert sorted(reaped) == sorted([dead, reused])
    for run_id, why in ((dead, "no longer exists"), (reused, "now belongs to another process")):
        r = client.get_run(run_id)
        assert r.info.status == "FAILED" and r.data.tags["outcome"] == "lost", run_id
        assert why in r.data.tags["lost_reason"] and r.data.tags["lost_noticed_at"].startswith("20")
    for run_id in (other_host, no_pid):
        r = client.get_run(run_id)
        assert r.info.status == "RUNNING" and "outcome" not in r.data.tags
    assert client.get_run(alive.run_id).info.status == "FINISHED"
    assert reap(tracking_uri, "backprop-bench") == []  # nothing left to do
    assert reap(tracking_uri, "no-such-experiment") == []


@needs_proc
def test_a_new_run_reaps_the_lost_runs_first(tracking_uri):
    import socket

    lost = _running_run(tracking_uri, {"host": socket.gethostname(), "pid": str(_dead_pid())})
    with MlflowRun(tracking_uri, "backprop-bench", "next") as run:
        client = MlflowClient(tracking_uri)
        r = client.get_run(lost)
        assert r.info.status == "FAILED" and r.data.tags["outcome"] == "lost"
        assert client.get_run(run.run_id).info.status == "RUNNING"


@needs_proc
def test_a_process_reaps_once_per_store_then_again_after_reap_every_s(tracking_uri, monkeypatch):
    """A study stage opens 12 runs in a row: the first reaps, the next ones within REAP_EVERY_S don't."""
    import socket

    from backprop_bench.tracking import reaper as tracking

    dead = {"host": socket.gethostname(), "pid": str(_dead_pid())}
    with MlflowRun(tracking_uri, "backprop-bench", "first"):
        pass
    client = MlflowClient(tracking_uri)
    lost = _running_run(tracking_uri, dead)
    with MlflowRun(tracking_uri, "backprop-bench", "second"):
        assert client.get_run(lost).info.status == "RUNNING"  # reaped a moment ago: not again yet
    monkeypatch.setattr(tracking, "REAP_EVERY_S", 0.0)
    with MlflowRun(tracking_uri, "backprop-bench", "third"):
        assert client.get_run(lost).info.status == "FAILED"


def test_reap_cli_refuses_a_bad_uri(tmp_path, capsys):
    from backprop_bench.tracking.__main__ import main

    assert main(["reap", "--tracking-uri", "file:./mlruns"]) == 2
    assert "reap: --tracking-uri='file:./mlruns': the file store" in capsys.readouterr().err


def test_a_run_in_a_slurm_job_is_tagged_with_the_job_scancel_takes(monkeypatch):
    from backprop_bench.tracking.reaper import process_tags, slurm_job_id

    assert slurm_job_id({}) == ""
    assert slurm_job_id({"SLURM_JOB_ID": "42"}) == "42"
    # A task of a job array (a sweep's cell): SLURM_JOB_ID is the task's own number, but squeue,
    # sacct and scancel name it <array job>_<task>.
    assert slurm_job_id({"SLURM_JOB_ID": "50", "SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "7"}) == "42_7"
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert "slurm_job_id" not in process_tags()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert process_tags()["slurm_job_id"] == "42"
