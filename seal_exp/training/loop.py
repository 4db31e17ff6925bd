"""``fit``: train a model through its objective for some epochs and select the best validation epoch.

Shared by the ANN teacher and the spiking student; it knows nothing about any method. A fit is
:func:`restore` (from a ``last.pt``), :func:`run_epoch` per epoch, then :func:`select_and_test`; its
state between them is one :class:`~seal_exp.run.resume.Progress`, which is what ``last.pt`` carries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from seal_exp.objective import Objective
from seal_exp.run import checkpoint
from seal_exp.run.distributed import SINGLE, Distributed
from seal_exp.run.preemption import Preempted
from seal_exp.run.resume import Progress, last_checkpoint, rank_rng
from seal_exp.training.epoch import NONFINITE_ADVICE, EpochTotals, train_one_epoch
from seal_exp.training.evaluate import Accuracy, evaluate
from seal_exp.training.settings import LoopSettings

log = logging.getLogger(__name__)

MetricSink = Callable[[dict[str, float], int], None]


def _never() -> bool:
    return False


@dataclass
class Fit:
    """One model's training: what it trains, on which data, for how long, where it reports and saves.

    ``checkpoint_dir``: ``last.pt`` after every epoch (and every ``checkpoint_every_steps`` steps, and
    at the step boundary where ``should_stop()`` first holds, after which :class:`Preempted` is
    raised) and ``best.pt`` whenever validation improves. ``checkpoint_extra()``: what the job adds to
    every ``last.pt``. Data-parallel (``dist``): the objective runs inside DistributedDataParallel on
    each rank's shard; only rank 0 writes checkpoints, decisions to save or stop are taken together.
    ``on_nonfinite``: what to change when the loss becomes non-finite, in the run's own keys (the run
    then fails with one line, :class:`~seal_exp.training.epoch.NonFiniteLoss`).
    """

    name: str
    objective: Objective
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    settings: LoopSettings
    device: torch.device
    sink: MetricSink
    progress: bool = True
    progress_every: int = 20
    test_every_epoch: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_every_steps: int | None = None
    should_stop: Callable[[], bool] = field(default=_never)
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None
    best_extra: Callable[[], dict[str, Any]] | None = None  # what the job adds to best.pt (its architecture)
    dist: Distributed = field(default_factory=lambda: SINGLE)
    on_nonfinite: str = NONFINITE_ADVICE

    @property
    def last_path(self) -> Path | None:
        return self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    best_test_acc_over_epochs: float | None
    test_best: Accuracy
    test_last: Accuracy
    history: list[dict[str, float]] = field(default_factory=list)


def fit(job: Fit, resume: dict[str, Any] | None = None) -> FitResult:
    """Train, then leave ``job.model`` holding the selected epoch's weights; test the last and the selected.

    ``resume`` (a loaded ``last.pt``) continues a fit exactly where it stopped.
    """
    progress, partial = restore(job, resume)
    progress.attempt_first_step = progress.global_step
    # every rank computes its own gradients; DDP averages them (parameters start equal: same seed and
    # same checkpoint, and DDP broadcasts rank 0's anyway)
    forward = (
        DistributedDataParallel(job.objective, device_ids=[job.device] if job.device.type == "cuda" else None)
        if job.dist.enabled
        else job.objective
    )
    for epoch in range(progress.epoch + 1, job.settings.epochs + 1):
        run_epoch(job, forward, progress, epoch, partial)
        partial = None
    return select_and_test(job, progress)


def steps_per_epoch(job: Fit) -> int:
    """Optimiser steps in one epoch: the loader's batches, or ``limit_train_batches`` of them."""
    batches = len(job.train_loader)
    limit = job.settings.limit_train_batches
    return batches if limit is None else min(batches, limit)


