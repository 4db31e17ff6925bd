"""Jobs that survive being killed: exact resume, config checks, the pre-timeout signal, skipped reruns."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from seal_exp.config import ConfigError
from seal_exp.data.embedded import EmbeddedImages
from seal_exp.run import checkpoint
from seal_exp.run.identity import identity_config, job_identity
from seal_exp.train import train
from seal_exp.training.epoch import EpochTotals
from tests.conftest import REPO, make_cfg, result_figures, same_weights, tracked_runs

# NLD draws noise every step from the run's generator, so its stream must be resumed too. Two
# epochs of four steps: enough for a stop mid-epoch, at an epoch's end, and in the second epoch.
RUN = (
    "dataset=digits",
    "debug=smoke",
    "distiller=nld",
    "trainer.epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.checkpoint_every_steps=1",
)
TOTAL_STEPS = 8


def store(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root}/mlflow.db")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("reference")
    summary = train(make_cfg(root, RUN, output=root / "out"))
    return root, summary


def share_teacher(reference_root: Path, root: Path) -> None:
    """Reuse the reference run's cached teacher, so a test's step counts are the student's alone."""
    (root / ".cache").mkdir(parents=True, exist_ok=True)
    os.symlink(reference_root / ".cache" / "teachers", root / ".cache" / "teachers")


class Interrupt(Exception):
    """Stands in for a job killed between two steps."""


def interrupt_at(monkeypatch, global_step: int) -> None:
    """Make the engine die right after the checkpoint of ``global_step`` (1-based) is written."""
    calls = {"n": 0}
    original = EpochTotals.add

    def add(self, *args, **kwargs):
        if calls["n"] == global_step:
            raise Interrupt(f"killed before step {global_step + 1}")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EpochTotals, "add", add)


