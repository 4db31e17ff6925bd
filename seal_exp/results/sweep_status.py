"""Which jobs of a sweep are finished, running, dead, killed, failed, missing or on other data.

The jobs are the sweep's own: its overrides (``multirun.yaml``, written by Hydra when the sweep started)
are expanded as Hydra's basic sweeper does, each job's config is composed from ``conf/`` and its
identity (:mod:`seal_exp.run.identity`) is looked up in the tracking store. So the status counts runs made
by any launch of the same sweep command, in whatever folder: relaunching the command trains exactly
the jobs shown as dead, killed, failed, missing or other data. A job is *dead* when its run is still
RUNNING in the store but no process holds its claim (:mod:`seal_exp.run.claim`): it was killed without a
chance to close its run; *killed* when a signal stopped it and it closed its run so. It has *other data*
when its runs were trained on data other than what its ``dataset.root`` holds now
(:mod:`seal_exp.data.fingerprint`; where the data cannot be found here, this is not checked).
``python -m seal_exp.sweep status`` prints it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf

from seal_exp.config import CONF_DIR, ConfigError, build
from seal_exp.config_targets import ADVICE, check_file_config
from seal_exp.run import checkpoint
from seal_exp.run.claim import is_held
from seal_exp.run.identity import CODE_TAG, DATA_TAG, code_version, job_identity, same_data
from seal_exp.sweep_launch import SWEEP_IDENTITY_TAG
from seal_exp.tracking import TRACKING_URI_FILE, MLflowTracker, parent_run

STATUSES = ("finished", "running", "queued", "dead", "killed", "failed", "missing", "other data")
RELAUNCHED = STATUSES[3:]  # what relaunching the sweep command trains or resumes
STATUS_OF_RUN = {"FINISHED": "finished", "RUNNING": "running", "SCHEDULED": "running", "KILLED": "killed"}


@dataclass
class Job:
    """One job of a sweep and what the tracking store and its folder say about it."""

    num: int
    overrides: list[str]
    identity: str
    cache: str = ""  # the job's paths.cache, where its claim lives
    data: str | None = None  # the fingerprint of the data its dataset config points at (None: unknown here)
    status: str = "missing"
    run_id: str | None = None
    progress: str = ""
    folder: str = ""


class SweepError(ValueError):
    """A folder that is not a Hydra sweep, or a sweep whose jobs cannot be composed."""


def sweep_overrides(sweep_dir: Path) -> tuple[list[str], Any]:
    """The sweep's command-line overrides and its saved config (``<sweep>/multirun.yaml``)."""
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        raise SweepError(
            f"{sweep_dir}: no multirun.yaml here, so this is not a Hydra sweep folder. Pass the folder a "
            "`python -m seal_exp.train -m ...` run printed, e.g. multirun/<date>/<time>."
        )
    config = OmegaConf.load(saved)
    return [str(o) for o in config.hydra.overrides.task], config


