"""Sweeps on a real SLURM scheduler: ``hydra/launcher=slurm`` submits through ``sbatch`` to the cluster
``scripts/slurm-local.sh start`` brings up (``.ci/run`` does so before the tests). Without a cluster that
takes jobs, every test here is skipped, saying so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seal_exp.results import sweep_status
from tests.conftest import REPO, SMOKE, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# A CPU node: no GPU, one CPU and 2 GB per job, so jobs of a sweep run side by side.
ON_CPUS = (
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
)


def cluster_state() -> tuple[list[str], str]:
    """The node states ``sinfo`` reports, or why there are none."""
    if shutil.which("sinfo") is None:
        return [], "sinfo is not installed"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return [], f"sinfo: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}"
    return done.stdout.split(), f"sinfo: {done.stdout.strip() or 'no nodes'}"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    states, why = cluster_state()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        pytest.skip(
            f"no SLURM cluster takes jobs here ({why}): start one with `sudo scripts/slurm-local.sh start` "
            "(.ci/run does)"
        )


def runs(root: Path) -> list:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def sweep(root: Path, folder: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(
        ["-m", *ON_CPUS, *SMOKE, f"paths.root={root}", f"hydra.sweep.dir={folder}", *overrides],
        REPO,
        timeout=timeout,
    )


def test_a_two_job_sweep_is_one_parent_and_two_finished_runs_and_a_relaunch_trains_what_is_missing(tmp_path):
    first = tmp_path / "sweep-1"
    done = sweep(tmp_path, first, "seed=0,1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = runs(tmp_path)
    (parent,) = [r for r in found if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)
    logs = "".join(p.read_text() for p in first.glob(".submitit/*/*_log.*"))
    assert "SLURM job" in logs  # the batch script's setup line: the jobs ran under SLURM
    assert [job.status for job in sweep_status.status(first)] == ["finished", "finished"]

    # one run deleted: the same command trains that job alone
    gone = next(r for r in children if r.data.params["seed"] == "1")
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").delete_run(gone.info.run_id)
    assert [job.status for job in sweep_status.status(first)] == ["finished", "missing"]
    again = sweep(tmp_path, tmp_path / "sweep-2", "seed=0,1")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep-2").glob(".submitit/*/*_log.*"))
    assert logs.count("already finished: MLflow run") == 1
    students = [r for r in runs(tmp_path) if r.data.tags.get("stage") == "distill"]
    assert sorted(r.data.params["seed"] for r in students) == ["0", "1"]  # seed 1 trained again
    assert [job.status for job in sweep_status.status(first)] == ["finished", "finished"]


def test_an_impossible_request_fails_at_once_with_the_schedulers_message(tmp_path):
    """A GPU on a node without one: sbatch refuses at submission (EnforcePartLimits), the sweep stops
    with SLURM's own words and its parent run is FAILED."""
    done = sweep(tmp_path, tmp_path / "sweep", "seed=0,1", "hydra.launcher.gpus_per_node=1", timeout=120)
    assert done.returncode != 0
    assert "sbatch: error:" in done.stderr, done.stderr[-3000:]
    (parent,) = runs(tmp_path)
    assert parent.data.tags.get("sweep.parent") == "true" and parent.info.status == "FAILED"