@pytest.mark.slow
def test_a_job_sigkilled_mid_training_resumes_to_the_same_numbers_and_weights(tmp_path, reference):
    """The acceptance test: SIGKILL after a random step, restart the same command, compare bit for bit."""
    ref_root, ref_summary = reference
    root, run_dir = tmp_path, tmp_path / "job"
    share_teacher(ref_root, root)
    command = [
        sys.executable,
        "-m",
        "seal_exp.train",
        *RUN,
        "trainer.progress=false",
        f"paths.root={root}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random()
    kill_after = rng.randint(2, TOTAL_STEPS - 3)
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = run_dir / "last.pt"
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = checkpoint.load(last)["global_step"]
            except Exception:  # replaced while we read it: read again
                continue
            if step >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the job ended before it could be killed: {proc.returncode}"
    killed_at = checkpoint.load(last)
    assert 0 < killed_at["global_step"] < TOTAL_STEPS and not killed_at["finished"], killed_at["global_step"]
    assert not (run_dir / "summary.json").exists()
    assert tracked_runs(root, "distill")[0].info.status == "RUNNING"  # SIGKILL leaves no chance to close it

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result_figures(summary) == result_figures(ref_summary), (
        f"killed after step {killed_at['global_step']}"
    )
    assert same_weights(run_dir / "last.pt", ref_root / "out" / "last.pt")
    assert same_weights(run_dir / "best.pt", ref_root / "out" / "best.pt")
    # one MLflow run, reattached and finished, with every epoch's metrics logged exactly once
    (run,) = tracked_runs(root, "distill")
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["resumed"] == "1"
    history = store(root).get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == [1, 2]


@pytest.mark.parametrize("stop_after", [3, 4, 6])  # mid-epoch, at an epoch's last step, mid-epoch
def test_resume_at_any_step_boundary_is_exact(tmp_path, monkeypatch, reference, stop_after):
    ref_root, ref_summary = reference
    cfg = make_cfg(ref_root, [*RUN, "tracking=none"], output=tmp_path / "job")
    interrupt_at(monkeypatch, stop_after)
    with pytest.raises(Interrupt):
        train(cfg)
    assert checkpoint.load(tmp_path / "job" / "last.pt")["global_step"] == stop_after
    monkeypatch.undo()
    summary = train(cfg)
    assert result_figures(summary) == result_figures(ref_summary)
    assert same_weights(tmp_path / "job" / "last.pt", ref_root / "out" / "last.pt")


def test_a_relaunch_in_a_new_folder_continues_the_interrupted_run_of_the_same_job(
    tmp_path, monkeypatch, reference
):
    """A relaunched sweep gets a new folder: the job finds its interrupted run through the tracking store."""
    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    interrupt_at(monkeypatch, 5)
    with pytest.raises(Interrupt):
        train(make_cfg(tmp_path, RUN, output=tmp_path / "first"))
    (interrupted,) = tracked_runs(tmp_path, "distill")
    assert interrupted.info.status == "FAILED"
    monkeypatch.undo()
    summary = train(make_cfg(tmp_path, RUN, output=tmp_path / "second"))
    assert result_figures(summary) == result_figures(ref_summary)
    assert same_weights(tmp_path / "second" / "last.pt", ref_root / "out" / "last.pt")
    (run,) = tracked_runs(tmp_path, "distill")  # the same MLflow run, continued
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["output_dir"] == str((tmp_path / "second").resolve())


def test_resuming_with_a_changed_config_is_refused_naming_the_keys(tmp_path, monkeypatch, reference):
    share_teacher(reference[0], tmp_path)
    interrupt_at(monkeypatch, 2)
    with pytest.raises(Interrupt):
        train(make_cfg(tmp_path, [*RUN, "tracking=none"], output=tmp_path / "job"))
    monkeypatch.undo()
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    changed = make_cfg(tmp_path, [*RUN, "tracking=none", "optim.lr=0.05", "seed=3"], output=tmp_path / "job")
    with pytest.raises(ConfigError) as err:
        train(changed)
    message = str(err.value)
    assert f"{tmp_path / 'job' / 'last.pt'} was written with a different config" in message
    assert "optim.lr: 0.1 -> 0.05" in message and "seed: 0 -> 3" in message
    assert "hydra.run.dir" in message
    # output and display settings are not part of a job's identity: changing them still resumes
    same = make_cfg(tmp_path, [*RUN, "tracking=none", "trainer.progress_every=7"], output=tmp_path / "job")
    assert job_identity(same) == job_identity(make_cfg(tmp_path, [*RUN, "tracking=none"]))
    assert "paths.output" not in identity_config(same)


def test_resume_false_never_overwrites_an_existing_checkpoint(tmp_path, monkeypatch, reference):
    share_teacher(reference[0], tmp_path)
    interrupt_at(monkeypatch, 2)
    with pytest.raises(Interrupt):
        train(make_cfg(tmp_path, [*RUN, "tracking=none"], output=tmp_path / "job"))
    monkeypatch.undo()
    before = (tmp_path / "job" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"resume=false but .*last\.pt exists"):
        train(make_cfg(tmp_path, [*RUN, "tracking=none", "resume=false"], output=tmp_path / "job"))
    assert (tmp_path / "job" / "last.pt").read_bytes() == before


def test_the_pre_timeout_signal_checkpoints_at_the_next_step_then_hands_over(
    tmp_path, monkeypatch, reference
):
    """submitit's handler is called only after last.pt holds the step that was running."""
    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    handed_over = []

    def submitit_handler(signum, frame):  # what submitit installs: checkpoint the submission, requeue, exit
        handed_over.append(checkpoint.load(tmp_path / "job" / "last.pt")["global_step"])
        raise SystemExit(3)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    calls = {"n": 0}
    original = EpochTotals.add

    def add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGUSR2)  # arrives in the middle of step 6
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EpochTotals, "add", add)
    cfg = make_cfg(tmp_path, [*RUN, "trainer.checkpoint_every_steps=null"], output=tmp_path / "job")
    try:
        with pytest.raises(SystemExit) as exited:
            train(cfg)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exited.value.code == 3 and handed_over == [6]
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "KILLED"
    monkeypatch.undo()
    summary = train(cfg)  # what the requeued job does
    assert result_figures(summary) == result_figures(ref_summary)
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED"


