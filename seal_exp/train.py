"""``python -m seal_exp.train``: distil an ANN teacher into a spiking student (or, ``stage=teacher``,
train only the teacher).

:func:`train` is a plain function of a composed config, which tests call directly; :func:`main` is the
thin Hydra wrapper. Everything configurable is built and checked by :func:`prepare` before any data is
read or any GPU touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from filelock import FileLock
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp import cached_teacher_logits, checkpoint, distributed, preemption, report, speed
from seal_exp import teacher as teachers
from seal_exp.config import ConfigError, build, flatten, invalid
from seal_exp.data import DataSplits, make_loader
from seal_exp.data.loaders import resolve_workers
from seal_exp.distillers.base import Distiller
from seal_exp.distributed import SINGLE, Distributed, LaunchEnvironment
from seal_exp.engine import LAST_FORMAT, FitResult, LoopSettings, TrainerSettings, evaluate, fit
from seal_exp.identity import IDENTITY_TAG, config_differences, identity_config, job_identity
from seal_exp.models import build_student, build_teacher
from seal_exp.models.neurons import kernel_in_use
from seal_exp.models.sync_batch_norm import convert_sync_batch_norm
from seal_exp.preemption import Preempted
from seal_exp.seeding import isolated_torch_rng, seed_everything
from seal_exp.tracking import NoTracker, git_tags, job_context

log = logging.getLogger("seal_exp")

STAGES = ("distill", "teacher")
RANK_SEED_STRIDE = 100_003  # rank r draws augmentations from seed + r·stride (rank 0: the seed itself)


@dataclass
class Plan:
    """Every object of a run, built and validated from the config, before any data is read."""

    stage: str
    seed: int
    settings: TrainerSettings
    device: torch.device
    dataset: Any
    tracker: Any
    student: nn.Module | None = None
    distiller: Distiller | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    teacher: nn.Module | None = None
    teacher_source: teachers.TeacherSource | None = None
    teacher_record: dict[str, Any] | None = None
    teacher_loop: LoopSettings | None = None
    teacher_optimizer: torch.optim.Optimizer | None = None
    teacher_scheduler: Any = None
    launch: LaunchEnvironment | None = None  # torchrun / submitit tasks: this process's rank
    cache_teacher_logits: bool = False  # trainer.cache_teacher_logits, resolved for this run


def prepare(cfg: DictConfig, *, data: bool = True) -> Plan:
    """Build and check everything a run needs, reading no data: a bad setting stops the run here.

    ``data=False`` (the benchmark, which feeds synthetic batches): no dataset and no tracking store.
    """
    if cfg.stage not in STAGES:
        raise invalid("stage", cfg.stage, f"choose one of {', '.join(STAGES)}")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise invalid("seed", cfg.seed, "use an integer >= 0")
    settings = build(cfg.trainer, "trainer")
    launch = distributed.launch_environment()
    world = launch.world_size if launch else 1
    if settings.batch_size % world:
        raise invalid(
            "trainer.batch_size",
            settings.batch_size,
            f"it is the global batch, split over this run's {world} processes: use a multiple of {world}",
        )
    plan = Plan(
        stage=cfg.stage,
        seed=cfg.seed,
        settings=settings,
        device=distributed.rank_device(settings.resolve_device(), launch),
        dataset=build(cfg.dataset, "dataset") if data else None,
        tracker=build(cfg.tracking, "tracking") if data else NoTracker(),
        launch=launch,
    )
    sync_bn = settings.sync_batchnorm and world > 1  # before any optimiser holds the BatchNorm parameters
    try:
        distiller_cls = get_class(cfg.distiller._target_)
    except Exception as exc:
        raise ConfigError(f"distiller._target_={cfg.distiller._target_}: cannot import it ({exc})") from exc
    needs_teacher = cfg.stage == "teacher" or distiller_cls.requires_teacher
    if cfg.stage == "distill":
        with isolated_torch_rng(cfg.seed):
            plan.student = build_student(cfg)
        if sync_bn:
            convert_sync_batch_norm(plan.student)
    if needs_teacher:
        with isolated_torch_rng(cfg.seed):
            plan.teacher = build_teacher(cfg)
        plan.teacher_source = source = teachers.locate(cfg)
        if source.needs_training:
            plan.teacher_loop = build(cfg.teacher.recipe, "teacher.recipe")
            if plan.teacher_loop.batch_size % world:
                raise invalid(
                    "teacher.recipe.batch_size",
                    plan.teacher_loop.batch_size,
                    f"the teacher trains on all {world} processes of this run, with this global batch "
                    f"split over them: use a multiple of {world}",
                )
            if sync_bn:
                convert_sync_batch_norm(plan.teacher)
            plan.teacher_optimizer = build(cfg.teacher.optim, "teacher.optim", modules=[plan.teacher])
            plan.teacher_scheduler = build(
                cfg.teacher.sched, "teacher.sched", optimizer=plan.teacher_optimizer
            )
        else:
            plan.teacher_record = teachers.load_into(plan.teacher, source, cfg)
    if cfg.stage == "distill":
        with isolated_torch_rng(cfg.seed):  # any module a method adds (a projector) starts from the seed
            plan.distiller = build(cfg.distiller, "distiller", student=plan.student, teacher=plan.teacher)
        plan.distiller.seed_noise(cfg.seed)
        # the benchmark's synthetic batch caches only when asked to (it cannot tell augmentation)
        setting = settings.cache_teacher_logits if data else settings.cache_teacher_logits is True
        plan.cache_teacher_logits = cached_teacher_logits.resolve(setting, plan.dataset, plan.distiller)
        plan.optimizer = build(cfg.optim, "optim", modules=plan.distiller.learnable_modules())
        plan.scheduler = build(cfg.sched, "sched", optimizer=plan.optimizer)
    speed.accelerate(
        [net for net in (plan.student, plan.teacher) if net is not None],
        plan.device,
        precision=settings.precision,
        channels_last=settings.channels_last,
        compile_target=settings.compile,
        compile_mode=settings.compile_mode,
    )
    return plan


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and return its summary (also written to ``<output>/summary.json``).

    A job whose identity (:mod:`seal_exp.identity`) already has a FINISHED run in the tracking store
    is not trained again (``skip_finished``); a job that finds ``last.pt`` in its folder, or an
    interrupted run of the same identity with one, continues from it (``resume``).
    """
    started = time.perf_counter()
    plan = prepare(cfg)
    dist = distributed.start(
        plan.launch, plan.device, plan.settings.dist_backend, plan.settings.dist_timeout_min
    )
    try:
        return _run(cfg, plan, dist, started)
    finally:
        dist.close()


