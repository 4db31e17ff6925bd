"""The tracking store never breaks, and a tracked run always ends FINISHED, FAILED or KILLED.

Parallel starts on a fresh SQLite store, failing artifact uploads, wrong or unreachable URIs, read-only
store folders, a busy database; plus the bookkeeping the job needs (has_metric, mark_failed) and the
file mode of checkpoints.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from seal_exp import tracking
from seal_exp.config import ConfigError, InvalidArgument, RunFailed, build
from seal_exp.run import checkpoint
from seal_exp.tracking import FAILURE_TAG, NOTE_TAG, MLflowTracker, NoTracker
from seal_exp.train import train
from tests.conftest import REPO, SMOKE, make_cfg, run_cli, tracked_runs

JOBS = 4

# Imports first, then waits for the "go" file, so the jobs hit the fresh store at the same instant.
# Even jobs open a sweep parent (SweepLaunchCallback's path), odd ones a job run: both create the store.
JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from seal_exp.tracking import MLflowTracker
    import mlflow.tracking

    uri, job, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    Path(f"{go}.ready{job}").touch()
    while not go.exists():
        time.sleep(0.005)
    tracker = MLflowTracker(uri, "faults")
    if job % 2:
        tracker.start(f"job {job}", {"job": str(job)}, {"job": str(job)})
    else:
        tracker.run_id = tracker.open_parent(f"sweep {job}", {"job": str(job)})
    tracker.log_metrics({"m": float(job)}, step=1)
    tracker.finish("FINISHED")
    """
)


@pytest.mark.slow
def test_parallel_starts_on_a_fresh_store_all_finish(tmp_path):
    """Without the store lock MLflow's migrations race ("table _alembic_tmp_... already exists",
    "duplicate column name: step") and can leave the store unusable: 5 of 5 trials failed so."""
    uri, go = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, uri, str(job), str(go)], cwd=REPO, stderr=subprocess.PIPE
        )
        for job in range(JOBS)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready*"))) < JOBS and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert sorted(r.data.tags["job"] for r in runs) == [str(j) for j in range(JOBS)]
    assert all(r.info.status == "FINISHED" for r in runs)
    after = MLflowTracker(uri, "faults")  # the store is still usable
    after.start("after", {}, {})
    after.finish("FINISHED")
    assert client.get_run(after.run_id).info.status == "FINISHED"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for this module's in-process tests (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def _tracker(store: str, request: pytest.FixtureRequest) -> MLflowTracker:
    return MLflowTracker(store, request.node.name)


def test_failed_run_is_failed_even_when_its_traceback_cannot_be_uploaded(store, request, monkeypatch, caplog):
    tracker = _tracker(store, request)
    tracker.start("run", {"a": "1"}, {})

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/read-only/artifacts")

    monkeypatch.setattr(tracker.client, "log_text", refuse)
    with caplog.at_level(logging.WARNING, logger="seal_exp.tracking"):
        tracker.finish("FAILED", "Traceback (most recent call last):\nRuntimeError: boom")
    run = MlflowClient(store).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].endswith("RuntimeError: boom")
    assert "traceback was not attached" in caplog.text


def test_artifact_failures_never_fail_the_run_and_warn_once(store, request, monkeypatch, caplog, tmp_path):
    tracker = _tracker(store, request)
    tracker.start("run", {}, {})
    calls: list[str] = []

    def refuse(run_id: str, path: str, artifact_path: str | None = None) -> None:
        calls.append(path)
        raise PermissionError(13, "Permission denied", "/read-only/artifacts")

    monkeypatch.setattr(tracker.client, "log_artifact", refuse)
    monkeypatch.setattr(tracker.client, "log_artifacts", refuse)
    monkeypatch.setattr(tracker.client, "log_text", refuse)
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / ".hydra").mkdir()
    with caplog.at_level(logging.WARNING, logger="seal_exp.tracking"):
        tracker.log_artifact(tmp_path / ".hydra", ".hydra")
        tracker.log_artifact(tmp_path / "summary.json")
        tracker.finish("FAILED", "Traceback: boom")
    assert len(calls) == 1  # after the first failure the run's uploads are skipped, not each retried
    assert caplog.text.count("could not attach") == 1
    assert MlflowClient(store).get_run(tracker.run_id).info.status == "FAILED"


