"""The command line as users run it: `python -m seal_exp.train ...` in a fresh interpreter."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import SMOKE, run_cli

pytestmark = pytest.mark.slow


def test_cli_run_prints_accuracy_and_location_last(tmp_path):
    # the defaults: measured after training, figures and the MLflow model
    proc = run_cli([*SMOKE, f"paths.root={tmp_path}"], cwd=tmp_path, measure=True, outputs=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("student test accuracy ") and "teacher" in last and "MLflow run" in last
    (summary_path,) = (tmp_path / "outputs").glob("*/*/summary.json")
    assert str(summary_path.parent) in last
    # without a terminal: progress lines instead of a bar, and the result line in train.log too
    logged = (summary_path.parent / "train.log").read_text()
    assert logged.rstrip().endswith(last), logged[-500:]
    assert "student 1/1:  33% (1/3 steps)" in proc.stdout and "student 1/1: 100% (3/3 steps)" in proc.stdout
    assert "student test, selected epoch:  50% (1/2 steps)" in proc.stdout
    summary = json.loads(summary_path.read_text())
    # the measurements after training, on by default: in the log and in the summary
    assert "student: firing rate " in proc.stdout and "× the student's energy" in proc.stdout
    assert summary["energy_uj"] > 0 and summary["teacher_energy_uj"] > summary["energy_uj"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["hydra.overrides"] == f"dataset=digits debug=smoke paths.root={tmp_path}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert {".hydra/config.yaml", ".hydra/overrides.yaml"} <= artifacts
    # matplotlib's PDF backend has fontTools log every font it subsets (hundreds of INFO lines a run), and
    # MLflow announces the store it creates: neither reaches the console, a SLURM log or train.log
    assert list(summary_path.parent.glob("training_curves.pdf"))
    for where, text in (("output", proc.stdout + proc.stderr), ("train.log", logged)):
        assert text.count("fontTools") == 0, where
        info = [line for line in text.splitlines() if "INFO" in line and "][seal_exp" not in line]
        assert info == [], where


def test_multirun_puts_its_jobs_under_one_parent_run(tmp_path):
    """One parent named by date, method and swept keys; each job named by what differs."""
    sweep = ["-m", "distiller.alpha=0.3,0.6", "optim.lr=0.05"]
    before = time.strftime("%Y-%m-%d %H:%M")
    proc = run_cli([*sweep, *SMOKE, f"paths.root={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "seal-exp/digits"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    name = parents[0].info.run_name
    assert name.startswith("[smoke] sweep 20") and name.endswith(" seal α") and name[14:30] >= before, name
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["seal.alpha"] for r in children) == ["0.3", "0.6"]
    assert sorted(r.info.run_name for r in children) == [
        "[smoke] seal α=0.3 β=0.15 τ=3 T=4 seed=0 lr=0.05",  # debug=smoke: cut short, and named so
        "[smoke] seal α=0.6 β=0.15 τ=3 T=4 seed=0 lr=0.05",
    ]
    # the end of the output: the jobs as a table, then how to report on the sweep
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    tail = proc.stdout[proc.stdout.index(f"sweep {sweep_dir}: 2 of 2 jobs finished") :].splitlines()
    assert tail[1].startswith("| job | distiller.alpha | status | test acc (selected on val) |")
    summaries = [json.loads((sweep_dir / n / "summary.json").read_text()) for n in ("0", "1")]
    assert tail[3].startswith(f"| 0 | 0.3 | finished | {summaries[0]['test_acc']:.2f} |")
    assert tail[-1] == f"report (tables, heatmaps, MLflow): python -m seal_exp.report {sweep_dir}"
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.tags["hydra.job.num"] for r in children) == ["0", "1"]
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]


def test_a_sweep_whose_jobs_all_refuse_their_config_leaves_no_run(tmp_path):
    """Each job stops before its own run; the sweep's parent, with nothing under it, is deleted."""
    proc = run_cli(["-m", "seed=0,1", "optim.lr=inf", *SMOKE, f"paths.root={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "seal-exp: configuration error: optim.lr=inf is invalid" in proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []


def test_a_failed_sweep_with_runs_keeps_its_parent_failed(tmp_path):
    """Job 0 trains, job 1 refuses its config: the parent stays, FAILED, with job 0 under it."""
    proc = run_cli(["-m", "optim.lr=0.1,inf", *SMOKE, f"paths.root={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    (parent,) = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    assert parent.info.status == "FAILED"
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert child.info.status == "FINISHED"


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    proc = run_cli(["distiller=bogus", f"paths.root={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2  # a user error, like every configuration error
    assert "Could not find 'distiller/bogus'" in proc.stderr
    assert "kd" in proc.stderr and "none" in proc.stderr and "seal" in proc.stderr


def test_bad_value_exits_with_a_one_line_message_naming_key_and_file(tmp_path):
    """One line naming the key, its file and the override; Hydra made the run's folder before the config
    was checked: the refused run removes it (and the dated folder made with it), but never a folder that
    was there before."""
    proc = run_cli(["distiller.alpha=-0.3", f"paths.root={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "seal-exp: configuration error: distiller.alpha=-0.3 is invalid: the ELA weight must be >= 0. "
        "[conf/distiller/seal.yaml; command line: distiller.alpha=-0.3]"
    )
    assert list(tmp_path.iterdir()) == []
    given = tmp_path / "given"
    given.mkdir()
    proc = run_cli(["distiller.alpha=-1", f"paths.root={tmp_path}", f"hydra.run.dir={given}"], cwd=tmp_path)
    assert proc.returncode == 2 and given.is_dir()
    assert not Path(tmp_path, "mlflow.db").exists()


def test_a_slurm_sweep_without_sbatch_stops_before_any_folder_or_run(tmp_path):
    import sys

    proc = run_cli(
        ["-m", "hydra/launcher=slurm", "seed=0,1", f"paths.root={tmp_path}"],
        cwd=tmp_path,
        env={"PATH": str(Path(sys.executable).parent)},  # a machine without SLURM
    )
    assert proc.returncode == 2
    assert "sbatch, which is not on this machine's PATH" in proc.stderr
    assert "hydra/launcher=local" in proc.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_run_folder_that_cannot_be_created_is_one_line_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli([f"hydra.run.dir={blocker}/run", f"paths.root={tmp_path}", *SMOKE], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"hydra.run.dir='{blocker}/run' is invalid" in proc.stderr
    assert "is a file, not a folder" in proc.stderr
