"""Parallel jobs writing to one SQLite MLflow store lose no run and no metric."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from seal_exp.tracking import MLflowTracker
from tests.conftest import REPO

JOBS, EPOCHS, METRICS = 4, 25, 12

JOB = textwrap.dedent(
    """
    import sys
    from seal_exp.tracking import MLflowTracker

    uri, job = sys.argv[1], int(sys.argv[2])
    tracker = MLflowTracker(uri, "concurrency")
    tracker.start(f"job {job}", {"job": str(job)}, {"job": str(job)}, sys.argv[3])
    epochs, metrics = int(sys.argv[4]), int(sys.argv[5])
    for epoch in range(1, epochs + 1):
        tracker.log_metrics({f"m{i}": job * 1000 + epoch + i / 100 for i in range(metrics)}, step=epoch)
    tracker.finish("FINISHED")
    """
)


@pytest.mark.slow
def test_parallel_jobs_on_one_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent_tracker = MLflowTracker(uri, "concurrency")  # store and experiment first, as a sweep does
    parent = parent_tracker.open_parent("sweep", {"sweep.parent": "true"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, uri, str(job), parent, str(EPOCHS), str(METRICS)],
            cwd=REPO,
            stderr=subprocess.PIPE,
        )
        for job in range(JOBS)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("concurrency")
    children = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == parent
    ]
    assert sorted(int(r.data.params["job"]) for r in children) == list(range(JOBS))
    for run in children:
        job = int(run.data.params["job"])
        assert run.info.status == "FINISHED"
        for i in range(METRICS):
            history = client.get_metric_history(run.info.run_id, f"m{i}")
            assert sorted((m.step, m.value) for m in history) == [
                (epoch, job * 1000 + epoch + i / 100) for epoch in range(1, EPOCHS + 1)
            ]