def test_artifacts_are_uploaded_when_the_store_works(store, request, tmp_path, monkeypatch):
    """Without ``artifact_location`` they go beside the SQLite file, not to ./mlruns where one stands."""
    monkeypatch.chdir(tmp_path)
    tracker = _tracker(store, request)
    tracker.start("run", {}, {})
    (tmp_path / "summary.json").write_text("{}")
    tracker.log_artifact(tmp_path / "summary.json")
    tracker.log_artifact(tmp_path / "missing.png")  # a file the run did not write: nothing to attach
    tracker.finish("FAILED", "Traceback: boom")
    client = MlflowClient(store)
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"summary.json", "traceback.txt"}
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    assert not (tmp_path / "mlruns").exists()
    beside = Path(store[len("sqlite:///") :]).parent / "mlartifacts"
    assert (beside / tracker.run_id / "artifacts" / "summary.json").is_file()


@pytest.mark.parametrize("uri", ["foo://bar", "s3://bucket/mlflow", "mlflow.db"])
def test_unknown_or_relative_tracking_uri_is_refused_when_built(tmp_path, uri):
    cfg = make_cfg(tmp_path, [f"tracking.uri={uri}"])
    with pytest.raises(ConfigError) as info:
        build(cfg.tracking, "tracking")
    message = str(info.value)
    assert message.startswith(f"tracking.uri={uri!r} is invalid")
    if "://" in uri:
        assert "sqlite:////abs/path/mlflow.db" in message and "http(s)://" in message
        assert "databricks" in message
    else:
        assert "absolute" in message
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////tmp/x/mlflow.db",
        "/tmp/x/mlruns",
        "file:///tmp/x/mlruns",
        "http://login1:5000",
        "https://mlflow.example.org",
        "databricks",
        "databricks://profile",
        "postgresql+psycopg2://user@db/mlflow",
        "mysql://user@db/mlflow",
    ],
)
def test_accepted_tracking_uris_build_without_contacting_the_store(uri, monkeypatch):
    """A folder with MLflow told to open one (MLFLOW_ALLOW_FILE_STORE), a database with its driver."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(tracking, "_missing_driver", lambda uri: None)  # as where the driver is installed
    tracker = MLflowTracker(uri, "e", writable=False)
    assert tracker._client is None


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_in_seconds_naming_the_key(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    tracker = build(
        make_cfg(tmp_path, ["tracking=mlflow_server", f"tracking.uri={uri}"]).tracking, "tracking"
    )
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        tracker.find_runs("identity")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith(f"tracking.uri={uri!r} is invalid: no MLflow tracking server there")
    assert "mlflow server" in message and "tracking=mlflow" in message


@pytest.mark.slow
def test_unreachable_server_stops_the_cli_with_a_configuration_error(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    proc = run_cli(
        [*SMOKE, f"paths.root={tmp_path}", "tracking=mlflow_server", f"tracking.uri={uri}"],
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"seal-exp: configuration error: tracking.uri={uri!r} is invalid"), last
    assert time.monotonic() - started < 60
    assert not list(tmp_path.glob("outputs/*/*/summary.json"))


@pytest.mark.slow
def test_a_sweep_with_an_unreachable_server_stops_before_any_job(tmp_path):
    """Hydra turns a callback's error into a warning; the sweep must not start jobs that would each refuse."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    sweep = tmp_path / "sweep"
    tracking = ["tracking=mlflow_server", f"tracking.uri={uri}"]
    proc = run_cli(
        ["-m", *SMOKE, "seed=0,1", f"paths.root={tmp_path}", *tracking, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith(f"seal-exp: configuration error: tracking.uri={uri!r} is invalid"), line
    assert line.endswith("No job of the sweep was started.")
    assert not sweep.exists()


def test_read_only_store_folder_is_refused_up_front(tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: ``os.access`` stands in for the mount."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the folder store (mlruns) too
    folder = tmp_path / "shared"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        tracking.os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode)
    )
    for uri in (f"sqlite:///{folder}/mlflow.db", f"sqlite:///{folder}/sub/mlflow.db", str(folder / "mlruns")):
        cfg = make_cfg(tmp_path, [f"tracking.uri={uri}"])
        with pytest.raises(ConfigError) as info:
            build(cfg.tracking, "tracking")
        assert f"{folder} cannot be written" in str(info.value)
        assert str(info.value).startswith(f"tracking.uri={uri!r} is invalid")
    MLflowTracker(f"sqlite:///{folder}/mlflow.db", "e", writable=False)  # only read: fine


def test_read_only_store_file_is_refused_up_front(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    real_access = os.access
    monkeypatch.setattr(
        tracking.os, "access", lambda p, mode: False if Path(p) == db else real_access(p, mode)
    )
    with pytest.raises(InvalidArgument, match=f"{db} cannot be written"):
        MLflowTracker(f"sqlite:///{db}", "e")


def test_a_busy_database_is_retried_and_other_errors_are_not(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    attempts: list[int] = []

    def locked_twice() -> str:
        attempts.append(1)
        if len(attempts) <= 2:
            try:
                raise sqlite3.OperationalError("database is locked")
            except sqlite3.OperationalError as exc:  # as MLflow's SQLAlchemy store wraps it
                raise MlflowException(f"(sqlite3.OperationalError) {exc}") from exc
        return "logged"

    assert tracking._retrying(locked_twice) == "logged" and len(attempts) == 3

    def broken() -> None:
        attempts.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 'x' not found")

    attempts.clear()
    with pytest.raises(MlflowException, match="not found"):
        tracking._retrying(broken)
    assert len(attempts) == 1


def test_has_metric_sees_what_the_run_logged_over_its_attempts(store, request):
    assert NoTracker().has_metric("teacher/test/acc") is False
    tracker = _tracker(store, request)
    assert tracker.has_metric("teacher/test/acc") is False  # no active run
    tracker.start("run", {}, {})
    assert tracker.has_metric("teacher/test/acc") is False
    tracker.log_metrics({"teacher/test/acc": 91.5}, step=0)
    assert tracker.has_metric("teacher/test/acc") and not tracker.has_metric("student/test/acc")
    resumed = _tracker(store, request)  # the next attempt of the job reattaches to the same run
    assert resumed.reattach(tracker.run_id, {})
    assert resumed.has_metric("teacher/test/acc")


def test_mark_failed_closes_another_run_with_its_reason(store, request):
    assert NoTracker().mark_failed("abc", "why") is False
    interrupted = _tracker(store, request)
    interrupted.start("interrupted", {}, {})  # left RUNNING, as a killed job leaves it
    tracker = _tracker(store, request)
    tracker.start("current", {}, {})
    reason = "last.pt refused: it was written by another job identity"
    assert tracker.mark_failed(interrupted.run_id, reason)
    client = MlflowClient(store)
    failed = client.get_run(interrupted.run_id)
    assert failed.info.status == "FAILED" and failed.info.end_time is not None
    assert failed.data.tags[FAILURE_TAG] == reason and reason in failed.data.tags[NOTE_TAG]
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # the active run is untouched
    assert tracker.mark_failed("0" * 32, reason) is False  # no such run


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_get_the_mode_a_plain_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert checkpoint.current_umask() == umask
        path = checkpoint.atomic_save({"w": torch.zeros(2)}, tmp_path / "sub" / "last.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert torch.equal(checkpoint.load(path)["w"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


# ---- a store MLflow cannot open: refused naming tracking.uri, before any data is read ----------------


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("{d}", "MLflow opens a folder as its store (the file store) only with MLFLOW_ALLOW_FILE_STORE=true"),
        ("file:{d}", "MLflow opens a folder as its store (the file store) only with MLFLOW_ALLOW_FILE_STORE"),
        ("file://{d}", "use a SQLite file there (sqlite:///{d}/mlflow.db), or export that variable"),
        ("file://login1{d}", "it names the host 'login1'; a folder on this machine is file:///abs/folder"),
        ("sqlite:///{d}", "{d} is a folder; name the database file in it (sqlite:///{d}/mlflow.db)"),
        ("{d}/notes.txt", "{d}/notes.txt is a file that is no SQLite database (an MLflow store is a SQLite"),
        ("file://{d}/notes.txt", "use a new file (sqlite:///{d}/mlflow.db), or tracking=mlflow"),
        ("{d}/empty.db", "{d}/empty.db is a SQLite file: name it as one, sqlite:///{d}/empty.db"),
        ("sqlite:///{d}/notes.txt", "{d}/notes.txt is not a SQLite database (an MLflow store is one)"),
        ("postgresql+nosuchdriver://seal:secret@db/mlflow", "SQLAlchemy cannot use it (NoSuchModuleError"),
    ],
)
def test_a_store_mlflow_cannot_open_is_refused_when_built(tmp_path, monkeypatch, given, says):
    """Each failed at the job's first contact with the store, in a traceback (MLflow refuses a folder
    unless told to open one; SQLite cannot open a folder or a text file as a database)."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a database\n")
    (folder / "empty.db").touch()  # SQLite opens an empty file as a new database
    uri = given.format(d=folder)
    with pytest.raises(ConfigError) as refused:
        build(make_cfg(tmp_path, [f"tracking.uri={uri}"]).tracking, "tracking")
    message = str(refused.value)
    shown = uri.replace(":secret@", ":***@")  # a password is never printed
    assert message.startswith(f"tracking.uri={shown!r} is invalid: "), message
    assert says.format(d=folder) in message and "\n" not in message
    assert sorted(p.name for p in folder.iterdir()) == ["empty.db", "notes.txt"]  # nothing created


def test_a_folder_store_is_used_when_mlflow_is_told_to_open_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracker = MLflowTracker(f"file://{tmp_path}/mlruns", "e")
    tracker.start("run", {}, {})
    tracker.finish("FINISHED")
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_an_unreachable_database_fails_in_seconds_naming_the_key(tmp_path, monkeypatch):
    """MLflow retries a database connection for long; the probe answers in seconds."""
    monkeypatch.setattr(tracking, "_missing_driver", lambda uri: None)  # as where its driver is installed
    port = _closed_port()
    tracker = MLflowTracker(f"postgresql://seal:secret@127.0.0.1:{port}/mlflow", "e")
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        tracker.find_runs("identity")
    assert time.monotonic() - started < 10
    message = str(refused.value)
    assert message.startswith(
        f"tracking.uri='postgresql://seal:***@127.0.0.1:{port}/mlflow' is invalid: no database answers at "
        f"127.0.0.1:{port}"
    )
    assert "tracking=mlflow" in message and "secret" not in message


def test_databricks_without_credentials_is_refused_at_first_contact(tmp_path, monkeypatch):
    for name in ("HOST", "TOKEN", "CONFIG_PROFILE", "CONFIG_FILE"):
        monkeypatch.delenv(f"DATABRICKS_{name}", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    tracker = build(make_cfg(tmp_path, ["tracking.uri=databricks"]).tracking, "tracking")
    with pytest.raises(ConfigError) as refused:
        tracker.find_runs("identity")
    message = str(refused.value)
    assert message.startswith("tracking.uri='databricks' is invalid: the MLflow store there cannot be used (")
    assert "DATABRICKS_HOST and DATABRICKS_TOKEN" in message and "\n" not in message


def _corrupt(db: Path) -> None:
    """Every page of a SQLite file after its first overwritten, and its change counter moved on so that
    open connections read the pages again: SQLite then says "database disk image is malformed"."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    page = 65536 if page == 1 else page  # the file format's encoding of the largest page size
    data[page:] = b"\xa5" * (len(data) - page)
    data[24:28] = (int.from_bytes(data[24:28], "big") + 1).to_bytes(4, "big")
    db.write_bytes(bytes(data))


def test_a_damaged_store_is_refused_at_first_contact(store, request, tmp_path):
    _tracker(store, request).experiment_id()  # the module's store exists, with tables to damage
    damaged = tmp_path / "mlflow.db"
    damaged.write_bytes(Path(store[len("sqlite:///") :]).read_bytes())
    _corrupt(damaged)
    with pytest.raises(ConfigError) as refused:
        MLflowTracker(f"sqlite:///{damaged}", "e").find_runs("identity")
    message = str(refused.value)
    assert message.startswith(
        f"tracking.uri='sqlite:///{damaged}' is invalid: the MLflow store there cannot be used (database "
        "disk image is malformed (SQLite)): its file is damaged: restore it from a backup, or point "
        "tracking.uri at a new file"
    )
    assert "\n" not in message


# ---- a store that fails mid-job: one line, the run closed where the store allows it -----------------


def _raising(error: str) -> None:
    """What MLflow's SQL store raises when SQLite fails mid-write (as seen on a store made read-only): its
    exception, from SQLAlchemy's, whose first line is a note about autoflush, from SQLite's."""
    import sqlalchemy.exc

    try:
        raise sqlite3.OperationalError(error)
    except sqlite3.OperationalError as exc:
        try:
            raise sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", [], exc) from exc
        except sqlalchemy.exc.OperationalError as wrapped:
            wrapped.add_detail("raised as a result of Query-invoked autoflush; consider using a session...")
            raise MlflowException(str(wrapped)) from wrapped


@pytest.mark.parametrize(
    ("error", "says"),
    [
        ("unable to open database file", "its file or folder can no longer be opened or written"),
        ("attempt to write a readonly database", "(a read-only remount, a full disk, a moved or deleted"),
        ("database disk image is malformed", "its file is damaged: restore it from a backup"),
    ],
)
def test_a_store_failing_mid_job_is_one_line_saying_what_to_do(error, says):
    with pytest.raises(tracking.StoreFault) as failed:
        tracking._retrying(_raising, error)
    message = str(failed.value)
    assert message.startswith(f"the MLflow tracking store (tracking.uri) failed: {error} (SQLite); ")
    assert says in message and message.endswith("(a training run resumes from its last checkpoint)")
    assert isinstance(failed.value, RunFailed) and "\n" not in message


def _job(root: Path, folder: str) -> Any:
    """A smoke job tracked in ``root``'s store (no teacher, no system metrics), run in ``root/folder``."""
    overrides = [*SMOKE, "distiller=none", "tracking.system_metrics_every_s=null"]
    return make_cfg(root, overrides, output=root / folder)


WRITES = ("log_batch", "set_terminated", "set_tag", "log_text", "log_artifact", "log_artifacts")


@pytest.mark.parametrize("failing", [("log_batch",), WRITES], ids=["metrics", "every write"])
def test_a_store_turning_read_only_mid_run_ends_the_job_in_one_line(tmp_path, monkeypatch, caplog, failing):
    """From the first metrics on, the store refuses writes, as after a read-only remount (tests run as
    root, where chmod does not stop writes, so the client's calls stand in): the job stops with a
    StoreFault, one line; the run is FAILED where the store takes that, else RUNNING until the same command,
    the store writable again, resumes it to FINISHED."""
    real = {name: getattr(MlflowClient, name) for name in failing}
    broken = {"since": False}

    def refusing(name: str) -> Any:
        def call(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
            broken["since"] = broken["since"] or (name == "log_batch" and bool(kwargs.get("metrics")))
            if broken["since"]:
                _raising("unable to open database file")
            return real[name](self, *args, **kwargs)

        return call

    for name in failing:
        monkeypatch.setattr(MlflowClient, name, refusing(name))
    with caplog.at_level(logging.WARNING), pytest.raises(tracking.StoreFault) as failed:
        train(_job(tmp_path, "first"))
    assert str(failed.value).startswith("the MLflow tracking store (tracking.uri) failed: unable to open")
    assert "Traceback" not in caplog.text
    (run,) = tracked_runs(tmp_path)
    if failing == ("log_batch",):
        assert run.info.status == "FAILED" and "StoreFault" in run.data.tags["error"]
        return
    assert run.info.status == "RUNNING"
    assert f"MLflow run {run.info.run_id} could not be marked FAILED (its store fails)" in caplog.text
    monkeypatch.undo()  # the store is writable again: the same command, in a folder of its own
    summary = train(_job(tmp_path, "again"))
    (run,) = tracked_runs(tmp_path)
    assert run.info.status == "FINISHED" and summary["mlflow_run_id"] == run.info.run_id


def test_a_store_damaged_mid_run_ends_the_job_in_one_line_and_restored_finishes_it(tmp_path, monkeypatch):
    """The SQLite file is really damaged at the first metrics (SQLite: "database disk image is
    malformed"); restored from a backup, the same command finishes the job in the same run."""
    db = tmp_path / "mlflow.db"
    backup = tmp_path / "backup.db"
    log_metrics = MLflowTracker.log_metrics

    def damaging(self: MLflowTracker, metrics: dict[str, float], step: int) -> None:
        if not backup.exists():
            backup.write_bytes(db.read_bytes())
            _corrupt(db)
        log_metrics(self, metrics, step)

    monkeypatch.setattr(MLflowTracker, "log_metrics", damaging)
    with pytest.raises(tracking.StoreFault) as failed:
        train(_job(tmp_path, "first"))
    assert "database disk image is malformed (SQLite); its file is damaged: restore it" in str(failed.value)
    monkeypatch.undo()
    db.write_bytes(backup.read_bytes())
    summary = train(_job(tmp_path, "again"))
    (run,) = tracked_runs(tmp_path)
    assert run.info.status == "FINISHED" and summary["mlflow_run_id"] == run.info.run_id


def test_a_finished_job_whose_summary_is_damaged_is_still_skipped(tmp_path, caplog):
    """Relaunched, a job whose summary.json was cut short reads the copy tracked with its run (a
    JSONDecodeError otherwise); with no readable copy either, it says which file and what to do."""
    first = train(_job(tmp_path, "first"))
    damaged = tmp_path / "first" / "summary.json"
    damaged.write_text('{"test_acc": 9')
    with caplog.at_level(logging.WARNING):
        again = train(_job(tmp_path, "again"))
    assert again["skipped"] and again["reused_run"] == first["mlflow_run_id"]
    assert again["test_acc"] == first["test_acc"]
    assert f"{damaged} cannot be read (JSONDecodeError" in caplog.text
    assert train(_job(tmp_path, "first"))["skipped"]  # in its own folder too
    (copy,) = tmp_path.glob(f"mlartifacts/**/{first['mlflow_run_id']}/artifacts/summary.json")
    copy.unlink()
    with pytest.raises(ConfigError) as refused:
        train(_job(tmp_path, "third"))
    assert str(refused.value).startswith(
        f"{damaged}, the summary of this job's FINISHED MLflow run {first['mlflow_run_id']}, cannot be read "
        "(JSONDecodeError"
    )
    assert str(refused.value).endswith(
        "restore the file, or pass skip_finished=false to train the job again."
    )


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_diverging_job_and_ends_failed(tmp_path):
    """A non-finite loss used to end in a traceback: now the diverging job says so in one line naming the
    key and its run is FAILED with the error; the next job trains; the sweep ends with the table of its
    job without a result and exits 3, as under a launcher."""
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "distiller=none", "optim.lr=1e30,0.1", f"paths.root={tmp_path}"]
    proc = run_cli([*args, f"hydra.sweep.dir={sweep}", "tracking.system_metrics_every_s=null"], cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("seal-exp: run failed: ")]
    table = proc.stdout[proc.stdout.index("1 job(s) ended without a result (exit code 3):") :]
    (row,) = [row for row in table.splitlines() if row.startswith("| 0 |")]
    assert "| FAILED | run failed: the loss became non-finite" in row and row.endswith("train.log |")
    assert line.startswith("seal-exp: run failed: the loss became non-finite at epoch 1, step "), line
    assert line.endswith("Lower the learning rate (optim.lr=1e+30), or check the inputs.")
    assert "Traceback" not in proc.stderr
    found = tracked_runs(tmp_path, "distill")
    runs = {r.data.params.get("optim.lr"): r.info.status for r in found}
    assert runs == {"1e+30": "FAILED", "0.1": "FINISHED"}
    (failed,) = [r for r in found if r.info.status == "FAILED"]
    assert "NonFiniteLoss" in failed.data.tags["error"]
    (parent,) = [r for r in tracked_runs(tmp_path) if r.data.tags.get("sweep.parent") == "true"]
    assert parent.info.status == "FAILED"