def _run(cfg: DictConfig, plan: Plan, dist: Distributed, started: float) -> dict[str, Any]:
    if not dist.is_main:  # rank 0 tracks, checkpoints and reports; the others train and say little
        plan.tracker = NoTracker()
        logging.getLogger("seal_exp").setLevel(logging.WARNING)
    out = Path(dist.share(str(cfg.paths.output)))  # torchrun: every rank works in rank 0's folder
    identity_cfg = identity_config(cfg)
    identity = job_identity(identity_cfg)
    decision: dict[str, Any] = {}
    resume = None
    if dist.is_main:
        try:
            earlier = plan.tracker.find_runs(identity) if plan.stage == "distill" else []
            finished = next((r for r in earlier if r.info.status == "FINISHED"), None)
            if cfg.skip_finished and finished is not None:
                decision = {"finished": _already_finished(finished, plan, out, identity)}
            else:
                path, resume = _resume_point(cfg, plan, out, identity_cfg, earlier)
                decision = {"resume_from": str(path) if path else None}
        except Exception as exc:
            dist.share({"error": str(exc), "config": isinstance(exc, ConfigError)})
            raise
    decision = dist.share(decision)  # skip, resume and refusals are decided once, by rank 0
    if "error" in decision:
        message = f"rank 0 stopped the run: {decision['error']}"
        raise ConfigError(message) if decision["config"] else RuntimeError(message)
    if "finished" in decision:
        return decision["finished"]
    if resume is None and decision["resume_from"]:
        resume = checkpoint.load(decision["resume_from"])
    out.mkdir(parents=True, exist_ok=True)
    context = job_context()
    model = plan.student if plan.student is not None else plan.teacher
    tags = {
        "stage": plan.stage,
        "distiller": cfg.distiller._target_.rsplit(".", 1)[-1] if plan.stage == "distill" else "-",
        "device": str(plan.device),
        "spikingjelly.kernel": kernel_in_use(model, plan.device),
        "speed": speed.describe(
            plan.settings.precision,
            plan.settings.channels_last,
            plan.settings.compile,
            plan.settings.compile_mode,
        ),
        "torch.version": torch.__version__,
        "output_dir": str(out.resolve()),
        IDENTITY_TAG: identity,
        **git_tags(),
        **context["tags"],
    }
    params = flatten(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    run_name = f"{plan.stage}:{tags['distiller']}" if plan.stage == "distill" else "teacher"
    if not (resume and resume.get("mlflow_run_id") and plan.tracker.reattach(resume["mlflow_run_id"], tags)):
        plan.tracker.start(run_name, params, tags, context["parent_run_id"])

    earlier_wall = float(resume.get("wall_s", 0.0)) if resume else 0.0  # the attempts before this one

    def record() -> dict[str, Any]:  # what every last.pt carries besides the training state
        return {
            "config": identity_cfg,
            "identity": identity,
            "mlflow_run_id": plan.tracker.run_id,
            "wall_s": earlier_wall + time.perf_counter() - started,
        }

    with preemption.deferred() as guard:
        try:
            plan.tracker.log_artifact(out / ".hydra", ".hydra")
            summary = _execute(cfg, plan, out, resume, record, guard.requested, dist)
            summary["wall_s"] = round(earlier_wall + time.perf_counter() - started, 2)
            summary["mlflow_run_id"] = plan.tracker.run_id
            summary["identity"] = identity
            if dist.is_main:
                summary["world_size"] = dist.world_size
                report.write_summary(out / "summary.json", summary)
                plan.tracker.log_metrics({"wall_s": summary["wall_s"]}, step=0)
                for name in ("summary.json", "epochs.csv", "per_timestep_accuracy.png"):
                    plan.tracker.log_artifact(out / name)
        except Preempted as exc:
            log.warning("%s; handing over to the scheduler (the next start resumes from it)", exc)
            try:
                plan.tracker.finish("KILLED")
            except Exception:
                log.exception("could not close the tracked run")
            # submitit's other tasks wait for the requeue to stop them, as submitit itself does
            guard.hand_over(wait_for_requeue=dist.launcher == "submitit" and not dist.is_main)
            raise
        except BaseException as exc:
            try:
                status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
                plan.tracker.finish(status, traceback.format_exc())
            except Exception:  # never let the tracker hide the real error
                log.exception("could not close the tracked run")
            raise
    plan.tracker.finish("FINISHED")
    if dist.is_main:
        print(_last_line(summary, out, plan.tracker.run_id), flush=True)
    return summary


def _already_finished(run: Any, plan: Plan, out: Path, identity: str) -> dict[str, Any]:
    """Report the earlier run and copy its summary here, so this sweep's folder is complete too."""
    earlier_out = Path(run.data.tags.get("output_dir", ""))
    if (earlier_out / "summary.json").is_file():
        summary = report.read_summary(earlier_out / "summary.json")
    else:  # that folder is gone (another machine, cleaned up): the copy tracked with the run
        with tempfile.TemporaryDirectory() as tmp:
            summary = report.download_summary(plan.tracker.client, run.info.run_id, Path(tmp)) or {}
    summary |= {"skipped": True, "reused_run": run.info.run_id, "identity": identity}
    if summary.get("stage") is not None and out.resolve() != earlier_out.resolve():
        out.mkdir(parents=True, exist_ok=True)
        report.write_summary(out / "summary.json", summary)
    acc = summary.get("test_acc")
    print(
        f"already finished: MLflow run {run.info.run_id} (identity {identity}, folder {earlier_out}"
        + (f", test accuracy {acc:.2f}%" if acc is not None else "")
        + "); nothing to train. Pass skip_finished=false to train it again.",
        flush=True,
    )
    return summary


def _resume_point(
    cfg: DictConfig, plan: Plan, out: Path, identity_cfg: dict[str, str], earlier: list[Any]
) -> tuple[Path | None, dict[str, Any] | None]:
    """The ``last.pt`` this job continues from and its content, checked against the config, or Nones."""
    if plan.stage != "distill":
        return None, None
    path = out / "last.pt"
    if path.is_file() and not cfg.resume:
        raise ConfigError(
            f"resume=false but {path} exists: set resume=true to continue it, or give the run another "
            "folder (hydra.run.dir=...) so that checkpoint is not overwritten."
        )
    if not cfg.resume:
        return None, None
    if not path.is_file():  # a relaunched sweep: an interrupted run of the same job left a checkpoint
        folders = [Path(r.data.tags.get("output_dir", "")) for r in earlier if r.info.status != "FINISHED"]
        path = next((f / "last.pt" for f in folders if (f / "last.pt").is_file()), path)
    if not path.is_file():
        return None, None
    try:
        state = checkpoint.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot read {path} to resume from it ({exc}); move it away to restart") from exc
    if not isinstance(state, dict) or state.get("format") != LAST_FORMAT or "config" not in state:
        raise ConfigError(
            f"{path} is not a resumable seal-exp checkpoint (format {LAST_FORMAT}); move it away to start "
            "afresh, or give the run another folder (hydra.run.dir=...)."
        )
    differences = config_differences(state["config"], identity_cfg)
    if differences:
        raise ConfigError(
            f"{path} was written with a different config, so this run cannot resume it:\n  - "
            + "\n  - ".join(differences)
            + "\nPut those keys back to resume, or give the run another folder (hydra.run.dir=... / "
            "hydra.sweep.dir=...) to start a new one."
        )
    log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["global_step"])
    return path, state


