"""A job from start to end state: identity, skip or resume (decided once, by rank 0), the tracked run
it opens or reattaches to, and the status it always ends with (FINISHED, FAILED or KILLED).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seal_exp.config import ConfigError, RunFailed
from seal_exp.run import checkpoint, preemption
from seal_exp.run import files as run_files
from seal_exp.run.claim import Claim, claim
from seal_exp.run.distributed import Distributed
from seal_exp.run.identity import (
    CODE_TAG,
    DATA_TAG,
    code_version,
    data_location,
    identity_config,
    job_identity,
    same_data,
)
from seal_exp.run.preemption import Guard, Preempted, Stopped
from seal_exp.run.resume import carry_over, note_job_folder, noted_job_folder, resume_point
from seal_exp.run.startup import process_age_s
from seal_exp.tracking import (
    IDENTITY_TAG,
    download_json,
    git_tags,
    job_context,
    method_name,
    run_params,
    source_tags,
)

log = logging.getLogger("seal_exp")


@dataclass
class Job:
    """This process's view of the job: its folder, its identity and what it continues from."""

    out: Path
    identity_cfg: dict[str, str]
    identity: str
    started: float  # perf_counter at the start of this attempt
    resume: dict[str, Any] | None = None  # the loaded last.pt this attempt continues
    finished: dict[str, Any] | None = None  # skip_finished: the summary of an earlier FINISHED run
    reattach: str | None = None  # an interrupted run of this job with no last.pt (it died in the teacher)
    claim: Claim | None = None  # rank 0's hold on the job: no second process runs it meanwhile
    data: str | None = None  # rank 0: the data's fingerprint (None for an event dataset not built yet)
    teacher_s: float = 0.0  # seconds spent obtaining the teacher (training it, or loading and testing it)

    def wall_s(self) -> float:
        """Seconds spent on the job over all its attempts."""
        earlier = float(self.resume.get("wall_s", 0.0)) if self.resume else 0.0
        return earlier + time.perf_counter() - self.started

    @contextlib.contextmanager
    def timing_teacher(self) -> Iterator[None]:
        """Count the enclosed time as the teacher's: the first job of a sweep trains the teacher every
        other job reuses, so only the student's time compares across jobs."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.teacher_s += time.perf_counter() - began


def open_job(
    cfg: DictConfig,
    tracker: Any,
    dist: Distributed,
    started: float,
    fingerprint: Callable[[], str | None] = lambda: None,
) -> Job:
    """The job's identity and what rank 0 decided: skip it, resume it, or start it afresh.

    ``tracker``: the run's tracking store (rank 0's; the other ranks pass a :class:`NoTracker`).
    ``fingerprint``: the dataset's (:mod:`seal_exp.data.fingerprint`); a result or ``last.pt`` recorded
    on other data is not reused.
    """
    out = Path(dist.share(str(cfg.paths.output)))  # torchrun: every rank works in rank 0's folder
    identity_cfg = identity_config(cfg)
    job = Job(out, identity_cfg, job_identity(identity_cfg), started)
    decision: dict[str, Any] = {}
    if dist.is_main:
        try:
            job.claim = _claim(cfg, job)
            job.data = fingerprint()
            decision = _decide(cfg, tracker, job)
        except Exception as exc:
            if job.claim is not None:
                job.claim.release()
            dist.share({"error": str(exc), "config": isinstance(exc, ConfigError)})
            raise
    decision = dist.share(decision)  # skip, resume and refusals are decided once, by rank 0
    if "error" in decision:
        message = f"rank 0 stopped the run: {decision['error']}"
        raise ConfigError(message) if decision["config"] else RuntimeError(message)
    job.finished, job.reattach = decision.get("finished"), decision.get("reattach")
    if job.resume is None and decision.get("resume_from"):
        job.resume = checkpoint.load(decision["resume_from"])
    if job.resume is not None:
        job.teacher_s = float(job.resume.get("teacher_wall_s", 0.0))
    return job


def _claim(cfg: DictConfig, job: Job) -> Claim:
    """Take the job's claim and check that its folder holds no other job's results."""
    summary = job.out / "summary.json"
    if summary.is_file():
        theirs = (_read_summary(summary)[0] or {}).get("identity")  # damaged: whose it is is unknown
        if theirs not in (None, job.identity):
            raise ConfigError(
                f"{job.out} holds the results of another job (identity {theirs}, this one {job.identity}): "
                "give this run its own folder (hydra.run.dir=... / hydra.sweep.dir=...)."
            )
    try:
        return claim(cfg.paths.cache, job.identity, job.out)
    except OSError as exc:
        raise ConfigError(
            f"paths.cache={cfg.paths.cache}: cannot hold the job's claim there ({exc}); point paths.cache "
            "at a writable folder."
        ) from exc


def _decide(cfg: DictConfig, tracker: Any, job: Job) -> dict[str, Any]:
    """Rank 0: an earlier FINISHED run of this job (skip_finished), or what to continue: a last.pt,
    else an interrupted run of this job to reattach to (it died before its first last.pt)."""
    if cfg.stage != "distill":
        return {"resume_from": None}
    found = tracker.find_runs(job.identity)
    earlier = [r for r in found if same_data(r.data.tags.get(DATA_TAG), job.data)]
    finished = next((r for r in earlier if r.info.status == "FINISHED"), None)
    if cfg.skip_finished and finished is not None:
        return {"finished": _already_finished(finished, tracker, job)}
    other = next((r for r in found if r.info.status == "FINISHED" and r not in earlier), None)
    if cfg.skip_finished and other is not None:
        print(_other_data_line(cfg, other, job), flush=True)
    try:
        elsewhere = _earlier_folders(cfg, job, earlier)
        path, job.resume = resume_point(cfg, job.out, job.identity_cfg, elsewhere, job.data)
    except ConfigError as exc:  # a last.pt of this job that cannot be continued: its run ends FAILED
        for run in earlier:
            folder = Path(run.data.tags.get("output_dir", ""))
            if run.info.status == "RUNNING" and folder == job.out.resolve():
                tracker.mark_failed(run.info.run_id, str(exc))
        raise
    if path is not None:
        path = carry_over(path, job.out)  # a relaunch in a new folder takes the checkpoints with it
    note_job_folder(cfg.paths.cache, job.identity, job.out)
    if path is not None:
        return {"resume_from": str(path)}
    interrupted = next((r for r in earlier if r.info.status in ("RUNNING", "KILLED")), None)
    return {"resume_from": None, "reattach": interrupted.info.run_id if interrupted and cfg.resume else None}


def _earlier_folders(cfg: DictConfig, job: Job, earlier: list[Any]) -> list[Path]:
    """Where this job's unfinished earlier attempts ran, newest first: the tracked runs' folders, then the
    folder noted in the cache (all there is with ``tracking=none``) unless its job finished there."""
    tagged = (r.data.tags.get("output_dir") for r in earlier if r.info.status != "FINISHED")
    folders = [Path(folder) for folder in tagged if folder]
    noted = noted_job_folder(cfg.paths.cache, job.identity)
    if noted is not None and noted not in folders and not (noted / "summary.json").is_file():
        folders.append(noted)
    return folders


def _other_data_line(cfg: DictConfig, run: Any, job: Job) -> str:
    """Why a FINISHED run of this job is not reused: it was trained on other data."""
    now = f"has fingerprint {job.data}" if job.data else "is not built yet, so it cannot be compared"
    return (
        f"MLflow run {run.info.run_id} finished this job (identity {job.identity}) on other data "
        f"(fingerprint {run.data.tags.get(DATA_TAG)}); the {cfg.dataset.name} data at hand "
        f"({data_location(cfg)}) {now}: training on it."
    )


def record_data(tracker: Any, job: Job, fingerprint: str | None, name: str = "", source: str = "") -> None:
    """Rank 0, once the data is read: record its fingerprint on the run (a tag, and MLflow's dataset input
    ``name`` from ``source``), and refuse a ``last.pt`` trained on other data (an event dataset's
    fingerprint is only known once its frame cache is built)."""
    written = (job.resume or {}).get("data")
    if written is not None and fingerprint is not None and written != fingerprint:
        raise ConfigError(
            f"the last.pt this job resumes was trained on other data (fingerprint {written}, the data at "
            f"hand {fingerprint}): move it away, or point dataset.root back at the data it was trained on."
        )
    job.data = fingerprint
    if fingerprint is not None:
        tracker.set_tags({DATA_TAG: fingerprint})
    if name and not job.resume:  # once per run: a resumed run has it already
        tracker.log_dataset(name, fingerprint, source)


def _already_finished(run: Any, tracker: Any, job: Job) -> dict[str, Any]:
    """Report the earlier run and copy its summary here, so this sweep's folder is complete too.

    The summary is read from the earlier run's folder, else (gone, or its file damaged) from the copy
    tracked with the run; with neither readable the job is refused, naming the file."""
    earlier_out = Path(run.data.tags.get("output_dir", ""))
    local = earlier_out / "summary.json"
    summary, damage = _read_summary(local) if local.is_file() else (None, "")
    if summary is None:  # that folder is gone (another machine, cleaned up), or its file damaged
        with tempfile.TemporaryDirectory() as tmp:  # the copy tracked with the run
            tracked = download_json(tracker.client, run.info.run_id, Path(tmp))
        summary = tracked if isinstance(tracked, dict) else None
        if damage and summary is None:
            raise ConfigError(
                f"{local}, the summary of this job's FINISHED MLflow run {run.info.run_id}, cannot be read "
                f"({damage}) and the run holds no readable copy: restore the file, or pass "
                "skip_finished=false to train the job again."
            )
        if damage:
            log.warning(
                "%s cannot be read (%s): using the copy tracked with MLflow run %s (copy that over the file "
                "to mend it)",
                local,
                damage,
                run.info.run_id,
            )
        summary = summary or {}
    summary |= {"skipped": True, "reused_run": run.info.run_id, "identity": job.identity}
    if summary.get("stage") is not None and job.out.resolve() != earlier_out.resolve():
        job.out.mkdir(parents=True, exist_ok=True)
        run_files.write_summary(job.out / "summary.json", summary)
    acc = summary.get("test_acc")
    code = run.data.tags.get(CODE_TAG)
    other_code = code not in (None, code_version())
    summary["trained_under_other_code"] = other_code
    print(
        f"already finished: MLflow run {run.info.run_id} (identity {job.identity}, folder {earlier_out}"
        + (f", test accuracy {acc:.2f}%" if acc is not None else "")
        + (f"; trained under other seal-exp code: source {code}, now {code_version()}" if other_code else "")
        + "); nothing to train. Pass skip_finished=false to train it again.",
        flush=True,
    )
    return summary


def _read_summary(path: Path) -> tuple[dict[str, Any] | None, str]:
    """A ``summary.json``'s content; None and why, for a file that cannot be read (damaged, cut short)."""
    try:
        summary = run_files.read_summary(path)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"{type(exc).__name__}: {exc}"
    return (summary, "") if isinstance(summary, dict) else (None, "it holds no JSON object")


