"""A sweep as the process that launches it sees it: limits checked before anything is submitted, and the
jobs that ended without a result, with the scheduler's state and the job's own reason.

Exit codes of ``python -m seal_exp.train -m …``:

* 0: every job has its result (trained now, or finished earlier and skipped);
* 2: the sweep was refused before any job was submitted (a configuration, a request the scheduler
  refused, a time limit too short to work); nothing is left behind, no run and no folder;
* 3 (:data:`EXIT_UNFINISHED`): the sweep ran, but some jobs ended without a result (scancelled,
  stopped, failed, refused because the same job runs elsewhere); the table printed last says which
  and why, and the same command trains or resumes exactly those;
* 128 + N: the launching process was stopped by signal N.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from seal_exp.config import ConfigError, build
from seal_exp.notation import SMOKE, is_smoke
from seal_exp.run.claim import Claim, JobRunning, claim
from seal_exp.run.startup import measured_startup, process_age_s
from seal_exp.run_controls import is_run_control
from seal_exp.tracking import (
    PARENT_RUN_FILE,
    TRACKING_URI_FILE,
    MLflowTracker,
    _retrying,
    git_tags,
    sweep_run_name,
    swept_overrides,
)

log = logging.getLogger("seal_exp")

EXIT_UNFINISHED = 3

# sbatch(1), --signal: "the signal may be sent up to 60 seconds earlier than specified" (slurmctld checks
# time limits periodically, not at the second).
SLURM_SIGNAL_SLACK_S = 60
LOCAL_SIGNAL_DELAY_S = 30  # submitit's local controller, which Hydra's local preset cannot change
MIN_TRAINING_S = 10  # an attempt must train at least this long after its start-up, or it only restarts
SWEEP_IDENTITY_TAG = "sweep.identity"  # on a sweep's parent run: how a relaunch finds it


@dataclass(frozen=True)
class EndedWithoutResult:
    """A job the launcher waited for that produced no result."""

    num: int
    overrides: tuple[str, ...]
    state: str  # the scheduler's word: CANCELLED, FAILED, TIMEOUT, OUT_OF_MEMORY, …
    reason: str  # the job's own last ``seal-exp:`` line, else the last line of its error log
    log: str  # where its error log is


@dataclass
class SweepLaunch:
    """This process's sweep: set by the launcher, read by the callbacks that end the sweep."""

    folder_was_new: bool = False
    refused: bool = False  # the scheduler refused the submission: nothing ran
    launched: int = 0  # jobs handed to the launcher's executor
    unfinished: list[EndedWithoutResult] = field(default_factory=list)


LAUNCH = SweepLaunch()


def check_time_limit(launcher: DictConfig, cache: str | Path, datasets: list[str], on_slurm: bool) -> None:
    """Refuse a time limit under which a job cannot make progress: the pre-timeout signal must come after
    the job's start-up plus :data:`MIN_TRAINING_S` of training, even when SLURM sends it early.

    Start-up: the longest recorded for the sweep's datasets by earlier jobs in this cache, and at least
    this process's own (Python, torch and the config, which every job pays too).
    """
    if "timeout_min" not in launcher:
        return
    limit_s = float(launcher.timeout_min) * 60
    delay = float(launcher.get("signal_delay_s", LOCAL_SIGNAL_DELAY_S))
    slack = SLURM_SIGNAL_SLACK_S if on_slurm else 0
    recorded = measured_startup(cache, datasets)
    own = process_age_s()
    startup, where = (recorded[0], f"measured by earlier jobs, {recorded[1]}") if recorded else (own, "")
    if startup < own:
        startup, where = own, ""
    where = where or "this process's own start-up: Python, torch and the config, a lower bound"
    earliest = limit_s - delay - slack
    if earliest >= startup + MIN_TRAINING_S:
        return
    needed = math.ceil((delay + slack + startup + MIN_TRAINING_S) / 60)
    if on_slurm:
        signalled = f"{delay:.0f} s before its time limit (hydra.launcher.signal_delay_s)"
        early = f"SLURM may send it up to {slack} s early, {max(earliest, 0):.0f} s after the job starts"
        advice = ", or a smaller hydra.launcher.signal_delay_s if a checkpoint is written quickly"
    else:
        signalled = f"{delay:.0f} s before its time limit (submitit's local controller)"
        early = f"that is {max(earliest, 0):.0f} s after the job starts"
        advice = ""
    raise ConfigError(
        f"hydra.launcher.timeout_min={launcher.timeout_min} cannot work: each job is signalled "
        f"{signalled} to save a checkpoint; {early}, but a job needs {startup:.0f} s to start ({where}) "
        f"and then at least {MIN_TRAINING_S} s to train a step worth saving. Nothing was submitted. Use "
        f"hydra.launcher.timeout_min={needed} or more{advice}"
    )