def _execute(
    cfg: DictConfig,
    plan: Plan,
    out: Path,
    resume: dict[str, Any] | None,
    record: Any,
    should_stop: Any,
    dist: Distributed = SINGLE,
) -> dict[str, Any]:
    settings, device = plan.settings, plan.device
    log.info("loading %s", cfg.dataset.name)
    data = plan.dataset.load()
    log.info(
        "%s: %d train / %d val / %d test (split %s)",
        cfg.dataset.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.split_id,
    )

    def eval_loader(part: Any) -> Any:
        return _loader(plan, data, part, settings.eval_batch_size, shuffle=False, dist=dist)

    test_loader = eval_loader(data.test)
    val_loader = test_loader if data.val_is_test else eval_loader(data.val)
    if data.val_is_test:
        log.info("no validation part held out (dataset.val_fraction=0): the test part selects the model")
    summary: dict[str, Any] = {
        "stage": plan.stage,
        "dataset": str(cfg.dataset.name),
        "data_split_id": data.split_id,
    }

    if plan.teacher is not None:
        plan.teacher.to(device)
        if plan.teacher_source.needs_training:
            plan.teacher_record = _train_teacher(cfg, plan, data, val_loader, test_loader, should_stop, dist)
            teacher_test = plan.teacher_record["test_acc"]
        else:  # measured on this run's test split, whatever split it was trained with
            teacher_test = evaluate(plan.teacher, test_loader, device, settings.limit_eval_batches, dist).acc
        plan.teacher.requires_grad_(False)  # frozen from here on (and left out of DDP's gradient sync)
        if plan.teacher_record.get("data_split_id") not in (None, data.split_id):
            log.warning(
                "the teacher was trained on a different split (%s, this run: %s): its test accuracy "
                "may be optimistic",
                plan.teacher_record["data_split_id"],
                data.split_id,
            )
        plan.tracker.log_metrics({"teacher/test/acc": teacher_test}, step=0)
        summary |= {
            "teacher_test_acc": teacher_test,
            "teacher_checkpoint": str(plan.teacher_source.path),
            "teacher_origin": "trained" if plan.teacher_source.needs_training else plan.teacher_source.origin,
        }
        log.info("teacher (%s) test accuracy %.2f%%", summary["teacher_origin"], teacher_test)
    else:
        summary["teacher_test_acc"] = None

    if plan.stage == "teacher":
        summary["epochs"] = int(cfg.teacher.recipe.epochs)
        return summary

    train_part = data.train
    per_epoch = len(data.train)
    if settings.limit_train_batches is not None:
        per_epoch = min(per_epoch, settings.limit_train_batches * settings.batch_size)
    if plan.cache_teacher_logits and cached_teacher_logits.pays(
        settings.cache_teacher_logits,
        len(data.train),
        int(cfg.dataset.num_classes),
        per_epoch * settings.epochs,
    ):  # every rank caches the whole training part (its shard changes every epoch)
        logits = cached_teacher_logits.compute(
            plan.distiller,
            _loader(plan, data, data.train, settings.eval_batch_size, shuffle=False),
            device,
            settings.progress and dist.is_main,
        )
        train_part = cached_teacher_logits.WithTeacherLogits(data.train, logits)
    summary["teacher_logits"] = (
        "cached" if train_part is not data.train else "per step" if plan.teacher is not None else None
    )

    # same student data order whether the teacher was trained, cached or absent
    seed_everything(plan.seed + RANK_SEED_STRIDE * dist.rank)
    train_loader = _loader(plan, data, train_part, settings.batch_size, shuffle=True, dist=dist)
    if resume is not None and train_loader.num_workers > 0 and train_loader.persistent_workers:
        log.warning(
            "resuming with persistent loader workers: from here on the batch order and augmentation draws "
            "differ from an uninterrupted run (same distribution). For a bit-exact resume use "
            "trainer.persistent_workers=false or trainer.num_workers=0."
        )
    plan.distiller.to(device)
    result = fit(
        objective=plan.distiller,
        model=plan.student,
        optimizer=plan.optimizer,
        scheduler=plan.scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        settings=settings,
        device=device,
        progress=settings.progress and dist.is_main,
        progress_every=settings.progress_every,
        sink=plan.tracker.log_metrics,
        name="student",
        test_every_epoch=settings.test_every_epoch and not data.val_is_test,
        checkpoint_dir=out,
        resume=resume,
        checkpoint_every_steps=settings.checkpoint_every_steps,
        should_stop=should_stop,
        checkpoint_extra=record,
        dist=dist,
    )
    return summary | _student_summary(
        cfg, result, out, summary["teacher_test_acc"], data.val_is_test, write=dist.is_main
    )