@pytest.fixture
def foreground_signals():
    """The handlers of a command started from a shell: a pytest-xdist worker ignores SIGINT, and a job
    leaves an ignored signal alone (nohup's choice)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_checkpoint_mark_the_run_killed_and_exit_then_resume(
    tmp_path, monkeypatch, reference, capsys, stop, foreground_signals
):
    """What scancel, a container stop or Ctrl-C sends: the step finishes, last.pt holds it, the run is
    KILLED, the process exits 128 + signal with one line; the same command resumes it exactly."""
    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    calls = {"n": 0}
    original = EpochTotals.add

    def add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), stop)  # arrives in the middle of step 5
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EpochTotals, "add", add)
    cfg = make_cfg(tmp_path, [*RUN, "trainer.checkpoint_every_steps=null"], output=tmp_path / "job")
    before = signal.getsignal(stop)
    with pytest.raises(SystemExit) as exited:
        train(cfg)
    assert exited.value.code == 128 + int(stop)
    assert signal.getsignal(stop) == before  # the job's handler is gone with the job
    assert f"stopped by {stop.name}" in capsys.readouterr().err
    assert checkpoint.load(tmp_path / "job" / "last.pt")["global_step"] == 5
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "KILLED"
    monkeypatch.undo()
    summary = train(cfg)
    assert result_figures(summary) == result_figures(ref_summary)
    (again,) = tracked_runs(tmp_path, "distill")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"


def test_a_second_sigterm_stops_at_once_and_the_run_is_killed(tmp_path, monkeypatch, reference):
    share_teacher(reference[0], tmp_path)
    calls = {"n": 0}
    original = EpochTotals.add

    def add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # impatient: do not wait for the step boundary
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EpochTotals, "add", add)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path, RUN, output=tmp_path / "job"))
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "KILLED"


def test_a_finished_job_is_not_trained_again_unless_asked(tmp_path, monkeypatch, capsys):
    overrides = ["dataset=digits", "debug=smoke"]
    first = train(make_cfg(tmp_path, overrides, output=tmp_path / "a"))
    monkeypatch.setattr("seal_exp.train.fit", lambda *a, **kw: pytest.fail("trained again"))
    again = train(make_cfg(tmp_path, overrides, output=tmp_path / "b"))
    assert again["skipped"] is True and again["reused_run"] == first["mlflow_run_id"]
    assert again["test_acc"] == first["test_acc"]
    copied = json.loads((tmp_path / "b" / "summary.json").read_text())  # the new sweep folder is complete
    assert copied["test_acc"] == first["test_acc"] and copied["reused_run"] == first["mlflow_run_id"]
    assert len(tracked_runs(tmp_path, "distill")) == 1
    assert again["trained_under_other_code"] is False
    # finished under other code (a plot edited, or a loss): still skipped, and the line says so
    store(tmp_path).set_tag(first["mlflow_run_id"], "seal.code", "0123456789ab")
    capsys.readouterr()
    other = train(make_cfg(tmp_path, overrides, output=tmp_path / "f"))
    assert other["skipped"] is True and other["trained_under_other_code"] is True
    assert "trained under other seal-exp code: source 0123456789ab" in capsys.readouterr().out
    # the earlier folder gone (cleaned up, another machine): the summary tracked with the run is reported
    shutil.rmtree(tmp_path / "a")
    gone = train(make_cfg(tmp_path, overrides, output=tmp_path / "e"))
    assert gone["skipped"] is True and gone["test_acc"] == first["test_acc"]
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["test_acc"] == first["test_acc"]
    monkeypatch.undo()
    forced = train(make_cfg(tmp_path, [*overrides, "skip_finished=false"], output=tmp_path / "c"))
    assert "skipped" not in forced and len(tracked_runs(tmp_path, "distill")) == 2
    # a deleted run does not count: the job trains again
    client = store(tmp_path)
    for run in tracked_runs(tmp_path, "distill"):
        client.delete_run(run.info.run_id)
    fresh = train(make_cfg(tmp_path, overrides, output=tmp_path / "d"))
    assert "skipped" not in fresh and fresh["test_acc"] == first["test_acc"]


def interrupted_job(tmp_path: Path, monkeypatch, reference) -> tuple:
    """A job stopped after step 3: its config and its last.pt."""
    share_teacher(reference[0], tmp_path)
    interrupt_at(monkeypatch, 3)
    cfg = make_cfg(tmp_path, RUN, output=tmp_path / "job")
    with pytest.raises(Interrupt):
        train(cfg)
    monkeypatch.undo()
    return cfg, tmp_path / "job" / "last.pt"


def test_a_last_pt_of_other_code_is_refused_unless_asked(tmp_path, monkeypatch, reference):
    cfg, last = interrupted_job(tmp_path, monkeypatch, reference)
    checkpoint.atomic_save(checkpoint.load(last) | {"code": "0123456789ab"}, last)  # code edited since
    with pytest.raises(ConfigError, match=r"written by other seal-exp code .*resume_across_code_change=true"):
        train(cfg)
    summary = train(make_cfg(tmp_path, [*RUN, "resume_across_code_change=true"], output=tmp_path / "job"))
    assert summary["epochs"] == 2 and checkpoint.load(last)["global_step"] == TOTAL_STEPS


# ------------------------------------------------------------------- one owner, one run per job
def test_a_second_launch_of_a_running_job_stops_before_reading_data(tmp_path, monkeypatch):
    from seal_exp.run.claim import JobRunning, claim

    cfg = make_cfg(tmp_path, ["dataset=digits", "debug=smoke"], output=tmp_path / "second")
    held = claim(tmp_path / ".cache", job_identity(cfg), tmp_path / "first")  # the first launch, running
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    try:
        with pytest.raises(
            JobRunning, match=rf"running already \(pid {os.getpid()} .*folder {tmp_path / 'first'}"
        ):
            train(cfg)
    finally:
        held.release()
    assert tracked_runs(tmp_path, "distill") == []  # no second MLflow run, no files
    assert not (tmp_path / "second").exists()


def test_a_folder_with_another_jobs_results_is_refused(tmp_path):
    train(make_cfg(tmp_path, ["dataset=digits", "debug=smoke", "tracking=none"], output=tmp_path / "job"))
    other = make_cfg(
        tmp_path, ["dataset=digits", "debug=smoke", "tracking=none", "seed=5"], output=tmp_path / "job"
    )
    with pytest.raises(ConfigError, match=r"holds the results of another job"):
        train(other)


def test_a_job_stopped_while_its_teacher_trains_continues_in_the_same_run_logging_each_point_once(
    tmp_path, monkeypatch
):
    """No last.pt yet (the teacher was training): the restart reattaches the same MLflow run, the
    teacher continues from its partial checkpoint, and every metric point is logged once."""
    overrides = [
        "dataset=digits",
        "debug=smoke",
        "teacher.recipe.epochs=3",
        "teacher.recipe.limit_train_batches=2",
    ]
    cfg = make_cfg(tmp_path, overrides, output=tmp_path / "job")
    calls = {"n": 0}
    original = EpochTotals.add

    def add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the teacher's second epoch, first step
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EpochTotals, "add", add)
    with pytest.raises(SystemExit):
        train(cfg)
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "KILLED" and not (tmp_path / "job" / "last.pt").exists()
    monkeypatch.undo()
    train(cfg)
    (again,) = tracked_runs(tmp_path, "distill")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    client = store(tmp_path)
    for key in ("teacher/val/acc", "teacher/test/acc", "val/acc"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)) >= 1, (key, steps)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "teacher/val/acc")) == [1, 2, 3]


def test_a_truncated_last_pt_is_refused_and_its_run_closed_as_failed(tmp_path, monkeypatch, reference):
    cfg, last = interrupted_job(tmp_path, monkeypatch, reference)
    last.write_bytes(last.read_bytes()[:100])  # a disk that filled up, a copy cut short
    (run,) = tracked_runs(tmp_path, "distill")
    store(tmp_path).update_run(run.info.run_id, status="RUNNING")  # as a kill -9 leaves it
    with pytest.raises(ConfigError, match=rf"cannot read {last}"):
        train(cfg)
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FAILED" and "cannot read" in run.data.tags["seal.failure"]


class Augmented(torch.utils.data.Dataset):
    """Samples that draw from the global RNG when read (as augmentation does), counting the reads."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads += 1
        return torch.tensor([float(i)]) + torch.rand(1), i


