"""The pre-timeout hand-over of a data-parallel task other than rank 0 (``seal_exp.run.preemption``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

# A submitit task of rank > 0: submitit's own handler does nothing there, so after the checkpoint
# the task waits for the requeue (which SLURM performs by sending SIGTERM to every task).
WAITING_TASK = """
import signal, sys
from seal_exp.run import preemption

def submitit_on_a_follower(signum, frame):
    print("submitit handler ran", flush=True)

signal.signal(signal.SIGUSR2, submitit_on_a_follower)
with preemption.deferred() as guard, guard.at_step_boundaries():  # a training loop runs
    signal.raise_signal(signal.SIGUSR2)
    assert guard.requested()
    print("waiting for the requeue", flush=True)
    guard.hand_over(wait_for_requeue=True)
"""


def test_a_follower_task_waiting_for_the_requeue_exits_at_the_requeues_sigterm():
    """It neither exits before the requeue (that could end the job first) nor outlives its SIGTERM
    (the scheduler would wait KillWait seconds for it on every requeue)."""
    task = subprocess.Popen(
        [sys.executable, "-c", WAITING_TASK],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert task.stdout is not None
        assert task.stdout.readline().strip() == "waiting for the requeue"
        assert task.stdout.readline().strip() == "submitit handler ran"
        time.sleep(1.0)
        assert task.poll() is None, task.stderr.read() if task.stderr else ""  # still waiting
        sent = time.monotonic()
        task.send_signal(signal.SIGTERM)
        code = task.wait(timeout=20)
        waited = time.monotonic() - sent
    finally:
        task.kill()
    assert code == 128 + signal.SIGTERM, task.stderr.read() if task.stderr else ""
    assert waited < 10  # at once, not after preemption.REQUEUE_WAIT_S


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux: the SigCgt mask of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_the_pre_timeout_signal_seconds_after_the_start_hands_the_job_over_before_it_trains(tmp_path):
    """SLURM may send it seconds after the job starts (a time limit shorter than its delay), while the
    entry point still imports torch: it is recorded from the first moment, and the job hands over
    (here, without submitit, exits 140) as soon as it starts, without a traceback or a half-trained step."""
    job = tmp_path / "job"
    command = [sys.executable, "-m", "seal_exp.train", "dataset=digits", "debug=smoke", "distiller=none"]
    command += ["tracking=none", f"paths.root={tmp_path}", f"hydra.run.dir={job}"]
    task = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    torch_loaded = None
    try:
        deadline = time.monotonic() + 60
        while task.poll() is None and time.monotonic() < deadline:
            if _catches(task.pid, signal.SIGUSR2):
                torch_loaded = "libtorch" in Path(f"/proc/{task.pid}/maps").read_text()
                task.send_signal(signal.SIGUSR2)
                break
            time.sleep(0.001)
        out, err = task.communicate(timeout=120)
    finally:
        task.kill()
    assert torch_loaded is False, "the handler came only after torch was imported"
    assert task.returncode == 128 + signal.SIGUSR2, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    assert "received SIGUSR2 (time limit close) before the job started" in out + err
    assert not (job / "last.pt").exists()


def test_an_attempt_at_the_time_limit_says_whether_the_limit_lets_the_job_finish():
    """The line a job prints when the time limit stops it: its progress this attempt and how many more
    attempts are left at that pace; past a few, that the limit is too short; no step at all, that the
    job cannot progress."""
    from seal_exp.run.preemption import ATTEMPTS_WORTH_A_WARNING, Preempted, attempt_line

    assert attempt_line(Preempted("x"), 60) is None  # the loop did not say
    fine = attempt_line(Preempted("x", attempt_steps=50, steps_left=100), 61.4)
    assert fine == "time limit: this attempt (61 s) trained 50 steps; 100 are left, about 2 more attempts"
    left = 15 * (ATTEMPTS_WORTH_A_WARNING + 6)  # the report's case: 15 of 150 steps an attempt
    short = attempt_line(Preempted("x", attempt_steps=15, steps_left=left), 60)
    assert f"about {ATTEMPTS_WORTH_A_WARNING + 6} more attempts" in short
    assert "too short" in short and "hydra.launcher.timeout_min" in short
    stuck = attempt_line(Preempted("x", attempt_steps=0, steps_left=150), 40)
    assert "trained no step" in stuck and "cannot progress" in stuck


def test_the_first_step_records_the_jobs_start_up_for_the_launcher(tmp_path):
    """The launcher weighs time limits against how long a job of the dataset took to reach its first
    step; the job records it when the loop first asks whether to stop."""
    from seal_exp.run.startup import measured_startup, process_age_s, timing_first_step

    asked = []
    poll = timing_first_step(lambda: bool(asked.append(1)), tmp_path, "digits")
    assert measured_startup(tmp_path, ["digits"]) is None
    before = process_age_s()
    assert poll() is False and poll() is False and len(asked) == 2
    seconds, where = measured_startup(tmp_path, ["digits", "cifar10"])
    assert before - 0.1 <= seconds <= process_age_s() + 0.1 and where == str(tmp_path / "startup.json")
    assert measured_startup(tmp_path, ["cifar10"]) is None