def restore(job: Fit, resume: dict[str, Any] | None) -> tuple[Progress, EpochTotals | None]:
    """Put a ``last.pt`` back: weights, objective, optimiser, schedule, sampler and RNG states."""
    if resume is None:
        return Progress(), None
    job.model.load_state_dict(resume["model"])
    if resume.get("objective") is not None:
        job.objective.load_resumable_state(resume["objective"])
    job.optimizer.load_state_dict(resume["optimizer"])
    job.scheduler.load_state_dict(resume["scheduler"])
    progress = Progress.of(resume)
    sampler_rng = job.train_loader.generator  # draws each epoch's order (and worker seeds)
    if sampler_rng is not None and resume.get("sampler_rng") is not None:
        sampler_rng.set_state(resume["sampler_rng"])
    rng, partial = rank_rng(resume, job.dist), None
    if resume.get("partial_epoch") is not None:
        partial = EpochTotals.from_state(
            resume["partial_epoch"], job.device, rng, holds_sums=job.dist.is_main
        )
    else:
        checkpoint.restore_rng_states(rng)
    steps = f" + {partial.steps} steps" if partial else ""
    log.info("%s: resuming after epoch %d%s (step %d)", job.name, progress.epoch, steps, progress.global_step)
    return progress, partial


def run_epoch(
    job: Fit, forward: nn.Module, progress: Progress, epoch: int, partial: EpochTotals | None
) -> None:
    """Train one epoch (or its rest), step the schedule, validate (and test), log, checkpoint."""
    start = time.perf_counter()
    job.objective.start_epoch(epoch, job.settings.epochs)
    lr = job.optimizer.param_groups[0]["lr"]
    sampler_rng = job.train_loader.generator
    epoch_sampler_rng = sampler_rng.get_state() if sampler_rng is not None else None

    def after_step(step: int, totals: EpochTotals) -> None:
        progress.global_step += 1
        stop = job.dist.any(job.should_stop())  # any rank signalled: all stop
        every = job.checkpoint_every_steps
        due = bool(every) and progress.global_step % every == 0
        if job.last_path is not None and (stop or due):
            save_last(job, progress, totals, epoch_sampler_rng)
        if stop:
            job.dist.barrier()  # no rank leaves before rank 0 has written the checkpoint
            where = (
                f"checkpoint {job.last_path}" if job.last_path is not None else "no checkpoint for this loop"
            )
            raise Preempted(
                f"{job.name}: stopped after epoch {epoch - 1} + {step + 1} steps; {where}",
                progress.global_step - progress.attempt_first_step,
                steps_per_epoch(job) * job.settings.epochs - progress.global_step,
            )

    train_stats = train_one_epoch(
        forward,
        job.train_loader,
        job.optimizer,
        job.device,
        limit=job.settings.limit_train_batches,
        desc=f"{job.name} {epoch}/{job.settings.epochs}",
        progress=job.progress,
        progress_every=job.progress_every,
        last_good=job.last_path,
        epoch=epoch,
        partial=partial,
        after_step=after_step,
        dist=job.dist,
        on_nonfinite=job.on_nonfinite,
    )
    job.scheduler.step()
    # one state on every rank (rank 0's BatchNorm statistics): the one validated, kept as the best, saved
    job.dist.broadcast_state(job.objective)
    metrics, improved = _validate(job, progress, epoch, train_stats, lr)
    metrics["epoch_s"] = time.perf_counter() - start
    job.sink(metrics, epoch)
    progress.history.append({"epoch": epoch, **metrics})
    progress.epoch = epoch
    _log_epoch(job, epoch, train_stats, metrics, improved)
    if job.checkpoint_dir is not None:
        if improved and job.dist.is_main:
            best = {"epoch": epoch, "val_acc": progress.best_val_acc, "model": progress.best_model}
            best |= job.best_extra() if job.best_extra is not None else {}
            checkpoint.atomic_save(best, job.checkpoint_dir / "best.pt")
        save_last(job, progress, None, sampler_rng.get_state() if sampler_rng is not None else None)
    if job.dist.any(job.should_stop()) and epoch < job.settings.epochs:
        job.dist.barrier()
        raise Preempted(
            f"{job.name}: stopped after epoch {epoch}; checkpoint {job.last_path}",
            progress.global_step - progress.attempt_first_step,
            steps_per_epoch(job) * job.settings.epochs - progress.global_step,
        )


