"""The pre-timeout hand-over of a data-parallel task other than rank 0 (``seal_exp.run.preemption``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.conftest import REPO

# A submitit task of rank > 0: submitit's own handler does nothing there, so after the checkpoint
# the task waits for the requeue (which SLURM performs by sending SIGTERM to every task).
WAITING_TASK = """
import signal, sys
from seal_exp.run import preemption

def submitit_on_a_follower(signum, frame):
    print("submitit handler ran", flush=True)

signal.signal(signal.SIGUSR2, submitit_on_a_follower)
with preemption.deferred() as guard:
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
