"""A composed config → a validated plan: every object of a run, built and checked before any data is read.

A bad setting stops the run here, naming its key, while it is still cheap: no data read, no GPU
touched, no tracked run started. The plan holds one part per stage it runs: ``student`` (distil)
and ``teacher`` (when the method or the stage needs one), each ``None`` when the run has no such stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import ConfigError, build, check_numbers, check_top_level_keys, invalid
from seal_exp.data import DataSplits, make_loader
from seal_exp.data.loaders import resolve_workers
from seal_exp.distillers.base import Distiller
from seal_exp.measures.settings import EvalSettings, check_applicable
from seal_exp.models import build_student, build_teacher, speed
from seal_exp.models.neurons import kernel_in_use
from seal_exp.models.sync_batch_norm import convert_sync_batch_norm
from seal_exp.run import distributed
from seal_exp.run.distributed import SINGLE, Distributed, LaunchEnvironment
from seal_exp.seeding import isolated_torch_rng
from seal_exp.teacher import cache as teacher_cache
from seal_exp.teacher import cached_logits
from seal_exp.tracking import NoTracker, method_settings
from seal_exp.training.settings import LoopSettings, TrainerSettings

STAGES = ("distill", "teacher")
SEED_MAX = 2**32 - 1  # numpy's seeds end here (the seed also seeds numpy and every loader worker)


@dataclass
class StudentPlan:
    """The spiking student, the method that trains it and its optimiser."""

    model: nn.Module
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cache_teacher_logits: bool  # trainer.cache_teacher_logits, resolved for this run
    on_nonfinite: str  # what to change when its loss becomes non-finite (optim.lr, the method's settings)


@dataclass
class TeacherTraining:
    """How an uncached teacher is trained (``teacher.recipe``, ``teacher.optim``, ``teacher.sched``)."""

    loop: LoopSettings
    optimizer: torch.optim.Optimizer
    scheduler: Any
    on_nonfinite: str  # what to change when its loss becomes non-finite (teacher.optim.lr)


@dataclass
class TeacherPlan:
    """The ANN teacher, where it comes from, and how it is trained when the cache lacks it."""

    model: nn.Module
    source: teacher_cache.TeacherSource
    record: dict[str, Any] | None  # the checkpoint's record; None until a teacher to train is trained
    training: TeacherTraining | None  # None: loaded from a checkpoint or the cache


@dataclass
class Plan:
    """Every object of a run, built and validated from the config, before any data is read."""

    stage: str
    seed: int
    settings: TrainerSettings
    device: torch.device
    dataset: Any
    tracker: Any
    launch: LaunchEnvironment | None  # torchrun / submitit tasks: this process's rank
    student: StudentPlan | None = None
    teacher: TeacherPlan | None = None
    eval: EvalSettings | None = None  # what the selected student is measured on after training

    @property
    def method(self) -> str:
        """The distiller's name (``-`` for a teacher-only run)."""
        return type(self.student.distiller).__name__ if self.student is not None else "-"

    def tags(self) -> dict[str, str]:
        """The tracking tags that say how this run computes: method, device, kernels, fast paths."""
        model = self.student.model if self.student is not None else self.teacher.model
        s = self.settings
        return {
            "stage": self.stage,
            "distiller": self.method,
            "device": str(self.device),
            "spikingjelly.kernel": kernel_in_use(model, self.device),
            "speed": speed.describe(s.precision, s.channels_last, s.compile, s.compile_mode),
            "torch.version": torch.__version__,
        }

    def loader(
        self, data: DataSplits, part: Any, batch_size: int, *, shuffle: bool, dist: Distributed = SINGLE
    ) -> Any:
        """A seeded loader; data-parallel, this rank's shard with its share of the global batch.

        Evaluation batches are split too, so ``limit_eval_batches`` covers the same samples on any
        number of processes.
        """
        s = self.settings
        return make_loader(
            part,
            max(1, batch_size // dist.world_size),
            shuffle=shuffle,
            seed=self.seed,
            num_workers=resolve_workers(s.num_workers, data.in_memory),
            pin_memory=s.pin_memory,
            persistent_workers=s.persistent_workers,
            time_major=data.time_major,
            shard=(dist.rank, dist.world_size),
        )


def prepare(cfg: DictConfig, *, data: bool = True) -> Plan:
    """Build and check everything a run needs, reading no data: a bad setting stops the run here.

    ``data=False`` (the benchmark, which feeds synthetic batches): no dataset, no tracking store and no
    output folder.
    """
    check_top_level_keys(cfg)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed <= SEED_MAX:
        raise invalid("seed", cfg.seed, f"use an integer from 0 to {SEED_MAX} (2**32 - 1)")
    check_numbers(cfg)
    check_root(cfg.paths.root)
    if cfg.stage not in STAGES:
        raise invalid("stage", cfg.stage, f"choose one of {', '.join(STAGES)}")
    _check_schedule_floor(cfg, "sched")
    for switch in ("resume", "skip_finished", "resume_across_code_change"):
        if not isinstance(cfg.get(switch), bool):
            raise invalid(switch, cfg.get(switch), "use true or false")
    if data:
        check_writable("paths.output", cfg.paths.output, "the run's folder (hydra.run.dir)")
    settings = build(cfg.trainer, "trainer")
    eval_settings = build(cfg.eval, "eval") if "eval" in cfg else EvalSettings()
    if cfg.stage == "distill" and eval_settings.after_training:
        check_applicable(cfg, eval_settings)
    launch = distributed.launch_environment()
    world = launch.world_size if launch else 1
    _check_global_batch("trainer.batch_size", settings.batch_size, world, "it is the global batch, split")
    plan = Plan(
        stage=cfg.stage,
        seed=cfg.seed,
        settings=settings,
        device=distributed.rank_device(settings.resolve_device(), launch),
        dataset=build(cfg.dataset, "dataset") if data else None,
        tracker=build(cfg.tracking, "tracking") if data else NoTracker(),
        launch=launch,
        eval=eval_settings,
    )
    sync_bn = settings.sync_batchnorm and world > 1  # before any optimiser holds the BatchNorm parameters
    try:
        distiller_cls = get_class(cfg.distiller._target_)
    except Exception as exc:
        raise ConfigError(f"distiller._target_={cfg.distiller._target_}: cannot import it ({exc})") from exc
    if cfg.stage == "distill" and not distiller_cls.requires_teacher and cfg.teacher.checkpoint:
        raise ConfigError(
            f"teacher.checkpoint={cfg.teacher.checkpoint} is set but {_distiller_choice(cfg)} trains without "
            "a teacher: drop teacher.checkpoint (it would only change the job's identity)."
        )
    student = None
    if cfg.stage == "distill":
        with isolated_torch_rng(cfg.seed):
            student = build_student(cfg)
        if sync_bn:
            convert_sync_batch_norm(student)
    if cfg.stage == "teacher" or distiller_cls.requires_teacher:
        plan.teacher = _teacher_plan(cfg, world, sync_bn, plan.dataset)
    if student is not None:
        plan.student = _student_plan(cfg, student, plan.teacher, plan.dataset, settings, data)
    networks = [p.model for p in (plan.student, plan.teacher) if p is not None]
    speed.accelerate(
        networks,
        plan.device,
        precision=settings.precision,
        channels_last=settings.channels_last,
        compile_target=settings.compile,
        compile_mode=settings.compile_mode,
    )
    return plan


def check_root(root: Any) -> None:
    """Refuse an empty ``paths.root``: ``outputs/``, ``mlflow.db`` and ``.cache/`` would land at the top of
    the file system (``/outputs``, ``/mlflow.db``)."""
    if not str(root).strip():
        raise invalid(
            "paths.root",
            root,
            "it is the folder that holds outputs/, mlflow.db and .cache/, and empty it puts them at the top "
            "of the file system: leave it out (the checkout) or give a folder (paths.root=/abs/folder)",
        )


def _check_schedule_floor(cfg: DictConfig, key: str) -> None:
    """A schedule's lowest learning rate (``eta_min``) must not be negative: torch's schedules take one and
    turn the learning rate negative late in the run, which then climbs the loss instead of descending it."""
    floor = OmegaConf.select(cfg, f"{key}.eta_min", default=None)
    if isinstance(floor, int | float) and not isinstance(floor, bool) and floor < 0:
        raise invalid(f"{key}.eta_min", floor, "the lowest learning rate must be >= 0 (0: anneal to zero)")


def _nonfinite_advice(cfg: DictConfig, optim_key: str, method: bool) -> str:
    """What to change when a loss becomes non-finite: the learning rate and, for the student, the method's
    settings (a weight such as ``distiller.alpha=1e30`` overflows the loss), with their values."""
    lr = OmegaConf.select(cfg, f"{optim_key}.lr", default=None)
    advice = "lower the learning rate" + (f" ({optim_key}.lr={lr})" if lr is not None else "")
    settings = method_settings(cfg) if method else {}
    if settings:
        listed = ", ".join(f"distiller.{k}={v}" for k, v in settings.items())
        advice += f" or the method's settings ({listed})"
    return f"{advice}, or check the inputs"


def check_writable(key: str, path: Any, what: str) -> None:
    """Refuse a folder this run could not create or write into: now, not after the data was read or the
    model trained. A folder still to be created counts by its nearest existing ancestor."""
    target = Path(str(path)).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise invalid(key, str(target), f"{what} cannot be created there ({problem}): pick a writable folder")


def _distiller_choice(cfg: DictConfig) -> str:
    """``distiller=<option>`` as the user chose it, else the class the config builds."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return f"distiller={HydraConfig.get().runtime.choices['distiller']}"
    except Exception:  # composed outside a Hydra run (tests, notebooks): no choice recorded
        return f"distiller._target_={cfg.distiller._target_}"


def _check_global_batch(key: str, batch_size: int, world: int, what: str) -> None:
    if batch_size % world:
        raise invalid(key, batch_size, f"{what} over this run's {world} processes: use a multiple of {world}")


def _teacher_plan(cfg: DictConfig, world: int, sync_bn: bool, dataset: Any) -> TeacherPlan:
    with isolated_torch_rng(cfg.seed):
        model = build_teacher(cfg)
    source = teacher_cache.locate(cfg)
    if not source.needs_training:
        fingerprint = dataset.fingerprint() if dataset is not None else None
        return TeacherPlan(model, source, teacher_cache.load_into(model, source, cfg, fingerprint), None)
    check_writable("teacher.cache_dir", source.path.parent, "the cache of the teacher this run trains")
    loop = build(cfg.teacher.recipe, "teacher.recipe")
    if loop.epochs == 0 and not cfg.teacher.model.get("weights"):
        raise invalid(
            "teacher.recipe.epochs",
            0,
            "the teacher would be cached untrained (random weights, chance accuracy) and distilled from: "
            "train it (teacher.recipe.epochs >= 1), give a trained one (teacher.checkpoint=/path/"
            "teacher.pt), or use pretrained weights as they are (teacher=timm teacher.model.weights="
            "/path/file.safetensors)",
        )
    _check_schedule_floor(cfg, "teacher.sched")
    _check_global_batch(
        "teacher.recipe.batch_size",
        loop.batch_size,
        world,
        "the teacher trains on all processes of this run, with this global batch split",
    )
    if sync_bn:
        convert_sync_batch_norm(model)
    optimizer = build(cfg.teacher.optim, "teacher.optim", modules=[model])
    scheduler = build(cfg.teacher.sched, "teacher.sched", optimizer=optimizer)
    advice = _nonfinite_advice(cfg, "teacher.optim", method=False)
    return TeacherPlan(model, source, None, TeacherTraining(loop, optimizer, scheduler, advice))


def _student_plan(
    cfg: DictConfig,
    student: nn.Module,
    teacher: TeacherPlan | None,
    dataset: Any,
    settings: TrainerSettings,
    data: bool,
) -> StudentPlan:
    with isolated_torch_rng(cfg.seed):  # any module a method adds (a projector) starts from the seed
        distiller = build(
            cfg.distiller, "distiller", student=student, teacher=teacher.model if teacher else None
        )
    distiller.seed_noise(cfg.seed)
    # the benchmark's synthetic batch caches only when asked to (it cannot tell augmentation)
    setting = settings.cache_teacher_logits if data else settings.cache_teacher_logits is True
    cache_teacher_logits = cached_logits.resolve(setting, dataset, distiller)
    optimizer = build(cfg.optim, "optim", modules=distiller.learnable_modules())
    scheduler = build(cfg.sched, "sched", optimizer=optimizer)
    advice = _nonfinite_advice(cfg, "optim", method=True)
    return StudentPlan(student, distiller, optimizer, scheduler, cache_teacher_logits, advice)
