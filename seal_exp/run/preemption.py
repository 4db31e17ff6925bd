"""Signals that end a job: the cluster's pre-timeout signal and the stop signals, handled at every point.

submitit asks SLURM (``--signal=USR2@<signal_delay_s>``) or its local controller to send a signal
shortly before the time limit, and its own handler checkpoints the submission and requeues the job
at once. Stopping mid-step would lose the step, so while a training loop runs
(:meth:`Guard.at_step_boundaries`) the signal is only recorded; the loop notices it at the next step
boundary, writes ``last.pt`` and raises :class:`Preempted`, and :meth:`Guard.hand_over` then calls
submitit's handler, which requeues the job (and exits). Outside submitit the process exits after the
checkpoint; the next start resumes from it.

SIGTERM (``scancel``, a container stop, ``kill``), SIGINT (Ctrl-C) and SIGHUP (the terminal or ssh
session gone) stop the job the same way: a checkpoint at the next step boundary, the tracked run marked
KILLED, and an exit with 128 + the signal number and a one-line message. A second one stops at once (as
KeyboardInterrupt).

Outside a training loop (reading data, logging the model, the measurements after training, writing the
summary) no step boundary is coming, so either signal stops the job at once (:class:`Stopped`): the last
checkpoint stands and the next start continues from it. Once the job's results are all written
(:meth:`Guard.finishing`) a signal waits for the run to be closed FINISHED, which takes moments.

The pre-timeout signal can also come seconds after the job starts (a time limit shorter than its delay),
before a job's handlers exist: :func:`record_early`, called first thing by the entry point (before the
imports that take seconds), records it instead of letting it kill the process, and the job hands over
to the scheduler as soon as it starts.
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
    """Training stopped at a step boundary after the pre-timeout signal; ``last.pt`` is written.

    ``attempt_steps``: the steps this process trained; ``steps_left``: what the loop still has to do (for
    the line that says whether the time limit lets the job finish)."""

    def __init__(self, message: str, attempt_steps: int | None = None, steps_left: int | None = None) -> None:
        super().__init__(message)
        self.attempt_steps, self.steps_left = attempt_steps, steps_left


ATTEMPTS_WORTH_A_WARNING = 3  # more attempts than this still to go: the time limit is called too short


def attempt_line(exc: Preempted, age_s: float) -> str | None:
    """What one attempt at the time limit achieved, and whether the limit is too short for the job: one
    line, or None where the loop did not say."""
    done, left = exc.attempt_steps, exc.steps_left
    if done is None or left is None:
        return None
    if done <= 0:
        return (
            f"time limit: this attempt ({age_s:.0f} s) trained no step before the pre-timeout signal, so the "
            "job cannot progress; raise hydra.launcher.timeout_min (or lower hydra.launcher.signal_delay_s)"
        )
    more = -(-left // done)  # attempts still needed at this pace
    attempts = "attempt" if more == 1 else "attempts"
    line = f"time limit: this attempt ({age_s:.0f} s) trained {done} steps; {left} are left, about {more} "
    line += f"more {attempts}"
    if more > ATTEMPTS_WORTH_A_WARNING:
        line += (
            ": the time limit is too short for this job (every attempt also pays its start-up); raise "
            "hydra.launcher.timeout_min"
        )
    return line


class Stopped(BaseException):
    """A signal acted on at once, outside a training loop (a ``BaseException``, like KeyboardInterrupt, so
    that no best-effort ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: signal.Signals, where: str = "") -> None:
        super().__init__(where or OUTSIDE_TRAINING)
        self.signum = signum


OUTSIDE_TRAINING = (
    "outside training (reading data, logging or measuring the model): its last checkpoint stands"
)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# What a signal does, by what the job is doing (Guard.phase).
AT_ONCE = "at once"  # nothing to finish first: stop now
AT_STEP_BOUNDARY = "at the next step boundary"  # a training loop runs: it checkpoints, then stops
AFTER_FINISHING = "once the run is FINISHED"  # the results are written: closing the run comes first

_EARLY: dict[str, Any] = {"received_at": None, "stands_in_for": signal.SIG_DFL}


def record_early() -> None:
    """From now on the pre-timeout signal is recorded, not fatal (its default action ends the process);
    the job's :class:`Guard` acts on it when the job starts. Called by the entry point before anything
    slow; a handler already there (submitit's, or SIG_IGN) is left alone."""
    signum = preemption_signal()
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signum) != signal.SIG_DFL:
        return
    _EARLY["stands_in_for"] = signal.SIG_DFL
    signal.signal(signum, _on_early_signal)


def _on_early_signal(signum: int, frame: Any) -> None:
    if _EARLY["received_at"] is None:
        _EARLY["received_at"] = time.time()
        log.warning(
            "received %s (time limit close) before the job started: handing over once it does",
            signal.Signals(signum).name,
        )


