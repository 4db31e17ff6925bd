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

from seal_exp.config import ConfigError
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
from seal_exp.run.preemption import Preempted
from seal_exp.run.resume import resume_point
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
        theirs = run_files.read_summary(summary).get("identity")
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
        path, job.resume = resume_point(cfg, job.out, job.identity_cfg, earlier, job.data)
    except ConfigError as exc:  # a last.pt of this job that cannot be continued: its run ends FAILED
        for run in earlier:
            folder = Path(run.data.tags.get("output_dir", ""))
            if run.info.status == "RUNNING" and folder == job.out.resolve():
                tracker.mark_failed(run.info.run_id, str(exc))
        raise
    if path is not None:
        return {"resume_from": str(path)}
    interrupted = next((r for r in earlier if r.info.status in ("RUNNING", "KILLED")), None)
    return {"resume_from": None, "reattach": interrupted.info.run_id if interrupted and cfg.resume else None}


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
    """Report the earlier run and copy its summary here, so this sweep's folder is complete too."""
    earlier_out = Path(run.data.tags.get("output_dir", ""))
    if (earlier_out / "summary.json").is_file():
        summary = run_files.read_summary(earlier_out / "summary.json")
    else:  # that folder is gone (another machine, cleaned up): the copy tracked with the run
        with tempfile.TemporaryDirectory() as tmp:
            summary = download_json(tracker.client, run.info.run_id, Path(tmp)) or {}
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
    if not (run_id and tracker.reattach(run_id, tags)):
        tracker.start(run_name, run_params(cfg, method), tags, context["parent_run_id"])
        resolved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        text = OmegaConf.to_yaml(resolved, resolve=True)  # paths and all
        (job.out / RESOLVED_CONFIG).write_text(text)  # what `python -m seal_exp.evaluate` rebuilds from
        tracker.log_text(text, RESOLVED_CONFIG)


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
def tracked(tracker: Any, job: Job, dist: Distributed) -> Iterator[Callable[[], bool]]:
    """Run the job's body with the pre-timeout signal deferred (yields "was it sent?") and close the
    tracked run with the status it ended in: FINISHED, KILLED (interrupt, preemption) or FAILED."""
    with preemption.deferred() as guard:
        try:
            tracker.log_artifact(job.out / ".hydra", ".hydra")
            yield guard.requested
        except Preempted as exc:
            if guard.stop_signal is not None:  # SIGTERM / SIGINT: stop here, the same command resumes
                _close(tracker, "KILLED")
                print(
                    f"seal-exp: stopped by {guard.stop_signal.name}: {exc}; run the same command to resume.",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(128 + int(guard.stop_signal)) from None
            log.warning("%s; handing over to the scheduler (the next start resumes from it)", exc)
            _close(tracker, "KILLED")
            # submitit's other tasks wait for the requeue to stop them, as submitit itself does
            guard.hand_over(wait_for_requeue=dist.launcher == "submitit" and not dist.is_main)
            raise
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            _close(tracker, status, traceback.format_exc())
            raise
    tracker.finish("FINISHED")


def _close(tracker: Any, status: str, error: str | None = None) -> None:
    try:
        tracker.finish(status, error) if error is not None else tracker.finish(status)
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
