"""The cluster's pre-timeout signal, deferred to the next optimiser-step boundary.

submitit asks SLURM (``--signal=USR2@<signal_delay_s>``) or its local controller to send a signal
shortly before the time limit, and its own handler checkpoints the submission and requeues the job
at once. Stopping mid-step would lose the step, so :func:`deferred` records the signal instead; the
training loop notices it at the next step boundary, writes ``last.pt`` and raises :class:`Preempted`, and
:meth:`Guard.hand_over` then calls submitit's handler, which requeues the job (and exits). Outside
submitit the process exits after the checkpoint; the next start resumes from it.

SIGTERM (``scancel``, a container stop, ``kill``) and SIGINT (Ctrl-C) stop the job the same way: a
checkpoint at the next step boundary, the tracked run marked KILLED, and an exit with 128 + the signal
number and a one-line message. A second one stops at once (as KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def preemption_signal() -> signal.Signals:
    """The signal submitit uses (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[f"SIG{name}" if not name.startswith("SIG") else name]


REQUEUE_WAIT_S = 300.0


class Preempted(RuntimeError):
    """Training stopped at a step boundary after the pre-timeout signal; ``last.pt`` is written."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Guard:
    """Records the signals; :meth:`hand_over` gives the pre-timeout one to whoever handled it before
    (submitit), and :attr:`stop_signal` says the job was asked to stop (SIGTERM, SIGINT)."""

    def __init__(self, signum: signal.Signals, previous: Any) -> None:
        self.signum, self.previous = signum, previous
        self.received_at: float | None = None
        self.stop_signal: signal.Signals | None = None

    def _on_stop(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        self.stop_signal = signal.Signals(signum)
        log.warning(
            "received %s: saving a checkpoint at the next step boundary, then stopping "
            "(send it again to stop at once)",
            self.stop_signal.name,
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received_at is None:
            self.received_at = time.time()
            log.warning(
                "received %s (time limit close): saving a checkpoint at the next step boundary",
                signal.Signals(signum).name,
            )

    def requested(self) -> bool:
        return self.received_at is not None or self.stop_signal is not None

    def hand_over(self, wait_for_requeue: bool = False) -> None:
        """After the checkpoint: let submitit requeue the job, or exit when no one else handles it.

        ``wait_for_requeue``: a submitit task other than rank 0, whose handler does nothing; like
        submitit, it does not exit (that could end the job before rank 0 requeues it) but waits for
        the requeue, up to :data:`REQUEUE_WAIT_S`. The requeue's SIGTERM then ends it at once: the
        checkpoint is written, so nothing is left to save, and a task that ignored it would hold the
        job until the scheduler's SIGKILL (``KillWait``, 30 s by default) on every requeue.
        """
        signal.signal(self.signum, self.previous)
        if callable(self.previous):
            self.previous(int(self.signum), None)  # submitit: dump the submission, requeue, exit
        if wait_for_requeue:
            signal.signal(signal.SIGTERM, _exit_now)
            time.sleep(REQUEUE_WAIT_S)
        raise SystemExit(128 + int(self.signum))


def _exit_now(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class _NoGuard:
    """Where no handler can be installed (not the main thread): nothing is ever requested."""

    received_at = None
    stop_signal = None

    def requested(self) -> bool:
        return False

    def hand_over(self, wait_for_requeue: bool = False) -> None:
        raise SystemExit(1)


@contextlib.contextmanager
def deferred() -> Iterator[Guard | _NoGuard]:
    """Install the deferring handler for the duration of a job, then restore the previous one."""
    signum = preemption_signal()
    if threading.current_thread() is not threading.main_thread():
        yield _NoGuard()
        return
    previous = signal.getsignal(signum)
    if previous == signal.SIG_IGN:
        yield _NoGuard()
        return
    guard = Guard(signum, previous)
    signal.signal(signum, guard._on_signal)
    # a signal someone chose to ignore (nohup, a background job's SIGINT) stays ignored
    stops = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    for stop in stops:
        signal.signal(stop, guard._on_stop)
    try:
        yield guard
    finally:
        if signal.getsignal(signum) == guard._on_signal:
            signal.signal(signum, previous)
        for stop, before in stops.items():
            if signal.getsignal(stop) == guard._on_stop:
                signal.signal(stop, before)
