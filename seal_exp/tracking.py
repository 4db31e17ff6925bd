"""Experiment tracking: one MLflow run per job, one parent run per Hydra multirun, or nothing.

MLflow params are immutable, so the flattened config is logged once at the start; metrics are logged
per epoch; a run that crashes is closed as FAILED with its traceback attached. The helpers at the end
read a sweep's parent run back and attach files to it, for the reports that come after training.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from seal_exp.config import (
    CONF_DIR,
    ConfigError,
    InvalidArgument,
    RunFailed,
    flatten,
    invalid,
    project_root,
    require,
)
from seal_exp.notation import SMOKE, display_key, is_smoke
from seal_exp.run_controls import is_run_control

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id"
TRACKING_URI_FILE = "mlflow_tracking_uri"  # next to it: where the parent run lives (for later reports)
MAX_PARAM_CHARS = 6000
T = TypeVar("T")
# MLflow 3's UI opens an experiment of this kind on its runs table (not on the GenAI pages)
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
STUDENT_MODEL = "student"  # the folder a run's logged model is saved from
IDENTITY_TAG = "seal.identity"  # a job's identity (seal_exp.run.identity): how relaunches find earlier runs


class NoTracker:
    """``tracking=none``: nothing is recorded outside the job's own folder."""

    run_id: str | None = None

    def start(
        self, run_name: str, params: dict[str, str], tags: dict[str, str], parent_run_id: str | None = None
    ) -> None:
        """Nothing to open."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Nothing to record."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Nothing to tag."""

    def has_metric(self, key: str) -> bool:
        """No store: no metric was ever logged."""
        return False

    def find_runs(self, identity: str) -> list[Any]:
        """No store to look in: no earlier runs are known."""
        return []

    def reattach(self, run_id: str, tags: dict[str, str]) -> bool:
        """Nothing to reattach to."""
        return False

    def mark_failed(self, run_id: str, reason: str) -> bool:
        """No run to mark."""
        return False

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Nothing to upload."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Nothing to upload."""

    def log_student(self, model: Any, best: Path, input_example: Any) -> None:
        """Nothing to upload."""

    def log_dataset(self, name: str, digest: str | None, source: str) -> None:
        """Nothing to record."""

    def finish(self, status: str, error: str | None = None) -> None:
        """Nothing to close."""


DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores (+driver allowed)
ACCEPTED_URIS = (
    "sqlite:////abs/path/mlflow.db (the default, tracking=mlflow), an absolute folder or file:///abs/folder "
    "(MLflow's file store, with MLFLOW_ALLOW_FILE_STORE=true), http(s)://host:port (an MLflow server, "
    "tracking=mlflow_server), "
    "postgresql://, mysql://, mssql:// (a database MLflow can use), or databricks[://profile]"
)
FAILURE_TAG = "seal.failure"  # why a run was closed as FAILED from outside it (mark_failed)
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
STORE_LOCK_TIMEOUT_S = 300.0  # creating or upgrading a SQLite store takes seconds; a stuck holder is a bug
LOCKED_RETRY_S = 60.0  # how long a call keeps retrying a busy SQLite store (on top of its own busy timeout)
SERVER_PROBE_TIMEOUT_S = 5.0  # a server (or database) that does not answer in this long is taken as down
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # where a database URI without a port points
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def log_metrics_into(
    client: Any, run_id: str, metrics: dict[str, float], step: int, model_id: str | None = None
) -> None:
    """``metrics`` at ``step`` into a run, whatever its status (in batches; a busy store is retried);
    ``model_id``: also shown on that logged model's page."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step, model_id=model_id) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        _retrying(client.log_batch, run_id, metrics=items[i : i + 1000])


def _scheme(uri: str) -> str:
    """The store kind MLflow picks for ``uri`` ('' for a plain path, 'postgresql' for postgresql+psycopg2)."""
    if uri in ("databricks", "databricks-uc", "uc"):
        return uri
    if "://" not in uri:
        return "file" if uri.startswith("file:") else ""
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:  # a chain can loop back on itself
        chain.append(cause)
        # SQLAlchemy keeps the database driver's exception as ``orig``
        cause = cause.__cause__ or cause.__context__ or getattr(cause, "orig", None)
    return chain


def _is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is SQLite saying another process holds the database."""
    return any("database is locked" in str(e) or "database table is locked" in str(e) for e in _chain(exc))


class StoreFault(RunFailed):
    """The tracking store stopped working while a job used it (a read-only remount, a damaged file, a
    database or server gone): one line saying so, and what to do."""


# what to do, by what went wrong with a store (see _store_failure)
STORE_ADVICE = {
    "unwritable": "its file or folder can no longer be opened or written (a read-only remount, a full disk, "
    "a moved or deleted file): make it writable again",
    "damaged": "its file is damaged: restore it from a backup, or point tracking.uri at a new file (the run "
    "folders keep every result)",
    "busy": f"another process held it for over {LOCKED_RETRY_S:.0f} s: let that process finish",
    "unreachable": "the database or server stopped answering: bring it back, or point tracking.uri elsewhere",
}