RESOLVED_CONFIG = "config.yaml"  # the run's resolved config, in its folder and with its MLflow run


def start_tracking(cfg: DictConfig, tracker: Any, job: Job, run_name: str, tags: dict[str, str]) -> None:
    """Open the job's tracked run, or reattach to the one an interrupted attempt left.

    ``tags``: what the run computes with (method, device, kernels); the job adds where and what it is.
    """
    job.out.mkdir(parents=True, exist_ok=True)
    context = job_context()
    tags = {
        **tags,
        "output_dir": str(job.out.resolve()),
        IDENTITY_TAG: job.identity,
        CODE_TAG: code_version(),
        **git_tags(),
        **source_tags(),
        **context["tags"],
    }
    method = method_name(cfg)
    tags["method"] = method
    run_id = job.resume.get("mlflow_run_id") if job.resume else job.reattach
    resolved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    text = OmegaConf.to_yaml(resolved, resolve=True)  # paths and all
    if not (run_id and tracker.reattach(run_id, tags)):
        tracker.start(run_name, run_params(cfg, method), tags, context["parent_run_id"])
        tracker.log_text(text, RESOLVED_CONFIG)
    # in every folder the job runs in (a relaunch may continue in a new one): what
    # `python -m seal_exp.evaluate` rebuilds the run from
    (job.out / RESOLVED_CONFIG).write_text(text)
    tracker.log_artifact(job.out / ".hydra", ".hydra")


