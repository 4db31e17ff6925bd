"""Sweeps through submitit: a local sweep completes, a relaunch trains only what is missing, a job that
hits its time limit is requeued and resumes, and `python -m seal_exp.sweep status` tells them apart."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seal_exp.results import sweep_status
from tests.conftest import REPO, SMOKE, run_cli, tracked_runs
from tests.paced_data import PACED, WITH_TESTS

pytestmark = pytest.mark.slow

GRID = ("distiller.alpha=0.3,0.6",)  # two jobs: one to delete, one that stays finished


def statuses(sweep_dir: Path) -> list[str]:
    return [job.status for job in sweep_status.status(sweep_dir)]


# The submitit launcher's sweeps (a job process each: half a minute a sweep) run in make test-slurm.
@pytest.mark.slurm
def test_local_sweep_completes_and_a_relaunch_trains_only_what_is_missing(tmp_path):
    first = tmp_path / "sweep-1"
    common = [*GRID, *SMOKE, "trainer.progress=false", f"paths.root={tmp_path}"]
    proc = run_cli(["-m", "hydra/launcher=local", *common, f"hydra.sweep.dir={first}"], REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tracked_runs(tmp_path, "distill")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    assert sorted((r.data.params["seal.alpha"], r.data.params["seed"]) for r in runs) == [
        ("0.3", "0"),
        ("0.6", "0"),
    ]
    assert len({r.data.tags["seal.identity"] for r in runs}) == 2
    assert statuses(first) == ["finished"] * 2

    # one job's run deleted: the status says so, and the same sweep command again (a new sweep folder,
    # as Hydra names it by time) trains that job alone; the other exits at once
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    gone = next(r for r in runs if r.data.params["seal.alpha"] == "0.6" and r.data.params["seed"] == "0")
    client.delete_run(gone.info.run_id)
    assert statuses(first) == ["finished", "missing"]
    shown = run_cli(["status", str(first)], REPO, module="seal_exp.sweep")
    assert shown.returncode == 0
    assert "2 jobs: 1 finished, 0 running, 0 queued, 0 dead, 0 killed, 0 failed, 1 missing" in shown.stdout
    # the sweep as it was submitted: its launcher, its folder, its overrides
    relaunch = f" -m seal_exp.train -m hydra/launcher=local hydra.sweep.dir={first} distiller.alpha=0.3,0.6"
    assert relaunch in shown.stdout
    second = tmp_path / "sweep-2"
    proc = run_cli(["-m", *common, f"hydra.sweep.dir={second}"], REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("already finished: MLflow run") == 1
    assert len(list(second.glob("*/summary.json"))) == 2  # the new folder still reports every job
    after = tracked_runs(tmp_path, "distill")
    assert len(after) == 2
    (new,) = [r for r in after if r.info.run_id not in {x.info.run_id for x in runs}]
    assert (new.data.params["seal.alpha"], new.data.params["seed"]) == ("0.6", "0")
    assert new.data.tags["seal.identity"] == gone.data.tags["seal.identity"]
    assert statuses(first) == ["finished"] * 2
    # the relaunch, though in a new folder, continued the sweep's parent run: one parent, both jobs under it
    (parent,) = [r for r in tracked_runs(tmp_path) if r.data.tags.get("sweep.parent") == "true"]
    assert {r.data.tags["mlflow.parentRunId"] for r in after} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"


@pytest.mark.slurm  # a scheduler test (over a minute): run by make test-slurm, with or without a cluster
def test_a_job_that_reaches_its_time_limit_is_requeued_and_resumes_without_losing_an_epoch(tmp_path):
    """submitit_local sends the pre-timeout signal 30 s before the limit, so 30 s into every 1-minute
    attempt. The job reads its training samples at a fixed pace (tests/paced_data.py), so it trains
    for more than 30 s on any machine: it must checkpoint, be requeued and continue from where it
    stopped, maybe more than once. An attempt that resumes mid-epoch skips that epoch's earlier batches
    without reading them (the data is in memory, so there are no loader workers)."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=local",
            "hydra.launcher.timeout_min=1",
            "+hydra.launcher.max_num_timeout=8",
            "dataset=mnist5k",
            "dataset._target_=tests.paced_data.PacedMNIST5k",
            "+dataset.seconds_per_sample=0.0125",  # 2 epochs of 20 batches of 64: at least 32 s of reading
            "distiller=none",
            "trainer.epochs=2",
            "trainer.limit_train_batches=20",
            "trainer.eval_batch_size=500",
            "trainer.checkpoint_every_steps=5",
            "trainer.progress=false",
            "seed=0",
            f"paths.root={tmp_path}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        REPO,
        timeout=1500,
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert "timed-out" in logs and "Requeued job" in logs, logs[-3000:]
    job = sweep_dir / "0"
    with (job / "epochs.csv").open() as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [1, 2]  # every epoch exactly once, none repeated or lost
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed"]) >= 1
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == [1, 2]
    assert statuses(sweep_dir) == ["finished"]