def sweep_datasets(config: DictConfig) -> list[str]:
    """The dataset names a sweep's jobs use: the composed one and any swept ``dataset=`` choices."""
    names = {str(config.dataset.name)} if "dataset" in config and "name" in config.dataset else set()
    for override in config.hydra.overrides.task:
        key, _, value = str(override).partition("=")
        if key.lstrip("+~") == "dataset":
            names.update(v.strip() for v in value.split(","))
    return sorted(names)


def outcome_state(state: Any) -> str:
    """The scheduler's state in its first word (``CANCELLED by 0`` → ``CANCELLED``)."""
    return str(state).split()[0] if str(state).strip() else "UNKNOWN"


def submits_to_slurm(launcher: DictConfig) -> bool:
    """Whether a ``hydra.launcher`` config builds a launcher that submits to SLURM: submitit's SLURM
    launcher or one built on it (they name their executor; Hydra may load plugin modules twice, so
    classes are not compared)."""
    from hydra.utils import get_class

    try:
        return getattr(get_class(str(launcher.get("_target_", ""))), "_EXECUTOR", None) == "slurm"
    except Exception:  # not importable here: Hydra reports that itself
        return False


def sweep_identity(task_overrides: list[str]) -> str:
    """What makes two launches the same sweep: its overrides, in any order, without the run controls
    (where and how it runs). A relaunch, in the same folder or a new one, continues the same parent run."""
    kept = sorted(o for o in task_overrides if not is_run_control(o.partition("=")[0]))
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


# How a job without a result ended, as SLURM (or submitit's local controller) says: stopped, not broken.
STOPPED_STATES = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "INTERRUPTED", "REQUEUED"})


