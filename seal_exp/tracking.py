"""Experiment tracking: one MLflow run per job, one parent run per Hydra multirun, or nothing.

MLflow params are immutable, so the flattened config is logged once at the start; metrics are logged
per epoch; a run that crashes is closed as FAILED with its traceback attached. The helpers at the end
read a sweep's parent run back and attach files to it, for the reports that come after training.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from seal_exp.config import project_root, require

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id"
TRACKING_URI_FILE = "mlflow_tracking_uri"  # next to it: where the parent run lives (for later reports)
MAX_PARAM_CHARS = 6000
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

    def find_runs(self, identity: str) -> list[Any]:
        """No store to look in: no earlier runs are known."""
        return []

    def reattach(self, run_id: str, tags: dict[str, str]) -> bool:
        """Nothing to reattach to."""
        return False

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Nothing to upload."""

    def finish(self, status: str, error: str | None = None) -> None:
        """Nothing to close."""


class MLflowTracker:
    """Records a job in an MLflow store (by default the project's ``mlflow.db``)."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        require(
            "://" in uri or uri.startswith("databricks"),
            "uri",
            uri,
            "give a tracking URI such as sqlite:////abs/path/mlflow.db or http://host:5000",
        )
        if uri.startswith("sqlite:"):
            require(
                uri.startswith("sqlite:////"),
                "uri",
                uri,
                "use an absolute path (sqlite:////abs/path/mlflow.db): every job must find the same store",
            )
        require(bool(experiment), "experiment", experiment, "name the MLflow experiment")
        self.uri, self.experiment, self.artifact_location = uri, experiment, artifact_location
        self.run_id: str | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:////"):
                Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        """The experiment's id, created on first use (a parallel job may create it first: fine)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except MlflowException:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def open_parent(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        return run.info.run_id

    def start(
        self, run_name: str, params: dict[str, str], tags: dict[str, str], parent_run_id: str | None = None
    ) -> None:
        from mlflow.entities import Param

        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [
            Param(k, v if len(v) <= MAX_PARAM_CHARS else v[: MAX_PARAM_CHARS - 1] + "…")
            for k, v in params.items()
        ]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        log.info("MLflow run %s in experiment '%s' (%s)", self.run_id, self.experiment, self.uri)

    def find_runs(self, identity: str) -> list[Any]:
        """Active runs of this experiment with job identity ``identity``, newest first."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return []
        return list(
            self.client.search_runs(
                [found.experiment_id],
                filter_string=f"tags.`{IDENTITY_TAG}` = '{identity}'",
                order_by=["attributes.start_time DESC"],
                max_results=100,
            )
        )

    def reattach(self, run_id: str, tags: dict[str, str]) -> bool:
        """Continue an interrupted run (a resumed job): RUNNING again, tags refreshed; False if it is gone."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.lifecycle_stage != "active":
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        resumed = int(run.data.tags.get("resumed", "0")) + 1
        for key, value in {**tags, "resumed": str(resumed)}.items():
            self.client.set_tag(run_id, key, value)
        log.info("MLflow run %s reattached (resume #%d)", run_id, resumed)
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str, error: str | None = None) -> None:
        if self.run_id is None:
            return
        if error:
            self.client.set_tag(self.run_id, "error", error[-4000:])
            self.client.log_text(self.run_id, error, "traceback.txt")
        self.client.set_terminated(self.run_id, status)


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


class MLflowSweepCallback(Callback):
    """Opens one parent MLflow run per multirun, so its jobs appear together in ``mlflow ui``.

    The parent's id is written to ``<sweep dir>/mlflow_parent_run_id``, where every job (in this
    process or on a cluster node) finds it. Creating the store and experiment here, before any job
    starts, also avoids parallel jobs racing to create them.
    """

    def __init__(self) -> None:
        self._tracker: MLflowTracker | None = None
        self._failed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = instantiate(config.tracking)
        if not isinstance(tracker, MLflowTracker):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tags = {
            "sweep.dir": str(sweep_dir.resolve()),
            "sweep.parent": "true",
            "hydra.overrides": " ".join(config.hydra.overrides.task) or "(none)",
            **git_tags(),
        }
        run_id = tracker.open_parent(f"sweep {sweep_dir.name}", tags)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        (sweep_dir / TRACKING_URI_FILE).write_text(tracker.uri)
        tracker.run_id = run_id
        self._tracker = tracker
        atexit.register(self._close, "FAILED")  # the sweep raised before on_multirun_end
        log.info("MLflow parent run %s for sweep %s", run_id, sweep_dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            self._failed = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close("FAILED" if self._failed else "FINISHED")

    def _close(self, status: str) -> None:
        if self._tracker is not None:
            self._tracker.finish(status)
            self._tracker = None


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


def download_summary(client: Any, run_id: str, tmp: Path) -> dict[str, Any] | None:
    """The ``summary.json`` tracked with an MLflow run (into ``tmp``), or None: the job did not finish.

    Read here rather than through ``seal_exp.run.files``, so tracking depends on nothing above it.
    """
    try:
        path = Path(client.download_artifacts(run_id, "summary.json", str(tmp / run_id)))
        return json.loads(path.read_text())
    except Exception:
        return None