class Guard:
    """Records the signals and says what they ask for: :meth:`requested` (a training loop polls it at
    step boundaries), :attr:`stop_signal` (SIGTERM, SIGINT, SIGHUP: the job was asked to stop), and
    :meth:`hand_over` gives the pre-timeout signal to whoever handled it before (submitit)."""

    def __init__(self, signum: signal.Signals, previous: Any) -> None:
        self.signum, self.previous = signum, previous
        self.received_at: float | None = None
        self.stop_signal: signal.Signals | None = None
        self.phase = AT_ONCE
        self.stopping = False  # a Stopped was raised: the job is closing, later signals change nothing
        self.complete = False  # the run was closed FINISHED

    def _on_stop(self, signum: int, frame: Any) -> None:
        received = signal.Signals(signum)
        if self.phase == AT_STEP_BOUNDARY and self.stop_signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt(f"{received.name} received twice")
        if self.stop_signal is not None or self.stopping:
            log.warning("received %s: the job is stopping already", received.name)
            return
        self.stop_signal = received
        if self.phase == AT_ONCE:
            self._stop_now(received)
        elif self.phase == AT_STEP_BOUNDARY:
            log.warning(
                "received %s: saving a checkpoint at the next step boundary, then stopping "
                "(send it again to stop at once)",
                received.name,
            )
        else:
            log.warning(
                "received %s: the results are written; stopping once the run is FINISHED", received.name
            )

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received_at is not None or self.stopping:
            return
        self.received_at = time.time()
        received = signal.Signals(signum)
        if self.phase == AT_ONCE:
            self._stop_now(received)
        elif self.phase == AT_STEP_BOUNDARY:
            log.warning(
                "received %s (time limit close): saving a checkpoint at the next step boundary", received.name
            )
        else:
            log.warning(
                "received %s (time limit close): the results are written, no requeue needed", received.name
            )

    def _stop_now(self, received: signal.Signals, where: str = "") -> None:
        self.stopping = True
        raise Stopped(received, where)

    def requested(self) -> bool:
        return self.received_at is not None or self.stop_signal is not None

    def act_on_pending(self, where: str) -> None:
        """Stop now (:class:`Stopped`, saying ``where``) if a signal came and nothing acted on it yet: one
        recorded before the job began, or one a training loop never reached a step boundary for (it came
        during the final test)."""
        if self.requested() and not self.stopping and self.phase == AT_ONCE:
            self._stop_now(self.stop_signal or self.signum, where)

    @contextlib.contextmanager
    def at_step_boundaries(self) -> Iterator[None]:
        """Around a training loop, which polls :meth:`requested` at every step boundary: a signal waits
        for it there (one it did not reach is acted on as the loop returns)."""
        before, self.phase = self.phase, AT_STEP_BOUNDARY
        try:
            yield
        finally:
            self.phase = before
        self.act_on_pending(
            "as a training loop ended (during its last evaluation): its last checkpoint stands"
        )

    def finishing(self) -> None:
        """The job's results are written: from here a signal waits until the run is closed FINISHED."""
        self.phase = AFTER_FINISHING

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
    phase = AT_ONCE
    stopping = False
    complete = False

    def requested(self) -> bool:
        return False

    def act_on_pending(self, where: str) -> None:
        """Nothing is ever pending."""

    @contextlib.contextmanager
    def at_step_boundaries(self) -> Iterator[None]:
        yield

    def finishing(self) -> None:
        """Nothing changes: no signal reaches this guard."""

    def hand_over(self, wait_for_requeue: bool = False) -> None:
        raise SystemExit(1)


@contextlib.contextmanager
def deferred() -> Iterator[Guard | _NoGuard]:
    """Install the job's handlers for its duration, then restore the ones found; a pre-timeout signal
    :func:`record_early` recorded is taken over (the job acts on it with :meth:`Guard.act_on_pending`)."""
    signum = preemption_signal()
    if threading.current_thread() is not threading.main_thread():
        yield _NoGuard()
        return
    found = signal.getsignal(signum)
    previous = _EARLY["stands_in_for"] if found == _on_early_signal else found
    if previous == signal.SIG_IGN:
        yield _NoGuard()
        return
    guard = Guard(signum, previous)
    guard.received_at, _EARLY["received_at"] = _EARLY["received_at"], None  # acted on once
    signal.signal(signum, guard._on_signal)
    # a signal someone chose to ignore (nohup's SIGHUP, a background job's SIGINT) stays ignored
    stops = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    for stop in stops:
        signal.signal(stop, guard._on_stop)
    try:
        yield guard
    finally:
        if signal.getsignal(signum) == guard._on_signal:
            signal.signal(signum, found)
        for stop, before in stops.items():
            if signal.getsignal(stop) == guard._on_stop:
                signal.signal(stop, before)