def test_a_mid_epoch_resume_without_workers_reads_only_the_remaining_batches():
    """The batches already trained are not read again, yet every later batch (its samples and their
    random augmentation) and the loader's generator come out as without the interruption."""
    from seal_exp.data.loaders import make_loader
    from seal_exp.training.epoch import EpochTotals, _batches_from

    data = Augmented(20)
    loader = make_loader(data, 4, shuffle=True, seed=3)
    start = loader.generator.get_state()
    torch.manual_seed(11)
    batches, boundary = iter(loader), None
    uninterrupted = []
    for k in range(5):
        if k == 2:
            boundary = checkpoint.rng_states()  # what last.pt holds after two steps
        uninterrupted.append(next(batches))
    assert next(batches, None) is None  # the epoch's end: the sampler makes its last draws
    after = loader.generator.get_state()

    loader.generator.set_state(start)
    torch.manual_seed(999)  # whatever the resumed process drew before
    data.reads = 0
    totals = EpochTotals.zeros(torch.device("cpu"))
    totals.steps, totals.rng = 2, boundary
    resumed = list(_batches_from(loader, totals))
    assert data.reads == 12  # batches 2, 3, 4 only
    assert len(resumed) == 3
    for got, want in zip(resumed, uninterrupted[2:], strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(loader.generator.get_state(), after)


# ------------------------------------------------------------------- every ending leaves a whole result
def test_a_relaunch_in_a_new_folder_takes_the_selected_model_along(tmp_path, monkeypatch, reference):
    """Killed after its last validation improvement (here: while logging the model), relaunched in a new
    folder: that folder ends with the run's best.pt, which is logged, measured and loadable, and the old
    folder keeps a note of where its checkpoints went instead of orphaned copies."""
    from seal_exp import load_student
    from seal_exp.tracking import MLflowTracker

    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"

    def killed(self, model, best, example):
        raise Interrupt("killed while logging the model")

    monkeypatch.setattr(MLflowTracker, "log_student", killed)
    with pytest.raises(Interrupt):
        train(make_cfg(tmp_path, RUN, output=first))
    assert checkpoint.load(first / "last.pt")["finished"] and (first / "best.pt").is_file()
    monkeypatch.undo()
    logged, measured = [], []
    original = MLflowTracker.log_student
    monkeypatch.setattr(
        MLflowTracker,
        "log_student",
        lambda self, m, best, ex: (logged.append(best), original(self, m, best, ex)),
    )
    monkeypatch.setattr(
        "seal_exp.train._measures", lambda cfg, plan, data, out, pm: measured.append(out) or {}
    )
    summary = train(make_cfg(tmp_path, [*RUN, "eval.after_training=true"], output=second))

    assert result_figures(summary) == result_figures(ref_summary)
    assert same_weights(second / "best.pt", ref_root / "out" / "best.pt")
    assert logged == [second / "best.pt"] and measured == [second]
    assert not (first / "last.pt").exists() and not (first / "best.pt").exists()
    assert (first / "continued_in.txt").read_text().strip() == str(second.resolve())
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FINISHED" and run.data.tags["output_dir"] == str(second.resolve())
    assert "best.pt" in [a.path for a in store(tmp_path).list_artifacts(run.info.run_id)]
    x = torch.rand(2, 1, 8, 8)
    net = load_student(run.info.run_id, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert torch.equal(net(x), load_student(second)(x))
    assert (second / "config.yaml").is_file()  # what `python -m seal_exp.evaluate <folder>` rebuilds from


def test_with_tracking_none_the_same_command_resumes_in_its_new_folder(tmp_path, monkeypatch, reference):
    """No tracking store to ask: the folder of the job's latest attempt is noted in the cache."""
    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupt):
        train(make_cfg(tmp_path, [*RUN, "tracking=none"], output=tmp_path / "first"))
    monkeypatch.undo()
    steps = {"n": 0}
    original = EpochTotals.add

    def add(self, *args, **kwargs):
        steps["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EpochTotals, "add", add)
    summary = train(make_cfg(tmp_path, [*RUN, "tracking=none"], output=tmp_path / "second"))
    assert steps["n"] == TOTAL_STEPS - 3  # continued, not started again
    assert result_figures(summary) == result_figures(ref_summary)
    assert same_weights(tmp_path / "second" / "last.pt", ref_root / "out" / "last.pt")
    assert (tmp_path / "first" / "continued_in.txt").read_text().strip() == str(
        (tmp_path / "second").resolve()
    )
    # finished: a later launch in yet another folder trains afresh, leaving the finished folder alone
    monkeypatch.undo()
    train(make_cfg(tmp_path, [*RUN, "tracking=none", "trainer.epochs=1"], output=tmp_path / "other"))
    assert (tmp_path / "second" / "last.pt").is_file() and (tmp_path / "second" / "best.pt").is_file()


def test_a_full_disk_fails_the_run_in_one_line_keeps_the_last_checkpoint_and_logs_each_epoch_once(
    tmp_path, monkeypatch, reference
):
    """The epoch-2 last.pt cannot be written after epoch 2's metrics were logged: the resumed run trains
    epoch 2 again, and the metric history still holds one value per epoch."""
    import errno

    from seal_exp.run.resume import LAST_FORMAT

    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    cfg = make_cfg(tmp_path, [*RUN, "trainer.checkpoint_every_steps=null"], output=tmp_path / "job")
    original = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == LAST_FORMAT and obj["epoch"] == 2:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointWriteError) as failed:
        train(cfg)
    last = tmp_path / "job" / "last.pt"
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"could not write {last} (ENOSPC: No space left on device)")
    assert "the previous last.pt there is intact" in message and "run the same command" in message
    assert checkpoint.load(last)["epoch"] == 1
    assert not list((tmp_path / "job").glob(".*.tmp"))  # the half-written file is gone
    (run,) = tracked_runs(tmp_path, "distill")
    assert run.info.status == "FAILED"
    monkeypatch.undo()
    summary = train(cfg)
    assert result_figures(summary) == result_figures(ref_summary)
    client = store(tmp_path)
    for key in ("val/acc", "train/loss", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2], key