class SweepLaunchCallback(Callback):
    """The launching process of a multirun, first at its start and last at its end (Hydra ends its
    callbacks in reverse order, so the sweep's table is printed before this one closes the sweep).

    At the start: a time limit that cannot work is refused (:func:`check_time_limit`), then the sweep's
    MLflow parent run is opened, or continued where an earlier launch of the same sweep
    (:func:`sweep_identity`) left one: a relaunch adds no parent, and a parent whose launching process
    died (``kill -9``, a lost login node) is taken over and closed at the end. Its id goes to
    ``<sweep dir>/mlflow_parent_run_id``, where every job finds it. At the end: the parent closes
    FINISHED, KILLED (jobs stopped) or FAILED, and a sweep with jobs that produced no result exits
    :data:`EXIT_UNFINISHED`. A sweep refused before any job ran leaves no parent and no folder.
    """

    refused_jobs = 0  # jobs of this process's sweep that refused their config (train.main counts them)
    stopped_by: int | None = None  # the signal that stopped this process's sweep (or one of its jobs)

    def __init__(self) -> None:
        self._tracker: MLflowTracker | None = None
        self._failed = False
        self._created = False  # this launch created the parent run (else: continues an earlier one)
        self._earlier_status = "RUNNING"
        self._claim: Claim | None = None
        self._sweep_dir: Path | None = None
        self._handlers_before: dict[int, Any] = {}  # the stop signals' handlers the sweep replaced

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Hydra turns a callback's exception into a warning, so a refusal here is a ``SystemExit`` (2)."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        LAUNCH.folder_was_new = not sweep_dir.exists()
        on_slurm = submits_to_slurm(config.hydra.launcher)
        try:
            check_time_limit(config.hydra.launcher, str(config.paths.cache), sweep_datasets(config), on_slurm)
            tracker = build(config.tracking, "tracking")
            if isinstance(tracker, MLflowTracker):
                self._open_parent(config, tracker, sweep_dir)
        except ConfigError as exc:
            message = f"{str(exc).rstrip('.')}. No job of the sweep was started."
            print(f"seal-exp: configuration error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        self._sweep_dir = sweep_dir
        atexit.register(self._close_at_exit)  # the sweep raised or was stopped before on_multirun_end
        self._stop_on_signals(sweep_dir, on_cluster=on_slurm)

    def _open_parent(self, config: DictConfig, tracker: MLflowTracker, sweep_dir: Path) -> None:
        overrides = [str(o) for o in config.hydra.overrides.task]
        identity = sweep_identity(overrides)
        try:
            self._claim = claim(str(config.paths.cache), f"sweep-{identity}", sweep_dir)
        except JobRunning:  # another launch of the same sweep is running: it closes the parent
            self._claim = None
        earlier = _earlier_parent(tracker, sweep_dir, identity)
        if earlier is not None:
            run_id, self._earlier_status = earlier.info.run_id, earlier.info.status
            if self._earlier_status == "RUNNING" and self._claim is not None:
                print(
                    f"seal-exp: the earlier launch of this sweep ended without closing its MLflow parent run "
                    f"{run_id} (its launching process was killed or lost); this launch continues it and "
                    "closes it at the end.",
                    file=sys.stderr,
                    flush=True,
                )
            elif self._earlier_status != "RUNNING":
                _retrying(tracker.client.update_run, run_id, status="RUNNING")
            log.info("MLflow parent run %s (continued) for sweep %s", run_id, sweep_dir)
        else:
            tags = {
                "sweep.dir": str(sweep_dir.resolve()),
                "sweep.parent": "true",
                SWEEP_IDENTITY_TAG: identity,
                "hydra.overrides": " ".join(overrides) or "(none)",
                **git_tags(),
            }
            method = config.hydra.runtime.choices.get("distiller") if "runtime" in config.hydra else None
            swept = swept_overrides(overrides)
            if swept:
                tags["sweep.keys"] = " ".join(swept)
            name = sweep_run_name(overrides, method, time.time())
            run_id = tracker.open_parent(f"{SMOKE} {name}" if is_smoke(config) else name, tags)
            self._created = True
            log.info("MLflow parent run %s for sweep %s", run_id, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        (sweep_dir / TRACKING_URI_FILE).write_text(tracker.uri)
        tracker.run_id = run_id
        self._tracker = tracker

    def _stop_on_signals(self, sweep_dir: Path, on_cluster: bool) -> None:
        """SIGTERM, SIGINT or SIGHUP to the launching process (``kill``, Ctrl-C, a login session ending)
        closes the parent run KILLED with one line, instead of leaving it RUNNING forever. Jobs already
        handed to SLURM are not this process's to stop: they run on, and the line says how to follow
        them; the local launcher's jobs stop with it.
        (A job the in-process launcher is running handles the signal itself, see ``train.main``.)"""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            SweepLaunchCallback.stopped_by = signum
            if not on_cluster:
                _stop_local_jobs(signum)
            run_id = self._tracker.run_id if self._tracker else None
            self._close("KILLED")
            line = f"seal-exp: sweep stopped by {name}" + (
                f"; its MLflow parent run {run_id} is KILLED." if run_id else "."
            )
            if on_cluster:
                line += (
                    " Jobs already submitted keep running (scancel them to stop them): follow them with "
                    f"`python -m seal_exp.sweep status {sweep_dir}`; the same sweep command trains what "
                    "is missing."
                )
            else:
                line += " Its jobs stop with it; the same sweep command resumes them from their checkpoints."
            print(line, file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signal.getsignal(signum) != signal.SIG_IGN:  # nohup's choices stay
                self._handlers_before[signum] = signal.signal(signum, stop)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            self._failed = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweep is over: a signal now is the calling program's again (compare, a notebook)
        for signum, handler in self._handlers_before.items():
            signal.signal(signum, handler)
        self._handlers_before.clear()
        unfinished = LAUNCH.unfinished
        if all_refused():  # every job refused its config: as if the sweep itself was refused
            SweepLaunchCallback.refused_jobs += len(unfinished)
            self._close("FAILED")
            if LAUNCH.folder_was_new and self._sweep_dir is not None:
                _discard_untrained(self._sweep_dir)
            raise SystemExit(2)
        if self._failed or any(u.state not in STOPPED_STATES for u in unfinished):
            self._close("FAILED")
        else:
            self._close("KILLED" if unfinished else "FINISHED")
        if unfinished:
            raise SystemExit(EXIT_UNFINISHED)

    def _close_at_exit(self) -> None:
        self._close("KILLED" if SweepLaunchCallback.stopped_by else "FAILED")
        refused = LAUNCH.refused or SweepLaunchCallback.refused_jobs > 0
        if refused and LAUNCH.folder_was_new and self._sweep_dir is not None:
            _discard_untrained(self._sweep_dir)

    def _close(self, status: str) -> None:
        """Close the parent run (unless another launch of the same sweep is still running: it closes it).
        A sweep refused before any job got as far as its own run (the scheduler refused the submission,
        or every job refused its config) leaves nothing to look at: a parent it created is deleted, one
        it continued gets its earlier status back."""
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        refused = LAUNCH.refused or (status == "FAILED" and SweepLaunchCallback.refused_jobs > 0)
        if self._claim is None:
            log.info(
                "another launch of this sweep is running: it closes MLflow parent run %s", tracker.run_id
            )
        elif refused and self._created and not tracker.has_children():
            _retrying(tracker.client.delete_run, tracker.run_id)
            log.warning("no job of the sweep started a tracked run: its empty MLflow parent run was deleted")
        elif refused and not self._created:
            if self._earlier_status != "RUNNING":
                tracker.finish(self._earlier_status)
        else:
            tracker.finish(status)
        if self._claim is not None:
            self._claim.release()


# what a job leaves once it trained: a folder holding any of these is never discarded
TRAINED_FILES = ("last.pt", "best.pt", "summary.json")


def _discard_untrained(sweep_dir: Path) -> None:
    """Remove a sweep folder this launch created when its jobs refused their config: it holds Hydra's
    records and nothing trained."""
    if any(next(sweep_dir.rglob(name), None) is not None for name in TRAINED_FILES):
        return
    shutil.rmtree(sweep_dir, ignore_errors=True)
    log.info("the sweep was refused: its folder %s is removed", sweep_dir)


def _earlier_parent(tracker: MLflowTracker, sweep_dir: Path, identity: str) -> Any | None:
    """The parent run an earlier launch of this sweep opened: the one its folder names, else the newest
    with the same sweep identity in the experiment (a relaunch into a new folder)."""
    marker = sweep_dir / PARENT_RUN_FILE
    if marker.is_file():
        try:
            run = tracker.client.get_run(marker.read_text().strip())
            if run.info.lifecycle_stage == "active":
                return run
        except Exception:  # not in this store (another tracking.uri), or deleted for good
            pass
    found = _retrying(
        tracker.client.search_runs,
        [tracker.experiment_id()],
        filter_string=f"tags.`{SWEEP_IDENTITY_TAG}` = '{identity}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def _stop_local_jobs(signum: int, wait_s: float = 120.0) -> None:
    """Pass the signal to this process's children (submitit's local job controllers, which pass it to
    their tasks) and wait for them: each job checkpoints and closes its run before the sweep's parent
    is closed. Linux's ``/proc`` lists them; elsewhere the jobs are left to submitit."""

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue
            if int(ppid) == os.getpid() and state != "Z":
                found.append(int(stat.parent.name))
        return found

    running = children()
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + wait_s
    while running and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = set(children())
        running = [pid for pid in running if pid in alive]


def all_refused() -> bool:
    """Whether every job the launcher ran refused its configuration (the sweep ends as refused, exit 2)."""
    refused = [job for job in LAUNCH.unfinished if job.reason.startswith("configuration error")]
    return LAUNCH.launched > 0 and len(refused) == LAUNCH.launched


def unfinished_table(unfinished: list[EndedWithoutResult], relaunch: str) -> str:
    """The jobs that ended without a result, each with the scheduler's state and the job's own reason,
    then the command that continues them (what the sweep prints last before exit code 3, or 2 when every
    job refused its configuration)."""
    code = 2 if all_refused() else EXIT_UNFINISHED
    lines = [
        f"{len(unfinished)} job(s) ended without a result (exit code {code}):",
        "| job | overrides | state | reason | log |",
        "|---|---|---|---|---|",
    ]
    for job in sorted(unfinished, key=lambda j: j.num):
        reason = job.reason.replace("|", "/")
        lines.append(f"| {job.num} | {' '.join(job.overrides)} | {job.state} | {reason} | {job.log} |")
    lines.append(f"The same command trains what is missing and resumes the stopped jobs: {relaunch}")
    if any(job.reason.startswith("configuration error") for job in unfinished):
        lines.append("A job refused for its configuration is refused again until that is changed.")
    if any(job.reason.startswith("run failed") for job in unfinished):
        lines.append(
            "A job whose run failed starts again from its last checkpoint: change what its line names."
        )
    return "\n".join(lines)