def _validate(
    job: Fit, progress: Progress, epoch: int, train_stats: dict[str, float], lr: float
) -> tuple[dict[str, float], bool]:
    """The epoch's metrics; keeps the weights (on the CPU) when validation accuracy improves."""
    limit = job.settings.limit_eval_batches
    val = evaluate(job.model, job.val_loader, job.device, limit, job.dist, _says(job, f"{epoch} validation"))
    metrics = {f"train/{k}": v for k, v in train_stats.items()} | val.as_metrics("val") | {"lr": lr}
    if job.test_every_epoch:
        test_acc = evaluate(
            job.model, job.test_loader, job.device, limit, job.dist, _says(job, f"{epoch} test")
        ).acc
        metrics["test/acc"] = test_acc
        best = progress.best_test_acc
        progress.best_test_acc = test_acc if best is None else max(best, test_acc)
    improved = val.acc > progress.best_val_acc
    if improved:
        progress.best_val_acc, progress.best_epoch = val.acc, epoch
        progress.best_model = {k: v.detach().to("cpu", copy=True) for k, v in job.model.state_dict().items()}
    return metrics, improved


def _log_epoch(
    job: Fit, epoch: int, train_stats: dict[str, float], metrics: dict[str, float], improved: bool
) -> None:
    terms = "  ".join(f"{k} {v:.4f}" for k, v in train_stats.items() if k not in ("loss", "acc"))
    per_t = [v for k, v in metrics.items() if k.startswith("val/acc_t")]
    per_t_text = f" [per t: {' '.join(f'{a:.1f}' for a in per_t)}]" if per_t else ""
    log.info(
        "%s epoch %d/%d  loss %.4f (%s)  train %.2f%%  val %.2f%%%s  lr %.4g  %.1fs%s",
        job.name,
        epoch,
        job.settings.epochs,
        train_stats["loss"],
        terms,
        train_stats["acc"],
        metrics["val/acc"],
        per_t_text,
        metrics["lr"],
        metrics["epoch_s"],
        "  *best*" if improved else "",
    )


def save_last(job: Fit, progress: Progress, totals: EpochTotals | None, sampler_rng: Any) -> None:
    """Write ``last.pt`` atomically (collective: every rank calls it at the same boundary; rank 0 writes)."""
    assert job.last_path is not None
    dist = job.dist
    rng_ranks = dist.gather(checkpoint.rng_states()) if dist.enabled else None
    totals = totals.reduced(dist) if totals is not None else None
    if not dist.is_main:
        return
    state = last_checkpoint(
        progress,
        name=job.name,
        model=job.model,
        objective=job.objective,
        optimizer=job.optimizer,
        scheduler=job.scheduler,
        partial_epoch=totals.state() if totals is not None else None,
        sampler_rng=sampler_rng,
        rng_ranks=rng_ranks,
        world_size=dist.world_size,
        finished=progress.epoch == job.settings.epochs and totals is None,
    )
    checkpoint.atomic_save(state | (job.checkpoint_extra() if job.checkpoint_extra else {}), job.last_path)


def _says(job: Fit, what: str) -> str | None:
    """The name of an evaluation pass in progress lines; None when the job shows no progress."""
    return f"{job.name} {what}" if job.progress else None


def select_and_test(job: Fit, progress: Progress) -> FitResult:
    """Test the last epoch's model, then load the selected epoch's weights and test them."""
    limit = job.settings.limit_eval_batches
    test_last = evaluate(
        job.model, job.test_loader, job.device, limit, job.dist, _says(job, "test, last epoch")
    )
    assert progress.best_model is not None
    job.model.load_state_dict(progress.best_model)
    test_best = evaluate(
        job.model, job.test_loader, job.device, limit, job.dist, _says(job, "test, selected epoch")
    )
    return FitResult(
        progress.best_val_acc,
        progress.best_epoch,
        progress.best_test_acc,
        test_best,
        test_last,
        progress.history,
    )
