"""``python -m seal_exp.train``: distil an ANN teacher into a spiking student (or, ``stage=teacher``,
train only the teacher).

:func:`train` is a plain function of a composed config, which tests call directly; :func:`main` is the
thin Hydra wrapper. It reads as the run goes: the plan (every object built and checked before any data
is read), the job (skip, resume, tracked run), the data, the teacher, the student, the summary.
"""

from __future__ import annotations

# first, before the imports below take seconds (torch, MLflow): from here on the cluster's pre-timeout
# signal is recorded, not fatal, however soon after the job's start it comes
import seal_exp.run.early_preemption  # noqa: F401

# isort: split

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from seal_exp import trained
from seal_exp.config import ConfigError, RunFailed, project_root
from seal_exp.data import DataSplits
from seal_exp.measures import evaluation
from seal_exp.notation import is_smoke
from seal_exp.plan import Plan, check_root, check_writable, prepare
from seal_exp.run import checkpoint, distributed, session, startup
from seal_exp.run import files as run_files
from seal_exp.run.claim import JobRunning
from seal_exp.run.distributed import Distributed
from seal_exp.run.preemption import STOP_SIGNALS, Guard
from seal_exp.run.session import Job
from seal_exp.seeding import seed_rank
from seal_exp.sweep_launch import LAUNCH, EndedWithoutResult, SweepLaunchCallback
from seal_exp.teacher import cached_logits
from seal_exp.teacher.training import TeacherStage
from seal_exp.tracking import NoTracker, job_run_name
from seal_exp.training.loop import Fit, FitResult, fit