def check_untrusted(saved: Path, overrides: list[str], config: Any) -> None:
    """A shared sweep folder is untrusted: refuse, before anything is composed, an override of Hydra's own
    settings (Hydra records those apart from the task's; composing ``hydra.searchpath=[pkg://<module>]``
    imports the module) and a saved config (Hydra's part aside) that names an unknown class."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        reason = " ".join(str(exc).split())
        raise SweepError(
            f"{saved}: hydra.overrides.task holds an override Hydra cannot parse ({reason}): this file was "
            "edited or damaged; pass the sweep folder as Hydra wrote it"
        ) from None
    for item in parsed:
        key = item.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            raise SweepError(
                f"{saved}: hydra.overrides.task holds {item.input_line}, a setting of Hydra itself, which "
                f"Hydra never records among a sweep's task overrides; nothing is composed: {ADVICE}"
            )
    try:
        check_file_config(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), saved)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None


def check_job(cfg: Any, saved: Path, job_overrides: list[str]) -> None:
    """A job's composed config, checked as a file's before any of it is built (its dataset, for the
    fingerprint): its overrides come from ``multirun.yaml``."""
    parsed = OverridesParser.create().parse_overrides(job_overrides)

    def origin(key: str) -> str:
        setting = next((o for o in reversed(parsed) if f"{key}.".startswith(f"{o.key_or_group}.")), None)
        return f" (set by the override {setting.input_line})" if setting else ""

    try:
        check_file_config(cfg, saved, origin=origin)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, in Hydra's job-number order (the basic sweeper's cartesian product)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def status(sweep_dir: Path) -> list[Job]:
    """The sweep's jobs with their status: finished, running, failed, or missing (never started)."""
    overrides, saved = sweep_overrides(sweep_dir)
    check_untrusted(sweep_dir / "multirun.yaml", overrides, saved)
    uri_file = sweep_dir / TRACKING_URI_FILE
    sweep_uri = uri_file.read_text().strip() if uri_file.is_file() else None
    trackers: dict[tuple[str, str], MLflowTracker] = {}
    jobs: list[Job] = []
    stores: list[MLflowTracker | None] = []
    fingerprints: dict[str, str | None] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for num, job_overrides in enumerate(expand(overrides)):
            try:
                cfg = compose("train", overrides=job_overrides)
            except Exception as exc:
                raise SweepError(f"job {num} ({' '.join(job_overrides)}) does not compose: {exc}") from exc
            check_job(cfg, sweep_dir / "multirun.yaml", job_overrides)
            data = _fingerprint(cfg.dataset, fingerprints)
            jobs.append(Job(num, job_overrides, job_identity(cfg), str(cfg.paths.cache), data))
            if "MLflowTracker" in str(cfg.tracking.get("_target_", "")):
                where = (sweep_uri or str(cfg.tracking.uri), str(cfg.tracking.experiment))
                stores.append(trackers.setdefault(where, MLflowTracker(*where, writable=False)))
            else:
                stores.append(None)
    for job, tracker in zip(jobs, stores, strict=True):
        folder = sweep_dir / str(job.num)
        found = tracker.find_runs(job.identity) if tracker is not None else []
        runs = [r for r in found if job.data is None or same_data(r.data.tags.get(DATA_TAG), job.data)]
        finished = next((r for r in runs if r.info.status == "FINISHED"), None)
        latest = finished or (runs[0] if runs else None)
        if latest is not None:
            job.status = STATUS_OF_RUN.get(latest.info.status, "failed")
            job.run_id = latest.info.run_id
            job.folder = latest.data.tags.get("output_dir", "")
            if job.status == "running" and not is_held(job.cache, job.identity):
                job.status = "dead"
            if job.status in ("dead", "killed", "failed"):  # SLURM may hold it still (requeued, pending)
                held = scheduler_state(latest.data.tags)
                if held is not None:
                    job.status, job.progress = "queued", f"SLURM job {held}"
            code = latest.data.tags.get(CODE_TAG)
            if job.status == "finished" and code not in (None, code_version()):
                job.progress = f"trained under other code (source {code}, now {code_version()})"
        elif found:
            job.status = "other data"
            tags = found[0].data.tags
            job.run_id, job.folder = found[0].info.run_id, tags.get("output_dir", "")
            job.progress = f"trained on data {tags.get(DATA_TAG)}, the data at hand is {job.data}"
        elif tracker is None and (folder / "summary.json").is_file():  # tracking=none: only the folder
            job.status, job.folder = "finished", str(folder)
        elif tracker is None and folder.is_dir():
            job.status, job.folder = "failed", str(folder)
        last = Path(job.folder) / "last.pt" if job.folder else None
        if job.status not in ("finished", "queued") and last is not None and last.is_file():
            try:
                state = checkpoint.load(last)
                job.progress = f"last.pt after epoch {state['epoch']}, step {state.get('global_step', 0)}"
            except Exception:
                job.progress = "last.pt unreadable"
    return jobs


# The states of a job SLURM still holds: it runs (again) or will, without being relaunched.
HELD_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
)


def scheduler_state(tags: dict[str, str]) -> str | None:
    """``<id> <STATE>`` when SLURM still holds the job a run was trained by (requeued at its time limit,
    pending again after a node failure), else None (not a SLURM job, gone, cancelled, or no squeue here).

    squeue lists a job that is ending as COMPLETING, cancelled or requeued alike; sacct's record of it
    tells them apart (CANCELLED, or REQUEUED)."""
    array, task = tags.get("slurm.array_job_id"), tags.get("slurm.array_task_id")
    job = f"{array}_{task}" if array and task else tags.get("slurm.job_id")
    if not job or shutil.which("squeue") is None:
        return None
    listed = _slurm_words(["squeue", "-h", "-j", job, "-o", "%T"])
    if not listed:
        return None
    state = listed[-1]
    if state == "COMPLETING" and shutil.which("sacct") is not None:
        recorded = _slurm_words(["sacct", "-X", "-n", "-j", job, "-o", "State"])
        state = recorded[-1] if recorded else state
    return f"{job} {state}" if state in HELD_STATES else None


