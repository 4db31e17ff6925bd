"""Sweeps on a real SLURM scheduler: ``hydra/launcher=slurm`` submits through ``sbatch`` to the cluster
``scripts/slurm-local.sh start`` brings up (``.ci/run`` does so before the tests). Without a cluster that
takes jobs, every test here is skipped, saying so."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seal_exp.results import sweep_status
from tests.conftest import REPO, SMOKE, result_figures, run_cli, same_weights, tracked_runs
from tests.paced_data import PACED, WITH_TESTS

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
    found = tracked_runs(tmp_path)
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
    students = tracked_runs(tmp_path, "distill")
    assert sorted(r.data.params["seed"] for r in students) == ["0", "1"]  # seed 1 trained again
    assert [job.status for job in sweep_status.status(first)] == ["finished", "finished"]


def test_an_impossible_request_fails_at_once_with_the_schedulers_message(tmp_path):
    """A GPU on a node without one: sbatch refuses at submission (EnforcePartLimits), the sweep stops
    with one line quoting SLURM (no traceback), leaving no MLflow run and no sweep folder."""
    done = sweep(tmp_path, tmp_path / "sweep", "seed=0,1", "hydra.launcher.gpus_per_node=1", timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "SLURM refused the sweep at submission, no job was submitted: sbatch: error:" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert tracked_runs(tmp_path) == [] and not (tmp_path / "sweep").exists()


def launch(root: Path, folder: Path, *overrides: str) -> subprocess.Popen:
    """The sweep command in the background, as a user leaves it running on a login node."""
    command = [sys.executable, "-m", "seal_exp.train", "-m", *ON_CPUS, *PACED, f"paths.root={root}"]
    return subprocess.Popen(
        [*command, f"hydra.sweep.dir={folder}", *overrides],
        cwd=REPO,
        env={**os.environ, **WITH_TESTS, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def slurm_jobs(folder: Path) -> list[str]:
    """The SLURM job ids submitit recorded for the sweep (one folder per job under .submitit/)."""
    return sorted(p.name for p in (folder / ".submitit").glob("*") if p.name[0].isdigit())


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} within {seconds:.0f} s")


def test_a_stopped_launcher_leaves_its_jobs_running_and_scancel_marks_the_run_killed(tmp_path):
    """SIGTERM to the launching process (a closed login session) closes the sweep's parent run KILLED
    with one line, while the job it submitted trains on under SLURM. ``scancel`` then sends the job
    SIGTERM (SIGKILL 30 s later): it checkpoints at the next step, closes its run KILLED and exits;
    the sweep status shows it killed."""
    folder = tmp_path / "sweep"
    sweep_proc = launch(tmp_path, folder, "+dataset.seconds_per_sample=0.01", "trainer.epochs=3", "seed=0")
    try:
        wait_until(lambda: (folder / "0" / "last.pt").is_file(), 240, "no checkpoint")
        sweep_proc.send_signal(signal.SIGTERM)
        sweep_proc.wait(timeout=60)
    finally:
        sweep_proc.kill()
    output = sweep_proc.stdout.read() if sweep_proc.stdout else ""
    assert sweep_proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "seal-exp: sweep stopped by SIGTERM" in output and "Jobs already submitted keep running" in output
    (parent,) = [r for r in tracked_runs(tmp_path) if r.data.tags.get("sweep.parent") == "true"]
    assert parent.info.status == "KILLED"
    (job,) = sweep_status.status(folder)
    assert job.status == "running", job  # the job is the cluster's, not the launcher's

    (job_id,) = slurm_jobs(folder)
    subprocess.run(["scancel", job_id.split("_")[0]], check=True, timeout=30)
    student = lambda: tracked_runs(tmp_path, "distill")  # noqa: E731
    wait_until(
        lambda: student()[0].info.status != "RUNNING", 120, "the job's run still RUNNING after scancel"
    )
    assert student()[0].info.status == "KILLED"
    (job,) = sweep_status.status(folder)
    assert job.status == "killed" and job.progress.startswith("last.pt after epoch")


# The shortest limit that works (shorter ones are refused: SLURM may signal up to 60 s early): the
# pre-timeout signal comes 50 to 110 s into each attempt, so a job of two 64-s epochs is requeued.
AT_A_SHORT_LIMIT = ("hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=10", "seed=0")


def sweep_on_paced_data(
    root: Path, folder: Path, *overrides: str, launcher=ON_CPUS
) -> subprocess.CompletedProcess:
    """One job on the paced data under SLURM, to its end however often it is requeued; it must succeed."""
    where = [f"paths.root={root}", f"hydra.sweep.dir={folder}"]
    done = run_cli(["-m", *launcher, *PACED, *overrides, *where], REPO, timeout=900, env=WITH_TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = "".join(p.read_text() for p in folder.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]  # submitit's line: the time limit did interrupt it
    return done


def test_a_job_at_its_time_limit_is_requeued_and_resumes_to_the_uninterrupted_result(tmp_path):
    """The job checkpoints at the signal, submitit requeues it, and the next attempt continues where it
    stopped, in the same MLflow run with every epoch once, however often that happens; it ends with
    the numbers and weights of the same job run without a limit (submitted beside it, unpaced)."""
    reference = launch(
        tmp_path / "ref",
        tmp_path / "ref" / "sweep",
        "+dataset.seconds_per_sample=0",
        "trainer.epochs=2",
        "seed=0",
    )
    folder = tmp_path / "sweep"
    try:
        sweep_on_paced_data(
            tmp_path, folder, "+dataset.seconds_per_sample=0.05", "trainer.epochs=2", *AT_A_SHORT_LIMIT
        )
        reference.wait(timeout=300)
    finally:
        reference.kill()
    assert reference.returncode == 0, reference.stdout.read()[-3000:] if reference.stdout else ""
    with (folder / "0" / "epochs.csv").open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed"]) >= 1
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == [1, 2]
    uninterrupted = tmp_path / "ref" / "sweep" / "0"
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (folder / "0", uninterrupted))
    assert result_figures(summary) == result_figures(expected)
    assert same_weights(folder / "0" / "last.pt", uninterrupted / "last.pt")
    assert same_weights(folder / "0" / "best.pt", uninterrupted / "best.pt")


def test_slurm_ddp_runs_two_gloo_ranks_on_cpus(tmp_path):
    """``slurm_ddp`` on CPU nodes: ``gpus_per_node=0 tasks_per_node=2`` is one job of two tasks, each a
    data-parallel rank talking gloo; the job reports both and ends FINISHED."""
    folder = tmp_path / "sweep"
    launcher = ["hydra/launcher=slurm_ddp", *ON_CPUS[1:], "hydra.launcher.tasks_per_node=2"]
    done = run_cli(
        ["-m", *launcher, *SMOKE, f"paths.root={tmp_path}", f"hydra.sweep.dir={folder}", "seed=0"],
        REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((folder / "0" / "summary.json").read_text())
    assert summary["world_size"] == 2
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED"
    assert len(list(folder.glob(".submitit/*/*_log.out"))) == 2  # one log per task


def test_a_job_requeued_while_its_teacher_trains_keeps_one_run_and_each_teacher_epoch_once(tmp_path):
    """The time limit hits while the ANN teacher trains (no student last.pt yet): every attempt reattaches
    the same MLflow run, the teacher continues from its partial checkpoint, and each teacher epoch (and
    the teacher's test accuracy) is logged once."""
    folder = tmp_path / "sweep"
    teacher = [
        "distiller=kd",  # a method with a teacher, trained here (the cache is empty)
        "teacher.recipe.epochs=2",
        "teacher.recipe.limit_train_batches=20",  # 2 × 64 s of reading: the signal comes in the teacher
        "teacher.recipe.batch_size=64",
        "teacher.recipe.eval_batch_size=500",
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
    ]
    sweep_on_paced_data(tmp_path, folder, "+dataset.seconds_per_sample=0.05", *teacher, *AT_A_SHORT_LIMIT)
    logs = "".join(p.read_text() for p in folder.glob(".submitit/*/*_log.*"))
    assert "teacher: stopped after epoch" in logs, logs[-3000:]
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed"]) >= 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "teacher/val/acc")) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "teacher/test/acc")) == 1


def test_slurm_ddp_is_requeued_at_its_time_limit_and_resumes_with_both_ranks(tmp_path):
    """Two gloo ranks at a 2-minute limit: both get USR2, rank 0 checkpoints and requeues the job, and the
    next attempt's two ranks continue from that checkpoint, in the same MLflow run. (That rank 1 leaves
    at the requeue's SIGTERM is tested in test_preemption.py: srun may also end the step itself.)"""
    folder = tmp_path / "sweep"
    launcher = ["hydra/launcher=slurm_ddp", *ON_CPUS[1:], "hydra.launcher.tasks_per_node=2"]
    paced = ["+dataset.seconds_per_sample=0.1", "trainer.epochs=2", "trainer.batch_size=64"]
    sweep_on_paced_data(tmp_path, folder, *paced, *AT_A_SHORT_LIMIT, launcher=launcher)
    summary = json.loads((folder / "0" / "summary.json").read_text())
    assert summary["world_size"] == 2
    with (folder / "0" / "epochs.csv").open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed"]) >= 1


def parents(root: Path) -> list:
    return [r for r in tracked_runs(root) if r.data.tags.get("sweep.parent") == "true"]


def relaunch_line(folder: Path) -> str:
    """The command ``python -m seal_exp.sweep status`` tells the user to run, as printed."""
    shown = run_cli(["status", str(folder)], REPO, module="seal_exp.sweep")
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = [line for line in shown.stdout.splitlines() if " -m seal_exp.train -m " in line]
    assert lines, shown.stdout
    starts = [lines[-1].find(f"{p} -m seal_exp.train -m ") for p in (sys.executable, "python")]
    return lines[-1][min(i for i in starts if i >= 0) :]


def run_verbatim(line: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """A command line as a user pastes it into a shell."""
    env = {**os.environ, **WITH_TESTS, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        ["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_scancelled_job_ends_the_sweep_with_its_table_and_the_relaunch_line_continues_it(tmp_path):
    """One of two jobs is scancelled: the launcher waits for the other, prints the table with the
    cancelled job's SLURM state and its own last line, and exits 3 (no traceback); the parent run is
    KILLED. The relaunch line ``sweep status`` prints, run verbatim, resubmits with the same launcher
    settings into the same folder and parent run, resumes the cancelled job, and ends FINISHED."""
    folder = tmp_path / "sweep"
    proc = launch(tmp_path, folder, "+dataset.seconds_per_sample=0.01", "trainer.epochs=3", "seed=0,1")
    try:
        wait_until(lambda: (folder / "1" / "last.pt").is_file(), 300, "no checkpoint of job 1")
        (cancelled,) = [job for job in slurm_jobs(folder) if job.endswith("_1")]
        subprocess.run(["scancel", cancelled], check=True, timeout=30)
        proc.wait(timeout=600)
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 3, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    table = output[output.index("ended without a result (exit code 3):") :]
    (row,) = [line for line in table.splitlines() if line.startswith("| 1 |")]
    assert "| CANCELLED |" in row and "stopped by SIGTERM" in row, row
    (parent,) = parents(tmp_path)
    assert parent.info.status == "KILLED"
    assert [job.status for job in sweep_status.status(folder)] == ["finished", "killed"]

    line = relaunch_line(folder)
    for setting in ON_CPUS:  # the launcher and every one of its settings, as submitted
        assert setting in line, line
    assert f"hydra.sweep.dir={folder}" in line and line in table  # the same line at the sweep's end
    again = run_verbatim(line)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (same,) = parents(tmp_path)  # continued, not a second parent
    assert same.info.run_id == parent.info.run_id and same.info.status == "FINISHED"
    students = tracked_runs(tmp_path, "distill")
    assert sorted(r.data.params["seed"] for r in students) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in students)
    resumed = next(r for r in students if r.data.params["seed"] == "1")
    assert int(resumed.data.tags["resumed"]) >= 1


def test_a_job_slurm_requeued_is_queued_not_killed(tmp_path):
    """A job SLURM requeues (here held after the requeue, so it stays pending) closed its run KILLED, but
    it is the scheduler's: ``sweep status`` asks SLURM and shows it queued, with nothing to relaunch.
    Released, it resumes in the same run and the sweep ends with exit 0."""
    folder = tmp_path / "sweep"
    proc = launch(tmp_path, folder, "+dataset.seconds_per_sample=0.01", "trainer.epochs=3", "seed=0")
    try:
        wait_until(lambda: (folder / "0" / "last.pt").is_file(), 300, "no checkpoint")
        (job_id,) = slurm_jobs(folder)
        subprocess.run(["scontrol", "requeuehold", job_id], check=True, timeout=30)
        student = lambda: tracked_runs(tmp_path, "distill")  # noqa: E731
        wait_until(lambda: student()[0].info.status == "KILLED", 120, "the requeued job's run not KILLED")
        (job,) = sweep_status.status(folder)
        assert job.status == "queued" and job.progress.startswith("SLURM job"), job
        shown = run_cli(["status", str(folder)], REPO, module="seal_exp.sweep")
        assert "1 queued" in shown.stdout and "To do so" not in shown.stdout, shown.stdout
        subprocess.run(["scontrol", "release", job_id], check=True, timeout=30)
        proc.wait(timeout=600)
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, output[-3000:]
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed"]) >= 1


def test_a_killed_launcher_leaves_its_parent_to_the_relaunch(tmp_path):
    """``kill -9`` of the launching process leaves its parent run RUNNING while the job trains on under
    SLURM: ``sweep status`` says the launcher is gone and how to close it; the relaunch continues that
    parent (no second one) and closes it FINISHED, skipping the job that finished meanwhile."""
    folder = tmp_path / "sweep"
    proc = launch(tmp_path, folder, "+dataset.seconds_per_sample=0.01", "trainer.epochs=2", "seed=0")
    try:
        wait_until(lambda: (folder / "0" / "last.pt").is_file(), 300, "no checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    (parent,) = parents(tmp_path)
    assert parent.info.status == "RUNNING"
    shown = run_cli(["status", str(folder)], REPO, module="seal_exp.sweep")
    assert "launching process is gone" in shown.stdout and parent.info.run_id in shown.stdout, shown.stdout
    student = lambda: tracked_runs(tmp_path, "distill")  # noqa: E731
    wait_until(lambda: student()[0].info.status == "FINISHED", 600, "the job did not finish under SLURM")

    again = run_verbatim(relaunch_line(folder))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "continues it" in again.stderr, again.stderr[-3000:]
    (same,) = parents(tmp_path)
    assert same.info.run_id == parent.info.run_id and same.info.status == "FINISHED"
    assert len(tracked_runs(tmp_path, "distill")) == 1  # skipped, not trained again