def test_status_of_a_folder_that_is_not_a_sweep_says_what_to_pass(tmp_path):
    proc = run_cli(["status", str(tmp_path)], REPO, module="seal_exp.sweep")
    assert proc.returncode == 2
    assert f"{tmp_path}: no multirun.yaml here" in proc.stderr and "multirun/<date>/<time>" in proc.stderr


def test_a_running_job_that_no_process_holds_is_dead(tmp_path):
    """A job killed without closing its run (kill -9, a lost node) still says RUNNING in the store; its
    claim went with its process, so the status says dead and gives the command that resumes it."""
    from omegaconf import OmegaConf

    from seal_exp.run.claim import claim
    from seal_exp.run.identity import job_identity
    from tests.conftest import make_cfg

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = [f"paths.root={tmp_path}", *SMOKE, "seed=0,1"]
    saved = {"hydra": {"overrides": {"task": task, "hydra": ["hydra/launcher=local"]}}}
    OmegaConf.save(OmegaConf.create(saved), sweep / "multirun.yaml")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("seal-exp/digits")
    identities = [job_identity(make_cfg(tmp_path, [*SMOKE, f"seed={seed}"])) for seed in (0, 1)]
    for identity in identities:
        client.create_run(experiment, tags={"seal.identity": identity, "output_dir": str(tmp_path)})
    held = claim(tmp_path / ".cache", identities[1], tmp_path)  # job 1's process is alive
    try:
        jobs = sweep_status.status(sweep)
    finally:
        held.release()
    assert [job.status for job in jobs] == ["dead", "running"]
    table = sweep_status.format_table(jobs, sweep_status.relaunch_command(sweep))
    assert "2 jobs: 0 finished, 1 running, 0 queued, 1 dead, 0 killed, 0 failed, 0 missing" in table
    relaunch = f" -m seal_exp.train -m hydra/launcher=local hydra.sweep.dir={sweep} paths.root={tmp_path}"
    assert relaunch in table.split("To do so: ")[1]