log = logging.getLogger("seal_exp")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and return its summary (also written to ``<output>/summary.json``).

    A job whose identity (:mod:`seal_exp.run.identity`) already has a FINISHED run in the tracking
    store is not trained again (``skip_finished``); a job that finds ``last.pt`` in its folder, or an
    interrupted run of the same identity with one, continues from it (``resume``).
    """
    started = time.perf_counter()
    plan = prepare(cfg)
    s = plan.settings
    dist = distributed.start(plan.launch, plan.device, s.dist_backend, s.dist_timeout_min)
    job = None
    try:
        if not dist.is_main:  # rank 0 tracks, checkpoints and reports; the others train and say little
            plan.tracker = NoTracker()
            log.setLevel(logging.WARNING)
        # a stop or pre-timeout signal is acted on wherever it comes: at the next step boundary while a
        # training loop runs, at once elsewhere, after closing the run once the results are written
        with session.guarded(plan.tracker, dist) as guard:
            job = session.open_job(cfg, plan.tracker, dist, started, plan.dataset.fingerprint)
            if job.finished is not None:  # skip_finished: an earlier run of this job has the result
                return job.finished
            session.start_tracking(cfg, plan.tracker, job, job_run_name(cfg, plan.stage), plan.tags())
            summary = _stages(cfg, plan, job, guard, dist)
            session.record_summary(summary, plan.tracker, job, dist)
            session.finish(plan.tracker, guard)
            if dist.is_main:
                line = session.last_line(summary, job.out, plan.tracker.run_id)
                print(line, flush=True)
                _into_log_files(line)
            session.stop_if_signalled(guard, plan.tracker)
        return summary
    finally:
        if job is not None and job.claim is not None:
            job.claim.release()
        dist.close()


def _into_log_files(line: str, level: int = logging.INFO) -> None:
    """A line the console has from ``print`` (the result, a failure) in ``train.log`` too (Hydra's file
    handler)."""
    record = log.makeRecord(log.name, level, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _stages(cfg: DictConfig, plan: Plan, job: Job, guard: Guard, dist: Distributed) -> dict[str, Any]:
    """Data, then the teacher (when the run has one), then the student (``stage=distill``)."""
    log.info("loading %s", cfg.dataset.name)
    data = plan.dataset.load()
    if dist.is_main:
        source = str(cfg.dataset.get("root") or f"embedded ({cfg.dataset._target_.rsplit('.', 1)[-1]})")
        session.record_data(plan.tracker, job, plan.dataset.fingerprint(), str(cfg.dataset.name), source)
    log.info(
        "%s: %d train / %d val / %d test (split %s)",
        cfg.dataset.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.split_id,
    )
    test_loader = plan.loader(data, data.test, plan.settings.eval_batch_size, shuffle=False, dist=dist)
    val_loader = test_loader
    if data.val_is_test:
        log.info("no validation part held out (dataset.val_fraction=0): the test part selects the model")
    else:
        val_loader = plan.loader(data, data.val, plan.settings.eval_batch_size, shuffle=False, dist=dist)
    summary: dict[str, Any] = {
        "stage": plan.stage,
        "dataset": str(cfg.dataset.name),
        "data_split_id": data.split_id,
        "smoke": is_smoke(cfg),  # cut short (debug=smoke, limit_*_batches): reports mark it [smoke]
    }
    summary["teacher_test_acc"] = None
    # "stop now?", asked at every step boundary; the first time, the job's start-up is recorded (the
    # launcher weighs time limits against it)
    poll = guard.requested
    if dist.is_main:
        poll = startup.timing_first_step(guard.requested, str(cfg.paths.cache), str(cfg.dataset.name))
    if plan.teacher is not None:
        fingerprint = dist.share(job.data)
        stage = TeacherStage(cfg, plan, data, fingerprint, val_loader, test_loader, poll, dist)
        with job.timing_teacher(), guard.at_step_boundaries():
            summary |= stage.obtain()
    if plan.stage == "teacher":
        return summary | {"epochs": int(cfg.teacher.recipe.epochs)}
    loaders = (val_loader, test_loader)
    return summary | _student(cfg, plan, job, data, loaders, guard, poll, dist, summary["teacher_test_acc"])


def _student(
    cfg: DictConfig,
    plan: Plan,
    job: Job,
    data: DataSplits,
    loaders: tuple[Any, Any],
    guard: Guard,
    poll: Callable[[], bool],
    dist: Distributed,
    teacher_acc: float | None,
) -> dict[str, Any]:
    """Distil the student; its lines of the run summary (and, on rank 0, epochs.csv and the plot)."""
    s, student = plan.settings, plan.student
    train_part = _training_part(cfg, plan, data, dist)
    teacher_logits = "cached" if train_part is not data.train else "per step" if plan.teacher else None
    seed_rank(
        plan.seed, dist.rank
    )  # same student data order whether the teacher was trained, cached or absent
    train_loader = plan.loader(data, train_part, s.batch_size, shuffle=True, dist=dist)
    if job.resume is not None and train_loader.num_workers > 0 and train_loader.persistent_workers:
        log.warning(
            "resuming with persistent loader workers: from here on the batch order and augmentation draws "
            "differ from an uninterrupted run (same distribution). For a bit-exact resume use "
            "trainer.persistent_workers=false or trainer.num_workers=0."
        )
    student.distiller.to(plan.device)
    job_fit = Fit(
        name="student",
        objective=student.distiller,
        model=student.model,
        optimizer=student.optimizer,
        scheduler=student.scheduler,
        train_loader=train_loader,
        val_loader=loaders[0],
        test_loader=loaders[1],
        settings=s,
        device=plan.device,
        sink=plan.tracker.log_metrics,
        progress=s.progress and dist.is_main,
        progress_every=s.progress_every,
        test_every_epoch=s.test_every_epoch and not data.val_is_test,
        checkpoint_dir=job.out,
        checkpoint_every_steps=s.checkpoint_every_steps,
        should_stop=poll,
        checkpoint_extra=lambda: session.checkpoint_record(plan.tracker, job),
        best_extra=lambda: {"architecture": trained.architecture(cfg, data.normalisation)},
        dist=dist,
        on_nonfinite=student.on_nonfinite,
    )
    with guard.at_step_boundaries():
        result = fit(job_fit, job.resume)
    if dist.is_main and (job.out / trained.BEST).is_file():
        example = next(iter(loaders[1]))[0][:2].numpy()  # test inputs as the network takes them (2: the
        # batch size stays free in the exported graph; torch.export fixes a size of 1)
        plan.tracker.log_student(trained.load_student(job.out), job.out / trained.BEST, example)
    summary = {"teacher_logits": teacher_logits}
    files = dist.is_main
    summary |= _student_summary(
        cfg, result, job.out, teacher_acc, data.val_is_test, write=files, draw=s.figures
    )
    if dist.is_main and plan.eval.after_training and (job.out / trained.BEST).is_file():
        summary |= _measures(cfg, plan, data, job.out, summary["prefix_mean_test_acc"])
    return summary


def _measures(
    cfg: DictConfig, plan: Plan, data: DataSplits, out: Path, prefix_mean: list[float]
) -> dict[str, Any]:
    """The selected student measured beyond top-1 (``eval.*``): logged, drawn, and its summary lines."""
    teacher = plan.teacher.model if plan.teacher is not None else None
    subject = evaluation.Subject(
        cfg,
        checkpoint.load(out / trained.BEST),
        data,
        plan.device,
        teacher=teacher,
        batch_size=plan.settings.eval_batch_size,
        num_workers=plan.settings.num_workers,
        eval_limit=plan.settings.limit_eval_batches,
    )
    result = evaluation.measure(subject, plan.eval)
    for line in result.lines():
        log.info(line)
    plan.tracker.log_metrics(result.metrics(), step=0)
    if plan.settings.figures:
        evaluation.draw(result, out, f"{cfg.dataset.name}, {job_run_name(cfg, 'distill')}", prefix_mean)
    return result.headline() | {"measures": result.as_dict()}


def _training_part(cfg: DictConfig, plan: Plan, data: DataSplits, dist: Distributed) -> Any:
    """The student's training data, with the teacher's logits attached when caching them pays off."""
    s = plan.settings
    per_epoch = len(data.train)
    if s.limit_train_batches is not None:
        per_epoch = min(per_epoch, s.limit_train_batches * s.batch_size)
    if not plan.student.cache_teacher_logits or not cached_logits.pays(
        s.cache_teacher_logits, len(data.train), int(cfg.dataset.num_classes), per_epoch * s.epochs
    ):
        return data.train
    # every rank caches the whole training part (its shard changes every epoch)
    loader = plan.loader(data, data.train, s.eval_batch_size, shuffle=False)
    logits = cached_logits.compute(plan.student.distiller, loader, plan.device, s.progress and dist.is_main)
    return cached_logits.WithTeacherLogits(data.train, logits)


SELECTION = (
    "test_acc: the epoch with the best validation accuracy; test_acc_last: the last epoch; "
    "best_test_acc_over_epochs: the papers' (optimistic) best test accuracy over epochs"
)
SELECTION_ON_TEST = (
    "no validation part (dataset.val_fraction=0): test_acc is the epoch with the best test accuracy, "
    "the papers' (optimistic) protocol, equal to best_test_acc_over_epochs; test_acc_last: the last epoch"
)


def _student_summary(
    cfg: DictConfig,
    result: FitResult,
    out: Path,
    teacher_acc: float | None,
    val_is_test: bool,
    *,
    write: bool = True,
    draw: bool = True,
) -> dict[str, Any]:
    if write:
        run_files.write_epochs_csv(out / "epochs.csv", result.history)
    if write and draw:
        what = f"{cfg.dataset.name}, {job_run_name(cfg, 'distill')}"
        run_files.plot_accuracy_per_timestep(
            out / "per_timestep_accuracy.png",
            result.test_best.per_timestep,
            result.test_best.prefix_mean,
            teacher_acc,
            title=f"{what}\n(model selected on {'test' if val_is_test else 'validation'})",
        )
        run_files.plot_training_curves(out / "training_curves.png", result.history, what)
    return {
        "test_acc": result.test_best.acc,
        "test_acc_last": result.test_last.acc,
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "best_test_acc_over_epochs": result.best_val_acc if val_is_test else result.best_test_acc_over_epochs,
        "per_timestep_test_acc": result.test_best.per_timestep,
        "prefix_mean_test_acc": result.test_best.prefix_mean,
        "selection": SELECTION_ON_TEST if val_is_test else SELECTION,
        "selected_on": "test" if val_is_test else "validation",
        "epochs": len(result.history),
        "T": int(cfg.neuron.T),
        "distiller": str(cfg.distiller._target_),
        "seed": int(cfg.seed),
        "output_dir": str(out.resolve()),
    }


_JOB = {"started": False}  # whether Hydra got as far as a job (else its exit 1 was a config it refused)


def submitit_logs_once() -> None:
    """submitit's logger writes a warning to stdout and stderr and passes it on to Hydra's root handler:
    three copies of every "Bypassing sacct error". Here each record goes out once: warnings to stderr,
    the rest to stdout, nothing to the root logger."""
    from submitit.core import logger  # configures its handlers when first imported; adjust them after

    submitit_log = logger.get_logger()
    submitit_log.propagate = False
    for handler in submitit_log.handlers:  # its own stdout handler ("submitit_out"), no one else's
        if handler.get_name() == "submitit_out" and not handler.filters:
            handler.addFilter(_below_warning)


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    _JOB["started"] = True
    submitit_logs_once()  # a SLURM job's own process (the launching one is set up in cli())
    try:
        summary = train(cfg)
    except JobRunning as exc:  # the same job in another process: not a configuration mistake
        print(f"seal-exp: {exc}", file=sys.stderr, flush=True)
        discard_refused_folder()
        sys.exit(2)
    except ConfigError as exc:
        print(f"seal-exp: configuration error: {exc}", file=sys.stderr, flush=True)
        discard_refused_folder()
        SweepLaunchCallback.refused_jobs += 1
        sys.exit(2)
    except KeyboardInterrupt:  # a second SIGINT / SIGTERM, or one outside training: the run is KILLED
        print("seal-exp: interrupted; the same command resumes from the last checkpoint", file=sys.stderr)
        SweepLaunchCallback.stopped_by = signal.SIGINT
        sys.exit(130)
    except RunFailed as exc:  # a non-finite loss, a store that broke: one line (the traceback is in MLflow)
        line = f"seal-exp: run failed: {exc}"
        print(line, file=sys.stderr, flush=True)
        _into_log_files(line, logging.ERROR)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            sys.exit(1)
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a launcher's job: it records why there is no result
            raise CompactHydraException(line) from None
        # a job of an in-process sweep: the sweep goes on, and ends with the table of jobs without a
        # result and exit 3, as under a launcher
        LAUNCH.unfinished.append(
            EndedWithoutResult(
                int(hydra_cfg.job.num),
                tuple(hydra_cfg.overrides.task),
                "FAILED",
                f"run failed: {exc}",
                str(Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log"),
            )
        )
        return None
    except SystemExit as exc:  # stopped by a signal: an in-process sweep's parent is KILLED too
        if exc.code in [128 + s for s in STOP_SIGNALS]:
            SweepLaunchCallback.stopped_by = int(exc.code) - 128
        raise
    # what a sweeper optimises: validation accuracy, never test (the teacher stage: the teacher's)
    return summary.get("best_val_acc", summary.get("teacher_val_acc"))


def torchrun_follower_overrides(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Extra overrides for a torchrun rank other than 0: Hydra's files go to a scratch folder.

    Each rank starts its own Hydra run, whose timestamped folder may differ by a second from rank
    0's; the ranks work in rank 0's folder (shared at start), so the others' own stays out of
    ``outputs/``. A multirun under torchrun is refused: sweeps launch their jobs through
    ``hydra/launcher=slurm_ddp``, each job a set of DDP tasks.
    """
    if "RANK" not in environ or environ.get("SUBMITIT_EXECUTOR") or int(environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    if any(a in ("-m", "--multirun") for a in argv):
        raise SystemExit(
            "seal-exp: a multirun cannot run under torchrun (every rank would launch the whole sweep); "
            "run single jobs under torchrun, or sweep with hydra/launcher=slurm_ddp (one DDP job per point)"
        )
    if environ["RANK"] == "0":
        return []
    scratch = Path(tempfile.gettempdir()) / f"seal-exp-rank{environ['RANK']}-{os.getpid()}"
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]