def _slurm_words(command: list[str]) -> list[str]:
    """The first word of each line a SLURM command prints (none where it fails)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    lines = done.stdout.splitlines() if done.returncode == 0 else []
    return [line.split()[0] for line in lines if line.strip()]


def launcher_note(sweep_dir: Path) -> str | None:
    """A line about the sweep's parent run when its launching process is gone but the run still says
    RUNNING (``kill -9``, a lost login node): relaunching the sweep takes it over and closes it."""
    found = parent_run(sweep_dir)
    if found is None:
        return None
    run_id, uri = found
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(uri).get_run(run_id)
        identity = run.data.tags.get(SWEEP_IDENTITY_TAG)
    except Exception:
        return None
    if run.info.status != "RUNNING" or identity is None:
        return None
    config = sweep_overrides(sweep_dir)[1]
    if is_held(str(config.paths.cache), f"sweep-{identity}"):
        return None
    return (
        f"The sweep's launching process is gone and its MLflow parent run {run_id} still says RUNNING: "
        "relaunching the sweep continues that run and closes it when the sweep ends: "
        + relaunch_command(sweep_dir)
    )


def _fingerprint(node: Any, known: dict[str, str | None]) -> str | None:
    """The fingerprint of the data a dataset config points at, once per distinct config; None where the
    data is not here (another machine's paths) or not built yet."""
    key = OmegaConf.to_yaml(node, resolve=True)
    if key not in known:
        try:
            known[key] = build(node, "dataset").fingerprint()
        except Exception:
            known[key] = None
    return known[key]


def relaunch_command(sweep_dir: Path) -> str:
    """The command that, run again, submits the sweep exactly as it was submitted (launcher, its settings
    and the sweep folder included: the relaunch continues in the same folder and MLflow parent run) and
    trains its unfinished jobs, skipping the finished ones."""
    overrides, config = sweep_overrides(sweep_dir)
    hydra = [
        str(o)
        for o in config.hydra.overrides.hydra
        if not str(o).startswith(("hydra.mode=", "hydra.sweep.dir="))  # -m says the mode
    ]
    words = [*hydra, f"hydra.sweep.dir={sweep_dir.resolve()}", *overrides]
    return " ".join([_python(), "-m seal_exp.train -m", *(shlex.quote(w) for w in words)])


def _python() -> str:
    """``python`` where that is this interpreter (an activated environment), else this interpreter's path."""
    found = shutil.which("python")
    same = found is not None and Path(found).resolve() == Path(sys.executable).resolve()
    return "python" if same else shlex.quote(sys.executable)


def format_table(jobs: list[Job], relaunch: str | None = None) -> str:
    """The jobs as a Markdown table, then the counts per status and what relaunching the sweep would do."""
    lines = ["| job | overrides | status | MLflow run | checkpoint | folder |", "|---|---|---|---|---|---|"]
    for job in jobs:
        lines.append(
            f"| {job.num} | {' '.join(job.overrides)} | {job.status} | {job.run_id or ''} | "
            f"{job.progress} | {job.folder} |"
        )
    counts = Counter(job.status for job in jobs)
    lines.append("")
    lines.append(
        f"{len(jobs)} jobs: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
        + ". Relaunching the sweep command trains the failed, missing and other-data ones and resumes the "
        "dead and killed ones from their last.pt (queued: SLURM holds the job again, requeued or pending, "
        "and it resumes by itself; dead: its run says RUNNING but no process holds the job; killed: stopped "
        "by a signal, scancel or a time limit; other data: its runs were trained on data other than what "
        "dataset.root holds now)."
    )
    if relaunch and any(job.status in RELAUNCHED for job in jobs):
        lines.append(f"To do so: {relaunch}")
    return "\n".join(lines)