def test_a_job_finished_on_other_data_is_shown_and_relaunched(tmp_path):
    """A run that finished on other data (dataset.root pointed elsewhere, its files changed) is not this
    job's result: the status says other data, and relaunching trains it."""
    from omegaconf import OmegaConf

    from seal_exp.data.embedded import Digits
    from seal_exp.run.identity import job_identity
    from tests.conftest import make_cfg

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = [f"paths.root={tmp_path}", *SMOKE, "seed=0,1,2"]
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"task": task, "hydra": []}}}), sweep / "multirun.yaml"
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("seal-exp/digits")
    here = Digits("digits", 10, 1, 8).fingerprint()
    recorded = {0: here, 1: "0123456789abcdef", 2: None}  # 2: a run from before fingerprints were recorded
    for seed, data in recorded.items():
        identity = job_identity(make_cfg(tmp_path, [*SMOKE, f"seed={seed}"]))
        tags = {"seal.identity": identity, "output_dir": str(tmp_path)} | (
            {"seal.data": data} if data else {}
        )
        run = client.create_run(experiment, tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")
    jobs = sweep_status.status(sweep)
    assert [job.status for job in jobs] == ["finished", "other data", "finished"]
    assert jobs[1].progress == f"trained on data 0123456789abcdef, the data at hand is {here}"
    table = sweep_status.format_table(jobs, sweep_status.relaunch_command(sweep))
    assert (
        "3 jobs: 2 finished, 0 running, 0 queued, 0 dead, 0 killed, 0 failed, 0 missing, 1 other data"
        in table
    )
    assert " -m seal_exp.train -m " in table.split("To do so: ")[1]


@pytest.mark.parametrize(
    "launcher",
    [(), pytest.param(("hydra/launcher=local",), marks=pytest.mark.slurm)],
    ids=["in-process", "local"],
)
def test_a_sweep_stopped_by_sigterm_closes_its_parent_and_its_job_killed(tmp_path, launcher):
    """``kill <launcher pid>`` while a job trains: the job checkpoints and its run is KILLED, the parent
    run is KILLED (not left RUNNING, nor FAILED), one line says so, and the status shows the job killed."""
    folder = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "seal_exp.train",
        "-m",
        *launcher,
        *PACED,
        "+dataset.seconds_per_sample=0.01",
    ]
    command += ["trainer.epochs=3", "seed=0", f"paths.root={tmp_path}", f"hydra.sweep.dir={folder}"]
    env = {**os.environ, **WITH_TESTS}
    sweep = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while (
            not (folder / "0" / "last.pt").is_file() and time.monotonic() < deadline and sweep.poll() is None
        ):
            time.sleep(0.2)
        assert (folder / "0" / "last.pt").is_file(), "the job wrote no checkpoint"
        sweep.send_signal(signal.SIGTERM)
        _, err = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "stopped by SIGTERM" in err
    found = tracked_runs(tmp_path)
    (parent,) = [r for r in found if r.data.tags.get("sweep.parent") == "true"]
    (job,) = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert (parent.info.status, job.info.status) == ("KILLED", "KILLED"), err[-3000:]
    assert statuses(folder) == ["killed"]


@pytest.mark.slurm
def test_a_local_sweep_whose_job_ends_without_a_result_ends_with_its_table_and_exit_3(tmp_path):
    """One job of a local sweep refuses its config in its own process: the launcher waits for the other,
    then prints the sweep table and the job that ended without a result, with its state and its own
    line (no traceback), and exits 3; the parent run is FAILED, the other job FINISHED."""
    folder = tmp_path / "sweep"
    common = [*SMOKE, "trainer.progress=false", f"paths.root={tmp_path}", f"hydra.sweep.dir={folder}"]
    proc = run_cli(["-m", "hydra/launcher=local", "distiller.alpha=0.3,-1", *common], REPO, timeout=600)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("ended without a result (exit code 3)") :]
    (row,) = [line for line in table.splitlines() if line.startswith("| 1 |")]
    assert "distiller.alpha=-1" in row and "configuration error: distiller.alpha=-1" in row, row
    cells = [cell.strip() for cell in row.strip("| ").split(" | ")]
    assert cells[2] == "FAILED" and cells[4].endswith("_log.err"), row  # where the job's own words are
    assert " -m seal_exp.train -m hydra/launcher=local " in table  # the command that continues it
    found = tracked_runs(tmp_path)
    (parent,) = [r for r in found if r.data.tags.get("sweep.parent") == "true"]
    (job,) = [r for r in found if r.data.tags.get("stage") == "distill"]
    assert (parent.info.status, job.info.status) == ("FAILED", "FINISHED")