def checkpoint_record(tracker: Any, job: Job) -> dict[str, Any]:
    """What every ``last.pt`` of the job carries besides the training state."""
    return {
        "config": job.identity_cfg,
        "identity": job.identity,
        "code": code_version(),
        "data": job.data,
        "mlflow_run_id": tracker.run_id,
        "wall_s": job.wall_s(),
        "teacher_wall_s": job.teacher_s,
    }


@contextlib.contextmanager
def guarded(tracker: Any, dist: Distributed) -> Iterator[Guard | Any]:
    """Run a job with its signals handled from its first moment (:mod:`seal_exp.run.preemption`; the
    guard yielded says what was asked) and close its tracked run, once one is open, with the status it
    ended in: KILLED (a stop signal, the pre-timeout signal, Ctrl-C twice) or FAILED; :func:`finish`
    closes it FINISHED.

    A stop signal ends the process with 128 + its number and one line, whatever the job was doing; the
    pre-timeout signal hands the job over to the scheduler (submitit requeues it), or exits 140.
    """
    with preemption.deferred() as guard:
        try:
            guard.act_on_pending("before the job started: nothing to checkpoint yet")
            yield guard
        except (Preempted, Stopped) as exc:
            guard.stopping = True  # closing the run: a further signal changes nothing
            stop = guard.stop_signal
            if stop is not None:  # SIGTERM / SIGINT / SIGHUP: stop here, the same command resumes
                _close(tracker, "KILLED")
                print(
                    f"seal-exp: stopped by {stop.name}: {exc}; run the same command to resume.",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(128 + int(stop)) from None
            log.warning("%s; handing over to the scheduler (the next start resumes from it)", exc)
            said = preemption.attempt_line(exc, process_age_s()) if isinstance(exc, Preempted) else None
            if said and dist.is_main:
                print(f"seal-exp: {said}", file=sys.stderr, flush=True)
            _close(tracker, "KILLED")
            # submitit's other tasks wait for the requeue to stop them, as submitit itself does
            guard.hand_over(wait_for_requeue=dist.launcher == "submitit" and not dist.is_main)
            raise
        except BaseException as exc:
            guard.stopping = True
            if not guard.complete:
                status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
                _close(tracker, status, traceback.format_exc())
            raise


def finish(tracker: Any, guard: Guard | Any) -> None:
    """The job's results are written: close its run FINISHED, a signal meanwhile waiting for that."""
    guard.finishing()
    tracker.finish("FINISHED")
    guard.complete = True


def stop_if_signalled(guard: Guard | Any, tracker: Any) -> None:
    """A stop signal that came while the run was being closed ends the process now, as every stop does
    (an in-process sweep stops with it); the run is FINISHED, nothing is left to resume."""
    if guard.stop_signal is not None:
        run = f"MLflow run {tracker.run_id}" if tracker.run_id else "the run"
        print(
            f"seal-exp: stopped by {guard.stop_signal.name} as the job ended: {run} is FINISHED, its results "
            "are written; nothing to resume.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + int(guard.stop_signal))


def _close(tracker: Any, status: str, error: str | None = None) -> None:
    try:
        tracker.finish(status, error) if error is not None else tracker.finish(status)
    except RunFailed:  # the store fails too (StoreFault): one line here, the job's own line says what to do
        log.warning(
            "MLflow run %s could not be marked %s (its store fails): it shows RUNNING until the same "
            "command resumes it",
            tracker.run_id,
            status,
        )
    except Exception:  # never let the tracker hide the real error
        log.exception("could not close the tracked run")


def record_summary(summary: dict[str, Any], tracker: Any, job: Job, dist: Distributed) -> None:
    """Complete the summary; rank 0 writes ``summary.json`` and tracks it with the run's files."""
    wall_s = job.wall_s()
    summary["wall_s"] = round(wall_s, 2)
    summary["teacher_wall_s"] = round(job.teacher_s, 2)
    summary["student_wall_s"] = round(wall_s - job.teacher_s, 2)
    summary["mlflow_run_id"] = tracker.run_id
    summary["identity"] = job.identity
    summary["data_fingerprint"] = job.data
    if not dist.is_main:
        return
    summary["world_size"] = dist.world_size
    run_files.write_summary(job.out / "summary.json", summary)
    tracker.log_metrics(headline_metrics(summary), step=0)
    figures = [f"{name}.{fmt}" for name in RUN_FIGURES for fmt in ("png", "pdf")]
    for name in ("summary.json", "epochs.csv", *figures):
        tracker.log_artifact(job.out / name)


# The figures a run draws in its folder (those it did not draw are skipped when attaching).
RUN_FIGURES = (
    "per_timestep_accuracy",
    "training_curves",
    "firing_rates",
    "accuracy_at_timesteps",
    "robustness",
)

# The figures a table quotes, as MLflow metrics under their summary.json names (the per-epoch curves
# are ``val/acc``, ``test/acc`` …; ``test_acc`` is the test accuracy of the epoch selected on validation).
HEADLINE = (
    "test_acc",
    "test_acc_last",
    "best_val_acc",
    "best_epoch",
    "best_test_acc_over_epochs",
    "teacher_test_acc",
    "teacher_val_acc",
    "wall_s",
    "teacher_wall_s",
    "student_wall_s",
)


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's headline figures, plus ``test_acc_t<t>`` (the selected model at each timestep)."""
    metrics = {k: float(summary[k]) for k in HEADLINE if summary.get(k) is not None}
    per_timestep = summary.get("per_timestep_test_acc") or []
    return metrics | {f"test_acc_t{t}": float(acc) for t, acc in enumerate(per_timestep, start=1)}


def last_line(summary: dict[str, Any], out: Path, run_id: str | None) -> str:
    """What the user reads when the job ends: the accuracies and where everything is."""
    where = f"run folder {out}" + (f" | MLflow run {run_id} (make ui)" if run_id else "")
    teacher = summary.get("teacher_test_acc")
    if summary["stage"] == "teacher":
        return f"teacher test accuracy {teacher:.2f}% | checkpoint {summary['teacher_checkpoint']} | {where}"
    teacher_part = f", teacher {teacher:.2f}%" if teacher is not None else ""
    return (
        f"student test accuracy {summary['test_acc']:.2f}% (selected on {summary['selected_on']}; last epoch "
        f"{summary['test_acc_last']:.2f}%){teacher_part} | {where}"
    )