def refuse_missing_scheduler(argv: list[str]) -> None:
    """A SLURM sweep where ``sbatch`` is not on PATH stops here, before any folder or MLflow run exists."""
    launcher = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")), "")
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if multirun and launcher.startswith("slurm") and shutil.which("sbatch") is None:
        print(
            f"seal-exp: hydra/launcher={launcher} submits through SLURM's sbatch, which is not on this "
            "machine's PATH: run the sweep on a cluster login node, or rehearse it here with "
            "hydra/launcher=local.",
            file=sys.stderr,
        )
        sys.exit(2)


def refuse_unwritable_folders(argv: list[str]) -> None:
    """A run or sweep folder given on the command line that cannot be created, or an empty ``paths.root``,
    stops here with one line (Hydra would create the folder before any of this package runs, with a
    traceback, or at the top of the file system)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir", "paths.root") and "${" not in value:
            try:
                if key == "paths.root":
                    check_root(value)  # empty: Hydra would make outputs/ at the top of the file system
                if value:
                    check_writable(key, value, "the folder")
            except ConfigError as exc:
                print(f"seal-exp: configuration error: {exc}", file=sys.stderr)
                sys.exit(2)


_FOLDERS_BEFORE: set[Path] = set()  # what existed where this command makes folders, when cli() started
_CLI = {"noted": False}


def note_existing_folders(argv: list[str]) -> None:
    """Note which folders exist where this command's runs get theirs (``outputs/<today>``,
    ``multirun/<today>``, a ``hydra.run.dir`` / ``hydra.sweep.dir`` given, their parents and, for one that
    exists, its subfolders), so that a refused run removes only what this process made."""
    given = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a and not a.startswith("~"))
    given = {k: v for k, v in given.items() if "${" not in v}
    root = Path(given.get("paths.root") or project_root())
    today = time.strftime("%Y-%m-%d")
    places = [root / "outputs" / today, root / "multirun" / today]
    places += [Path(given[k]) for k in ("hydra.run.dir", "hydra.sweep.dir") if given.get(k)]
    for place in places:
        place = place.resolve()
        _FOLDERS_BEFORE.update(p for p in (place, *place.parents) if p.is_dir())
        if place.is_dir():
            _FOLDERS_BEFORE.update(p for p in place.iterdir() if p.is_dir())
    _CLI["noted"] = True


def discard_refused_folder() -> None:
    """A refused run leaves no folder: the one Hydra made for it goes (and parents made with it, now
    empty) when this process made it and it holds nothing but Hydra's own files (``.hydra/``, the log)."""
    if not _CLI["noted"] or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(str(hydra_cfg.runtime.output_dir)).resolve()
    hydra_log = f"{hydra_cfg.job.name}.log"
    if folder in _FOLDERS_BEFORE or not folder.is_dir():
        return
    own = folder / ".hydra"
    if {p.name for p in folder.iterdir()} - {own.name, hydra_log}:
        return
    if own.is_dir() and {p.name for p in own.iterdir()} - {"config.yaml", "hydra.yaml", "overrides.yaml"}:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's file handler writes the log being removed
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == folder:
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent in _FOLDERS_BEFORE:
            break
        try:
            parent.rmdir()  # only if empty: another run's folder in it keeps it
        except OSError:
            break


def cli() -> None:
    """``python -m seal_exp.train``; a config Hydra refuses to compose exits 2, like every user error."""
    sys.argv += torchrun_follower_overrides(sys.argv[1:], dict(os.environ))
    note_existing_folders(sys.argv[1:])
    refuse_missing_scheduler(sys.argv[1:])
    refuse_unwritable_folders(sys.argv[1:])
    submitit_logs_once()
    try:
        main()
    except SystemExit as exc:
        if exc.code == 1 and not _JOB["started"]:
            sys.exit(2)
        raise


if __name__ == "__main__":
    cli()