def _train_teacher(
    cfg: DictConfig,
    plan: Plan,
    data: Any,
    val_loader: Any,
    test_loader: Any,
    should_stop: Any,
    dist: Distributed = SINGLE,
) -> dict[str, Any]:
    """Train the teacher into the cache, unless a parallel job finished the same one while we waited.

    Data-parallel: all ranks train it together; rank 0 holds the lock and writes the cache.
    """
    path = plan.teacher_source.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock") if dist.is_main else contextlib.nullcontext():
        if dist.share(path.is_file()):
            log.info("another job trained this teacher meanwhile; reusing %s", path)
            return teachers.load_into(plan.teacher, plan.teacher_source, cfg)
        val_acc, test_acc, best_epoch = _fit_teacher(
            cfg, plan, data, val_loader, test_loader, should_stop, dist
        )
        record = None
        if dist.is_main:
            record = teachers.save(
                plan.teacher,
                path,
                cfg,
                val_acc=val_acc,
                test_acc=test_acc,
                best_epoch=best_epoch,
                data_split_id=data.split_id,
            )
        return dist.share(record)  # the others wait here until the cache file is written


def _fit_teacher(
    cfg: DictConfig,
    plan: Plan,
    data: DataSplits,
    val_loader: Any,
    test_loader: Any,
    should_stop: Any,
    dist: Distributed = SINGLE,
) -> tuple[float, float, int]:
    """Validation and test accuracy of the teacher to cache, and its epoch (0: the initial weights)."""
    loop = plan.teacher_loop
    if loop.epochs == 0:  # pretrained weights (e.g. a timm file) used as they are
        log.info("teacher.recipe.epochs=0: evaluating the initial weights and caching them untrained")
        val = evaluate(plan.teacher, val_loader, plan.device, loop.limit_eval_batches, dist)
        test = evaluate(plan.teacher, test_loader, plan.device, loop.limit_eval_batches, dist)
        return val.acc, test.acc, 0
    log.info(
        "training the %s teacher for %d epochs (cached afterwards at %s)",
        cfg.teacher.arch,
        loop.epochs,
        plan.teacher_source.path,
    )
    seed_everything(plan.seed + RANK_SEED_STRIDE * dist.rank)
    train_loader = _loader(
        plan,
        data,
        data.train if data.teacher_train is None else data.teacher_train,
        loop.batch_size,
        shuffle=True,
        dist=dist,
    )
    # an interrupted teacher training (timeout, preemption) continues from here; the folder goes once
    # the teacher is in the cache
    partial_dir = plan.teacher_source.path.with_suffix(".partial")
    resume = (
        checkpoint.load(partial_dir / "last.pt") if dist.share((partial_dir / "last.pt").is_file()) else None
    )
    result = fit(
        objective=teachers.Supervised(plan.teacher),
        model=plan.teacher,
        optimizer=plan.teacher_optimizer,
        scheduler=plan.teacher_scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        settings=loop,
        device=plan.device,
        progress=plan.settings.progress and dist.is_main,
        progress_every=plan.settings.progress_every,
        sink=lambda metrics, step: plan.tracker.log_metrics(
            {f"teacher/{k}": v for k, v in metrics.items()}, step
        ),
        name="teacher",
        test_every_epoch=False,
        checkpoint_dir=partial_dir,
        resume=resume,
        should_stop=should_stop,
        dist=dist,
    )
    if dist.is_main:
        shutil.rmtree(partial_dir, ignore_errors=True)
    return result.best_val_acc, result.test_best.acc, result.best_epoch