DISK_FULL = """
import errno, runpy, sys, torch

original = torch.save

def disk_full(obj, f, *args, **kwargs):  # every last.pt write fails as on a full disk
    if isinstance(obj, dict) and obj.get("format") == "seal-exp/last-v1":
        raise OSError(errno.ENOSPC, "No space left on device")
    return original(obj, f, *args, **kwargs)

torch.save = disk_full
sys.argv = ["seal_exp.train", *sys.argv[1:]]
runpy.run_module("seal_exp.train", run_name="__main__", alter_sys=True)  # python -m seal_exp.train
"""


@pytest.mark.slow
def test_a_full_disk_ends_the_command_with_one_line(tmp_path):
    job = tmp_path / "job"
    args = ["dataset=digits", "debug=smoke", "distiller=none", "tracking=none", "eval.after_training=false"]
    args += ["trainer.progress=false", f"paths.root={tmp_path}", f"hydra.run.dir={job}"]
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith(f"seal-exp: run failed: could not write {job / 'last.pt'} (ENOSPC: No space left")
    assert line in (job / "train.log").read_text()


@pytest.mark.parametrize(
    ("stop", "busy_in"),
    [(signal.SIGTERM, "model logging"), (signal.SIGHUP, "measures")],
    ids=["SIGTERM-model-logging", "SIGHUP-measures"],
)
def test_a_stop_signal_after_training_ends_the_run_killed_at_once_and_the_rerun_finishes_it(
    tmp_path, monkeypatch, reference, capsys, stop, busy_in
):
    """scancel (SIGTERM) or an ssh drop (SIGHUP) while the model is logged or measured, minutes of work
    on a real run without a step boundary: the run is KILLED at once, never left RUNNING for SLURM's
    SIGKILL; the same command finishes it. A signal while the run is closed FINISHED waits for that."""
    from seal_exp.tracking import MLflowTracker

    ref_root, ref_summary = reference
    share_teacher(ref_root, tmp_path)
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a suite run under nohup ignores SIGHUP
    try:
        cfg = make_cfg(tmp_path, [*RUN, "eval.after_training=true"], output=tmp_path / "job")

        def busy(*args, **kwargs):
            os.kill(os.getpid(), stop)
            time.sleep(30)
            pytest.fail(f"{stop.name} was ignored during {busy_in}")

        if busy_in == "model logging":
            monkeypatch.setattr(MLflowTracker, "log_student", busy)
        else:
            monkeypatch.setattr("seal_exp.train._measures", busy)
        with pytest.raises(SystemExit) as exited:
            train(cfg)
        assert exited.value.code == 128 + int(stop)
        assert f"seal-exp: stopped by {stop.name}: outside training" in capsys.readouterr().err
        (run,) = tracked_runs(tmp_path, "distill")
        assert run.info.status == "KILLED"
        monkeypatch.undo()

        original = MLflowTracker.finish

        def finish(self, status, error=None):
            if status == "FINISHED":
                os.kill(os.getpid(), stop)
            return original(self, status, error)

        monkeypatch.setattr(MLflowTracker, "finish", finish)
        monkeypatch.setattr("seal_exp.train._measures", lambda *a: {})
        with pytest.raises(SystemExit) as exited:
            train(cfg)
        assert exited.value.code == 128 + int(stop)
        assert "is FINISHED, its results are written; nothing to resume" in capsys.readouterr().err
        (again,) = tracked_runs(tmp_path, "distill")
        assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
        summary = json.loads((tmp_path / "job" / "summary.json").read_text())
        assert result_figures(summary) == result_figures(ref_summary)
    finally:
        signal.signal(signal.SIGHUP, before)