def _store_failure(exc: BaseException) -> tuple[str, str] | None:
    """What went wrong with a store, as (``STORE_ADVICE`` key, the store's own words), when ``exc`` is the
    store failing (SQLite's errors, a database connection, a server connection); None for anything else."""
    import sqlite3

    chain = _chain(exc)
    for cause in chain:  # SQLite's own words, wherever MLflow and SQLAlchemy wrapped them
        if isinstance(cause, sqlite3.DatabaseError):
            text = _first_line(cause)
            kind = "damaged" if "malformed" in text or "not a database" in text else "unwritable"
            return ("busy" if "locked" in text else kind), f"{text} (SQLite)"
    for cause in chain:
        module, name = type(cause).__module__.split(".", 1)[0], type(cause).__name__
        if module == "sqlalchemy" and name in ("OperationalError", "InterfaceError"):
            driver = getattr(cause, "orig", None) or cause  # the database driver's exception
            return "unreachable", f"{_first_line(driver)[:200]} ({type(driver).__name__})"
        if module in ("requests", "urllib3") and name in ("ConnectionError", "ConnectTimeout"):
            return "unreachable", f"{_first_line(cause)[:200]} ({name})"
    return None


def _first_line(exc: BaseException) -> str:
    """An error's first line (its type's name when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _retrying(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with backoff while SQLite reports the database locked.

    Parallel jobs share one SQLite file; SQLite answers a write that would deadlock with "database is
    locked" at once, without waiting. A locked write was rolled back, so calling it again logs it once.
    """
    delay, deadline = 0.2, time.monotonic() + LOCKED_RETRY_S
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() + delay > deadline:
                failure = _store_failure(exc)
                if failure is None:
                    raise
                kind, words = failure
                raise StoreFault(
                    f"the MLflow tracking store (tracking.uri) failed: {words}; {STORE_ADVICE[kind]}, then "
                    "run the same command again (a training run resumes from its last checkpoint)"
                ) from exc
            log.info("MLflow store busy (%s); retrying in %.1f s", getattr(fn, "__name__", fn), delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


class MLflowTracker:
    """Records a job in an MLflow store (by default the project's ``mlflow.db``).

    The URI's kind and, for a local store, what stands at its path (a SQLite file, a writable folder) and,
    for a database, its driver are checked when the tracker is built, before any data is read; a server or
    database is probed on first contact, so a wrong address fails in seconds rather than after MLflow's
    minutes of retries, and a store that cannot be used (damaged, missing credentials) is refused there
    naming ``tracking.uri``. A SQLite store is created (and its schema upgraded) under a file lock, since
    parallel jobs starting on a fresh store otherwise race MLflow's migrations and leave it unusable; the
    calls made while training retry a busy database, and a store that fails mid-job ends it with one
    line (:class:`StoreFault`).

    ``writable=False``: the store is only read (a status report), so a read-only store is fine.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_location: str | None = None,
        writable: bool = True,
        log_model: bool = True,
        register_as: str | None = None,
        system_metrics_every_s: float | None = 10.0,
    ) -> None:
        scheme = _scheme(uri)
        require(
            scheme in ("", "file", "http", "https", "databricks", "databricks-uc", "uc", *DB_SCHEMES),
            "uri",
            uri,
            f"unknown tracking URI scheme {scheme!r}; give one of: {ACCEPTED_URIS}",
        )
        if scheme == "sqlite":
            require(
                uri.startswith("sqlite:////"),
                "uri",
                uri,
                "use an absolute path (sqlite:////abs/path/mlflow.db): every job must find the same store",
            )
        if scheme in ("", "file"):
            require(
                Path(_local_path(uri)).is_absolute(),
                "uri",
                uri,
                "use an absolute folder (/abs/path/mlruns or file:///abs/path/mlruns): every job must find "
                "the same store",
            )
        require(bool(experiment), "experiment", experiment, "name the MLflow experiment")
        require(isinstance(log_model, bool), "log_model", log_model, "give true or false")
        require(
            register_as is None or (isinstance(register_as, str) and register_as.strip() != ""),
            "register_as",
            register_as,
            "give the registered model's name, or null not to register",
        )
        self.log_model, self.register_as = log_model, register_as
        every = system_metrics_every_s
        require(
            every is None or (isinstance(every, int | float) and not isinstance(every, bool) and every >= 1),
            "system_metrics_every_s",
            every,
            "give the seconds between samples (>= 1), or null for no system metrics",
        )
        self.system_metrics_every_s = every
        self._system: Any = None
        self.model_id: str | None = None  # the run's logged student, once logged
        self.uri, self.experiment, self.artifact_location = uri, experiment, artifact_location
        self._check_store_kind()
        if (
            artifact_location is None and scheme == "sqlite"
        ):  # MLflow's default is ./mlruns, wherever one stands
            self.artifact_location = str(self._store_path().parent / "mlartifacts")  # type: ignore[union-attr]
        if writable:
            self._check_writable()
        self.run_id: str | None = None
        self._client: Any = None
        self._artifacts_failed = False
        self._logged_steps: dict[str, set[int]] | None = None  # reattached: steps logged per metric

    def _store_path(self) -> Path | None:
        """The SQLite file or file-store folder on this machine; None for a server or a remote database."""
        scheme = _scheme(self.uri)
        if scheme == "sqlite":
            return Path(self.uri[len("sqlite:///") :].split("?", 1)[0])
        if scheme in ("", "file"):
            return Path(_local_path(self.uri))
        return None

    def _check_store_kind(self) -> None:
        """Refuse, without contacting it, a store MLflow would fail on at first contact: a folder (MLflow's
        file store) unless MLflow is told to open one, a file URI naming a host, a SQLite URI at a folder or
        at a file that is no database, a database whose driver is not installed."""
        uri, scheme, store = self.uri, _scheme(self.uri), self._store_path()
        if scheme == "file":
            host = urllib.parse.urlparse(uri).netloc
            require(
                host in ("", "localhost"),
                "uri",
                uri,
                f"it names the host {host!r}; a folder on this machine is file:///abs/folder (three slashes)",
            )
        if scheme in ("", "file"):
            from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

            if store is not None and store.is_file():  # a path or file: URI names folders only
                sqlite = _file_start(store, len(SQLITE_HEADER)) in (b"", SQLITE_HEADER)
                raise InvalidArgument(
                    "uri",
                    uri,
                    f"{store} is a SQLite file: name it as one, sqlite:///{store}"
                    if sqlite
                    else f"{store} is a file that is no SQLite database (an MLflow store is a SQLite "
                    "file, or a folder with MLFLOW_ALLOW_FILE_STORE=true): use a new file "
                    f"(sqlite:///{store.parent}/mlflow.db), or tracking=mlflow for the project's store",
                )
            require(
                MLFLOW_ALLOW_FILE_STORE.get(),
                "uri",
                uri,
                "MLflow opens a folder as its store (the file store) only with MLFLOW_ALLOW_FILE_STORE=true "
                f"exported: use a SQLite file there (sqlite:///{store}/mlflow.db), or export that variable",
            )
        if scheme == "sqlite" and store is not None:
            require(
                not store.is_dir(),
                "uri",
                uri,
                f"{store} is a folder; name the database file in it (sqlite:///{store}/mlflow.db)",
            )
            require(
                _file_start(store, len(SQLITE_HEADER)) in (b"", SQLITE_HEADER),
                "uri",
                uri,
                f"{store} is not a SQLite database (an MLflow store is one): point tracking.uri at the "
                "project's mlflow.db, or at a new file",
            )
        if scheme in DB_PORTS:
            missing = _missing_driver(uri)
            require(
                missing is None,
                "uri",
                _without_password(uri),
                f"SQLAlchemy cannot use it ({missing}): install the database's driver (postgresql: pip "
                "install 'psycopg[binary]'; mysql: pip install pymysql and mysql+pymysql://...), or use "
                "tracking=mlflow for the project's SQLite store",
            )

    def _check_writable(self) -> None:
        """Refuse a local store this process cannot write, up front and naming the folder."""
        store = self._store_path()
        if store is None:
            return
        folder = store.parent if _scheme(self.uri) == "sqlite" else store
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            blocked = store if store.is_file() and not os.access(store, os.W_OK) else None
        else:
            blocked = existing
        require(
            blocked is None,
            "uri",
            self.uri,
            f"{blocked} cannot be written (read-only mount or another user's folder) and the tracking store "
            "needs to write there: point tracking.uri at a writable place (sqlite:////abs/path/mlflow.db), "
            "or run with tracking=none",
        )

    @property
    def client(self) -> Any:
        """The MLflow client; made on first use: the store is created or upgraded, a server probed."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            scheme = _scheme(self.uri)
            if scheme in ("http", "https"):
                self._probe_server()
            if scheme in DB_PORTS:
                self._probe_database()
            # MLflow says INFO when it creates or upgrades a store ("Creating initial MLflow database
            # tables..."): not this job's news, so its own loggers keep to warnings
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            # a failing store is reported here in one line: MLflow's own tracebacks of it (its SQL store
            # logs each database error with one) and its Databricks fallback's warning are left out
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            logging.getLogger("mlflow.utils.databricks_utils").setLevel(logging.ERROR)
            store = self._store_path()
            try:
                if scheme == "sqlite" and store is not None:
                    store.parent.mkdir(parents=True, exist_ok=True)
                    with self._store_lock():  # MlflowClient builds the store: MLflow's migrations run here
                        # SQLite creates a database 0o644 whatever the umask (its journals copy that mode):
                        # created here first, the file gets what open() gives (0o664 under umask 002), so
                        # a group can share the store
                        store.touch(exist_ok=True)
                        client = MlflowClient(tracking_uri=self.uri)
                else:
                    client = MlflowClient(tracking_uri=self.uri)
                _retrying(client.search_experiments, max_results=1)  # first contact: can it be used?
            except Exception as exc:
                raise self._unusable(exc) from exc
            self._client = client
        return self._client

    def _unusable(self, exc: BaseException) -> ConfigError:
        """A store that failed at first contact, as one line naming ``tracking.uri``: what it said, and
        what to do (nothing of the job has run yet)."""
        failure = _store_failure(exc)
        words = failure[1] if failure else _first_words(exc)
        scheme = _scheme(self.uri)
        if failure and failure[0] == "damaged":
            advice = STORE_ADVICE["damaged"]
        elif scheme == "sqlite":
            advice = "point tracking.uri at a SQLite file this machine can create and write"
        elif scheme in ("databricks", "databricks-uc", "uc"):
            advice = (
                "give Databricks credentials (DATABRICKS_HOST and DATABRICKS_TOKEN, or `databricks auth "
                "login` and databricks://<profile>)"
            )
        elif scheme in ("http", "https"):
            advice = (
                "check the address and the credentials (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD)"
            )
        elif scheme in DB_PORTS:
            advice = "check the user, password and database named in the URI, and that the database is up"
        else:
            advice = "point tracking.uri at a folder this machine can write"
        other = "tracking=mlflow (the project's SQLite store)" if scheme != "sqlite" else "tracking=none"
        return invalid(
            "tracking.uri",
            _without_password(self.uri),
            f"the MLflow store there cannot be used ({words}): {advice}, or run with {other}",
        )

    def _probe_database(self) -> None:
        """Fail in seconds, naming ``tracking.uri``, when nothing listens at a database's host and port
        (MLflow retries a database connection for long)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.uri)
        if not url.host:  # a local socket: the connection itself says
            return
        port = url.port or DB_PORTS[_scheme(self.uri)]
        try:
            socket.create_connection((url.host, port), timeout=SERVER_PROBE_TIMEOUT_S).close()
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise invalid(
                "tracking.uri",
                _without_password(self.uri),
                f"no database answers at {url.host}:{port} ({why}): start it, or correct the host and port, "
                "or use tracking=mlflow for the project's SQLite store",
            ) from exc

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Hold ``<db>-lock`` (SQLite stores only): one process at a time creates or upgrades the schema."""
        store = self._store_path()
        if _scheme(self.uri) != "sqlite" or store is None:
            yield
            return
        from filelock import FileLock, Timeout

        lock = FileLock(f"{store}-lock", timeout=STORE_LOCK_TIMEOUT_S)  # beside -journal, -wal
        try:
            lock.acquire()
        except Timeout as exc:
            raise RuntimeError(
                f"waited {STORE_LOCK_TIMEOUT_S:.0f} s for {lock.lock_file}, held by another job creating the "
                "MLflow store; if no job is running, delete that file"
            ) from exc
        try:
            yield
        finally:
            lock.release()

    def _probe_server(self) -> None:
        """Fail in seconds, naming ``tracking.uri``, when no server answers (MLflow retries for minutes)."""
        import requests

        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        verify: bool | str = False if insecure else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
        try:
            requests.get(f"{self.uri.rstrip('/')}/health", timeout=SERVER_PROBE_TIMEOUT_S, verify=verify)
        except requests.RequestException as exc:  # any HTTP answer, even 401 or 404, means it is up
            why = (
                f"nothing answered within {SERVER_PROBE_TIMEOUT_S:.0f} s"
                if isinstance(exc, requests.Timeout)
                else f"could not connect ({type(exc).__name__})"
            )
            raise invalid(
                "tracking.uri",
                self.uri,
                f"no MLflow tracking server there: {why}. Start one (mlflow server --backend-store-uri "
                "sqlite:////abs/path/mlflow.db --host 0.0.0.0 --port 5000; see "
                "conf/tracking/mlflow_server.yaml) and point tracking.uri (or MLFLOW_TRACKING_URI) at it, "
                "or use tracking=mlflow for the project's local SQLite store",
            ) from exc

    def experiment_id(self) -> str:
        """The experiment's id, created on first use (a parallel job may create it first: fine)."""
        from mlflow.exceptions import MlflowException

        found = _retrying(self.client.get_experiment_by_name, self.experiment)
        if found is None:
            with self._store_lock():
                found = _retrying(self.client.get_experiment_by_name, self.experiment)
                if found is None:
                    with contextlib.suppress(MlflowException):  # a server's other client made it meanwhile
                        _retrying(
                            self.client.create_experiment,
                            self.experiment,
                            artifact_location=self.artifact_location,
                            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING},
                        )
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise ConfigError(
                            f"MLflow experiment {self.experiment!r} could not be created at {self.uri}"
                        )
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an earlier version or by hand
            _retrying(
                self.client.set_experiment_tag, found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
            )
        return found.experiment_id

    def open_parent(self, run_name: str, tags: dict[str, str]) -> str:
        """A sweep's parent run (left RUNNING; close it with :meth:`finish` after setting ``run_id``)."""
        run = _retrying(self.client.create_run, self.experiment_id(), run_name=run_name, tags=tags)
        return run.info.run_id

    def has_children(self) -> bool:
        """Whether the active run is the parent of any run, in any experiment (a sweep over datasets
        puts its jobs' runs in one experiment per dataset)."""
        experiments = [e.experiment_id for e in all_pages(self.client.search_experiments)]
        found = _retrying(
            self.client.search_runs,
            experiments,
            filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
            max_results=1,
        )
        return bool(found)

    def start(
        self, run_name: str, params: dict[str, str], tags: dict[str, str], parent_run_id: str | None = None
    ) -> None:
        """Open the job's run with its flattened config as params (MLflow params are immutable)."""
        from mlflow.entities import Param

        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = _retrying(self.client.create_run, self.experiment_id(), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self._artifacts_failed = False
        self._logged_steps = None  # a new run: nothing logged before this attempt
        items = [
            Param(k, v if len(v) <= MAX_PARAM_CHARS else v[: MAX_PARAM_CHARS - 1] + "…")
            for k, v in params.items()
        ]
        for i in range(0, len(items), 100):
            _retrying(self.client.log_batch, self.run_id, params=items[i : i + 100])
        log.info("MLflow run %s in experiment '%s' (%s)", self.run_id, self.experiment, self.uri)
        self._watch_system(resumed=False)

    def _watch_system(self, resumed: bool) -> None:
        """MLflow's system metrics for the run (``system/cpu_utilization_percentage``, memory, disk,
        network; GPU utilisation and memory where NVML sees a GPU), sampled in a background thread."""
        if self.system_metrics_every_s is None or self._system is not None:
            return
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per run
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, self.system_metrics_every_s, resume_logging=resumed, tracking_uri=self.uri
            )
            monitor.start()
            self._system = monitor
        except Exception as exc:  # psutil missing, a store that refuses: the run goes on without them
            log.warning("no system metrics for MLflow run %s (%s: %s)", self.run_id, type(exc).__name__, exc)

    def find_runs(self, identity: str) -> list[Any]:
        """Active runs of this experiment with job identity ``identity``, newest first."""
        found = _retrying(self.client.get_experiment_by_name, self.experiment)
        if found is None:
            return []
        return list(
            _retrying(
                self.client.search_runs,
                [found.experiment_id],
                filter_string=f"tags.`{IDENTITY_TAG}` = '{identity}'",
                order_by=["attributes.start_time DESC"],
                max_results=100,
            )
        )

    def _active_run(self, run_id: str) -> Any:
        """The run with this id, or None if it does not exist or is deleted."""
        from mlflow.exceptions import MlflowException

        try:
            run = _retrying(self.client.get_run, run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def reattach(self, run_id: str, tags: dict[str, str]) -> bool:
        """Continue an interrupted run (a resumed job): RUNNING again, tags refreshed; False if it is gone."""
        run = self._active_run(run_id)
        if run is None:
            return False
        self.run_id = run_id
        self._artifacts_failed = False
        self._logged_steps = {}  # what earlier attempts logged, read per metric when first logged again
        _retrying(self.client.update_run, run_id, status="RUNNING")
        resumed = int(run.data.tags.get("resumed", "0")) + 1
        for key, value in {**tags, "resumed": str(resumed)}.items():
            _retrying(self.client.set_tag, run_id, key, value)
        log.info("MLflow run %s reattached (resume #%d)", run_id, resumed)
        self._watch_system(resumed=True)
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` on the active run.

        In a reattached run, a point an earlier attempt logged already is not logged again: an attempt
        that died after logging an epoch but before its checkpoint (a failed write, a kill) trains that
        epoch again, and its metric history keeps one value per step. Step 0 holds run-level figures
        (wall time, measures), where the later attempt's value is the one to show: it is logged again.
        """
        if self._logged_steps is not None and step != 0:
            metrics = {k: v for k, v in metrics.items() if step not in self._steps_logged(k)}
            for key in metrics:
                self._logged_steps[key].add(step)
        if metrics:  # after the student is logged, its figures (summary, measures) are its model's too
            log_metrics_into(self.client, self.run_id, metrics, step, self.model_id)

    def _steps_logged(self, key: str) -> set[int]:
        """The steps at which the reattached run holds a value of ``key`` (read once per key)."""
        assert self._logged_steps is not None
        if key not in self._logged_steps:
            history = _retrying(self.client.get_metric_history, self.run_id, key)
            self._logged_steps[key] = {int(m.step) for m in history}
        return self._logged_steps[key]

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the active run with what is learnt while it runs (the data's fingerprint, once read)."""
        if self.run_id is not None:
            from mlflow.entities import RunTag

            items = [RunTag(k, v) for k, v in tags.items()]
            _retrying(self.client.log_batch, self.run_id, tags=items)

    def has_metric(self, key: str) -> bool:
        """Whether the active run already has a value for ``key`` (e.g. a resumed run's ``teacher/test/acc``),
        so a run-level metric is logged once over all its attempts. False with no active run."""
        if self.run_id is None:
            return False
        return key in _retrying(self.client.get_run, self.run_id).data.metrics

    def mark_failed(self, run_id: str, reason: str) -> bool:
        """Close another run (not the active one) as FAILED, with ``reason`` as tag ``seal.failure`` and in
        its note, e.g. a run whose ``last.pt`` is refused; False if the run does not exist (or is deleted).

        The status is set first, so the run is FAILED even if the tags cannot be written.
        """
        run = self._active_run(run_id)
        if run is None:
            return False
        _retrying(self.client.set_terminated, run_id, "FAILED")
        note = run.data.tags.get(NOTE_TAG, "")
        _retrying(self.client.set_tag, run_id, FAILURE_TAG, reason[-4000:])
        _retrying(self.client.set_tag, run_id, NOTE_TAG, f"{note}\n\n{reason}".strip())
        log.warning("MLflow run %s marked FAILED: %s", run_id, reason)
        return True

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file or folder to the active run, best-effort: the files stay in the job's folder either
        way, so a failing artifact store never fails the training; after the first failure (one warning)
        the run's remaining uploads are skipped rather than each hanging on a broken store."""
        path = Path(path)
        if self.run_id is None or self._artifacts_failed or not path.exists():
            return
        try:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as exc:
            self._artifacts_failed = True
            log.warning(
                "could not attach %s to MLflow run %s (%s: %s); the run's other files are not uploaded "
                "either, they stay in the job folder",
                path,
                self.run_id,
                type(exc).__name__,
                exc,
            )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Attach ``text`` as the run's file ``artifact_file``, best-effort as :meth:`log_artifact`."""
        if self.run_id is None or self._artifacts_failed:
            return
        try:
            self.client.log_text(self.run_id, text, artifact_file)
        except Exception as exc:
            self._artifacts_failed = True
            log.warning(
                "could not attach %s to MLflow run %s (%s: %s)",
                artifact_file,
                self.run_id,
                type(exc).__name__,
                exc,
            )

    def log_student(self, model: Any, best: Path, input_example: Any) -> None:
        """The selected student: ``best.pt`` (weights and architecture, what ``load_student`` reads) and,
        with ``log_model``, an MLflow PyTorch model ``student`` (``mlflow.pytorch.load_model``), registered
        as ``register_as`` when set. Best-effort, as every artifact: the files stay in the run folder."""
        self.log_artifact(best)
        if self.run_id is None or self._artifacts_failed or not self.log_model:
            return
        import mlflow.pytorch
        import torch

        requirements = [f"torch=={torch.__version__.split('+')[0]}", "spikingjelly==2.0.0", "seal-exp"]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / STUDENT_MODEL
                try:  # a traced graph (torch.export): loading it runs no pickled code
                    mlflow.pytorch.save_model(
                        model, str(folder), input_example=input_example, pip_requirements=requirements
                    )
                except Exception as exc:  # a network torch.export cannot trace: pickled (needs seal-exp)
                    log.info("student not exportable as a graph (%s); logging it pickled", exc)
                    shutil.rmtree(folder, ignore_errors=True)
                    mlflow.pytorch.save_model(
                        model,
                        str(folder),
                        input_example=input_example,
                        pip_requirements=requirements,
                        serialization_format="pickle",
                    )
                model = self._logged_model(folder)
            if self.register_as:
                self._register(self.register_as, model)
        except Exception as exc:
            log.warning(
                "MLflow run %s: the student model was not logged (%s: %s)",
                self.run_id,
                type(exc).__name__,
                exc,
            )

    def _logged_model(self, folder: Path) -> Any:
        """``folder`` (a saved MLflow model) as the run's logged model, named after the run, with its
        params: the UI's Models column, ``runs:/<run id>/<model name>`` and ``models:/<model id>`` find it."""
        from mlflow.entities import LoggedModelOutput

        run = self.client.get_run(self.run_id)
        model = _retrying(
            self.client.create_logged_model,
            run.info.experiment_id,
            name=model_name(run.info.run_name),
            source_run_id=self.run_id,
            params=dict(run.data.params),
            model_type="spiking student",
        )
        self.model_id = model.model_id
        self.client.log_model_artifacts(model.model_id, str(folder))
        _retrying(self.client.finalize_logged_model, model.model_id, "READY")
        _retrying(self.client.log_outputs, self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model

    def _register(self, name: str, model: Any) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # it exists already: add a version
            _retrying(self.client.create_registered_model, name)
        # the model's own folder as the source: a models:/ source is looked up in MLflow's default store
        version = _retrying(
            self.client.create_model_version,
            name,
            model.artifact_location,
            run_id=self.run_id,
            model_id=model.model_id,
        )
        log.info("student registered as models:/%s/%s", name, version.version)

    def log_dataset(self, name: str, digest: str | None, source: str) -> None:
        """The data the run trained on, as MLflow's dataset input (the UI's Dataset column): its name and
        content fingerprint (:mod:`seal_exp.data.fingerprint`) as the digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if self.run_id is None:
            return
        dataset = Dataset(name=name, digest=digest or "unknown", source_type="local", source=source)
        used = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])
        try:
            _retrying(self.client.log_inputs, self.run_id, datasets=[used])
        except Exception as exc:  # a nicety for the UI: never a reason to stop training
            log.warning("MLflow run %s: the dataset input was not logged (%s)", self.run_id, exc)

    def finish(self, status: str, error: str | None = None) -> None:
        """Close the active run with ``status``; for a failure, then attach the traceback (best-effort).

        The status comes first, so a failing artifact store never leaves the run RUNNING.
        """
        if self.run_id is None:
            return
        monitor, self._system = self._system, None
        if monitor is not None:
            with contextlib.suppress(Exception):  # its last samples are a nicety; the status is not
                monitor.finish()
                monitor.collect_metrics()  # one sample at the end: a run shorter than an interval has one too
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        _retrying(self.client.set_terminated, self.run_id, status)
        if not error:
            return
        try:
            _retrying(self.client.set_tag, self.run_id, "error", error[-4000:])
            if not self._artifacts_failed:
                self.client.log_text(self.run_id, error, "traceback.txt")
        except Exception as exc:
            log.warning("MLflow run %s is %s; its traceback was not attached: %s", self.run_id, status, exc)


def _file_start(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file; empty for a file that is missing, empty or cannot be read."""
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _missing_driver(uri: str) -> str | None:
    """Why SQLAlchemy cannot reach a database URI's kind (its driver is not installed, an unknown driver
    name, a malformed URI); None when it can."""
    from sqlalchemy.engine import make_url

    try:
        make_url(uri).get_dialect().import_dbapi()
    except Exception as exc:  # ImportError, NoSuchModuleError, ArgumentError
        return _first_words(exc)
    return None


def _without_password(uri: str) -> str:
    """A database URI as shown in messages: its password hidden."""
    if _scheme(uri) not in DB_PORTS:
        return uri
    try:
        from sqlalchemy.engine import make_url

        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # not parseable: shown as given (it holds no password SQLAlchemy could find)
        return uri


def _first_words(exc: BaseException) -> str:
    """An error's first line (its first sentence if that line is long), with its type: for one-line
    messages."""
    if not str(exc).strip():
        return type(exc).__name__
    text = _first_line(exc)
    if len(text) > 160 and ". " in text[:160]:
        text = text[: text.index(". ") + 1]
    return f"{type(exc).__name__}: {text[:200]}"


# characters MLflow refuses in a logged model's name (mlflow.utils.validation), but dots: see model_name
_NOT_IN_MODEL_NAMES = str.maketrans({".": "_", "/": "-", ":": "-", "%": "-", '"': "", "'": ""})


def model_name(run_name: str | None) -> str:
    """A run's logged model named after the run (``seal α=0,6 β=0,15 τ=3 T=4 seed=0 trainer_epochs=3``):
    MLflow refuses dots in model names, so decimals take a comma and dotted keys an underscore."""
    decimals = re.sub(r"(?<=\d)\.(?=\d)", ",", run_name or STUDENT_MODEL)
    return decimals.translate(_NOT_IN_MODEL_NAMES).strip() or STUDENT_MODEL


def _local_path(uri: str) -> str:
    """The folder of a file store URI (``/abs``, ``file:///abs``)."""
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri


def git_tags(root: str | Path | None = None) -> dict[str, str]:
    """The commit a run was made from, and whether the working tree had uncommitted changes."""
    cwd = str(root or project_root())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown"}
    return {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty))}


def source_tags() -> dict[str, str]:
    """MLflow's own tags for where a run comes from: the UI's Source and User columns."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return {"mlflow.source.name": "seal_exp.train", "mlflow.source.type": "LOCAL", "mlflow.user": user}


# How a run reads in ``mlflow ui``: names that say what differs, params that say what was computed.
# Overrides a run's name leaves out besides the run controls (seal_exp/run_controls.py), with every key
# under them: presets, and the dataset (the run's experiment is named after it).
QUIET_OVERRIDES = ("debug", "experiment", "dataset")
SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_name(cfg: DictConfig) -> str:
    """The method as the command line names it (``seal``, ``kd``, ``none``): the ``conf/distiller`` option
    that builds this distiller class (else the class's name, for one defined elsewhere)."""
    target = str(cfg.distiller._target_)
    options = [name for name, built in _distiller_options() if built == target]
    return options[0] if len(options) == 1 else target.rsplit(".", 1)[-1].lower()


@functools.cache
def _distiller_options() -> tuple[tuple[str, str | None], ...]:
    """Each ``conf/distiller`` option with the class it builds, read once per process."""
    return tuple((p.stem, _target_of(p)) for p in sorted((CONF_DIR / "distiller").glob("*.yaml")))


def _target_of(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith("_target_:"):
            return line.split(":", 1)[1].split("#", 1)[0].strip()
    return None


def _job_overrides(cfg: DictConfig) -> list[str]:
    """The command-line overrides of the Hydra job that composed ``cfg`` (none for a config built in
    code: Hydra's state may still hold an earlier job's)."""
    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    ran_in = OmegaConf.select(hc, "runtime.output_dir", default=None)  # unset in a launching process
    same_job = ran_in is not None and str(cfg.paths.get("output", "")) == str(ran_in)
    return list(hc.overrides.task) if same_job else []


def method_settings(cfg: DictConfig) -> dict[str, Any]:
    """The method's numeric hyper-parameters (α, β, τ …), in the order its config file gives them."""
    return {
        str(k): v
        for k, v in cfg.distiller.items()
        if not str(k).startswith("_") and isinstance(v, int | float) and not isinstance(v, bool)
    }


def job_run_name(cfg: DictConfig, stage: str) -> str:
    """``seal α=0.6 β=0.15 τ=3 T=4 seed=0``, plus whatever else the job's overrides change
    (``lr=0.05``); a teacher-only run: ``teacher cnn seed=0``; ``[smoke] …`` for a run cut short
    (``debug=smoke``, ``limit_*_batches``), whose numbers are no result."""
    overrides = _job_overrides(cfg)
    if stage == "teacher":
        parts = ["teacher", str(cfg.teacher.arch), f"seed={cfg.seed}"]
        shown = {"teacher.arch", "seed"}
    else:
        settings = method_settings(cfg)
        parts = [method_name(cfg), *(f"{display_key(k)}={_number(v)}" for k, v in settings.items())]
        parts += [f"T={cfg.neuron.T}", f"seed={cfg.seed}"]
        shown = {"distiller", "neuron.T", "seed", *(f"distiller.{k}" for k in settings)}
    extra = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in shown or key.split(".", 1)[0] in QUIET_OVERRIDES or is_run_control(key):
            continue
        extra.append((key, value))
    # a key shown by its last part, unless two keys share it (trainer.epochs, teacher.recipe.epochs)
    taken = [display_key(k) for k, _ in extra] + [p.split("=", 1)[0] for p in parts]
    for key, value in extra:
        short = display_key(key)
        parts.append(f"{short if taken.count(short) == 1 else key}={value}")
    return " ".join([SMOKE, *parts] if is_smoke(cfg) else parts)[:250]


def swept_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """The keys a multirun sweeps (``distiller.alpha=0.3,0.6``, ``seed=range(3)``) → their values."""
    swept = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        value = value.strip()
        if value.startswith(SWEEP_FUNCTIONS) or ("," in value and not value.startswith(("[", "{", "'", '"'))):
            swept[key] = value
    return swept


def sweep_run_name(overrides: Sequence[str], method: str | None, started: float) -> str:
    """``sweep 2026-12-02 16:07 seal α×β×T`` or ``sweep 2026-12-02 16:07 none|kd|seal seed``."""
    swept = swept_overrides(overrides)
    methods = swept.pop("distiller", None)
    methods = methods.replace(",", "|") if methods else (method or "")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    return " ".join(p for p in ("sweep", when, methods, "×".join(display_key(k) for k in swept)) if p)[:250]


def run_params(cfg: DictConfig, method: str) -> dict[str, str]:
    """What the run computed with, as MLflow params: the resolved config without machine paths and
    run controls, ``_target_`` as the class it builds (``student.class=SpikingConvNet``), and the
    method's settings under its own name (``seal.alpha``, ``kd.alpha``: separate columns)."""
    flat = flatten(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    params = {"method": method}
    for key, value in flat.items():
        if is_run_control(key) or key.endswith("_partial_"):
            continue
        if key == "distiller" or key.startswith("distiller."):
            key = method + key[len("distiller") :]
        if key.endswith("_target_"):
            key, value = key[: -len("_target_")] + "class", value.rsplit(".", 1)[-1]
        if key == "teacher.checkpoint" and value != "None":
            value = Path(value).name
        params[key] = value
    return params


def job_context() -> dict[str, Any]:
    """Hydra and SLURM facts about the current job: overrides, job number, sweep parent, SLURM ids."""
    tags: dict[str, str] = {
        f"slurm.{k[6:].lower()}": os.environ[k]
        for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
        if k in os.environ
    }
    parent = None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        tags["hydra.overrides"] = " ".join(hc.overrides.task) or "(none)"
        if hc.mode == RunMode.MULTIRUN:
            tags["hydra.job.num"] = str(hc.job.num)
            marker = Path(hc.sweep.dir) / PARENT_RUN_FILE
            parent = marker.read_text().strip() if marker.is_file() else None
    return {"tags": tags, "parent_run_id": parent}


def default_tracking_uri() -> str:
    """The project's store, as ``conf/tracking/mlflow.yaml`` composes it."""
    return f"sqlite:///{project_root()}/mlflow.db"


def parent_run(sweep_dir: Path) -> tuple[str, str] | None:
    """The sweep's parent MLflow run (id, tracking URI) as the sweep callback left them; None: untracked."""
    parent_file, uri_file = sweep_dir / PARENT_RUN_FILE, sweep_dir / TRACKING_URI_FILE
    if not parent_file.is_file() or not uri_file.is_file():
        return None
    return parent_file.read_text().strip(), uri_file.read_text().strip()


def attach(run_id: str, uri: str, paths: Sequence[Path], artifact_path: str, what: str) -> bool:
    """Log files as artifacts of a run; a failure is a warning, since the files are on disk either way."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
    except Exception as exc:  # never lose the table to the tracker
        print(f"seal-exp: could not attach {what} to MLflow run {run_id}: {exc}", file=sys.stderr)
        return False
    return True


def all_pages(search: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """Every result of a paged MLflow search (``search_runs``, ``search_experiments``), not just page one."""
    found, token = [], None
    while True:
        page = search(*args, **kwargs, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def download_json(client: Any, run_id: str, tmp: Path, name: str = "summary.json") -> dict[str, Any] | None:
    """A JSON file tracked with an MLflow run (into ``tmp``), or None where the run has none: no
    ``summary.json`` (the job did not finish), no ``evaluation.json`` (never evaluated again).

    Read here rather than through ``seal_exp.run.files``, so tracking depends on nothing above it.
    """
    try:
        path = Path(client.download_artifacts(run_id, name, str(tmp / run_id)))
        return json.loads(path.read_text())
    except Exception:
        return None