def _loader(
    plan: Plan, data: DataSplits, part: Any, batch_size: int, *, shuffle: bool, dist: Distributed = SINGLE
) -> Any:
    """A seeded loader; data-parallel, this rank's shard with its share of the global batch.

    Evaluation batches are split too, so ``limit_eval_batches`` covers the same samples on any
    number of processes.
    """
    s = plan.settings
    return make_loader(
        part,
        max(1, batch_size // dist.world_size),
        shuffle=shuffle,
        seed=plan.seed,
        num_workers=resolve_workers(s.num_workers, data.in_memory),
        pin_memory=s.pin_memory,
        persistent_workers=s.persistent_workers,
        time_major=data.time_major,
        shard=(dist.rank, dist.world_size),
    )


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
) -> dict[str, Any]:
    if write:
        report.write_epochs_csv(out / "epochs.csv", result.history)
        report.plot_accuracy_per_timestep(
            out / "per_timestep_accuracy.png",
            result.test_best.per_timestep,
            result.test_best.prefix_mean,
            teacher_acc,
            title=f"{cfg.dataset.name}, T={cfg.neuron.T}, {cfg.distiller._target_.rsplit('.', 1)[-1]} "
            f"(model selected on {'test' if val_is_test else 'validation'})",
        )
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


def _last_line(summary: dict[str, Any], out: Path, run_id: str | None) -> str:
    where = f"run folder {out}" + (f" | MLflow run {run_id} (make ui)" if run_id else "")
    teacher = summary.get("teacher_test_acc")
    if summary["stage"] == "teacher":
        return f"teacher test accuracy {teacher:.2f}% | checkpoint {summary['teacher_checkpoint']} | {where}"
    teacher_part = f", teacher {teacher:.2f}%" if teacher is not None else ""
    return (
        f"student test accuracy {summary['test_acc']:.2f}% (selected on {summary['selected_on']}; last epoch "
        f"{summary['test_acc_last']:.2f}%){teacher_part} | {where}"
    )


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except ConfigError as exc:
        print(f"seal-exp: configuration error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    return summary.get("test_acc", summary.get("teacher_test_acc"))


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


if __name__ == "__main__":
    sys.argv += torchrun_follower_overrides(sys.argv[1:], dict(os.environ))
    main()
