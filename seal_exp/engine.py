"""The training loop, shared by the ANN teacher and the spiking student.

It knows nothing about any distillation method: the objective returns ``(logits, {term: loss})``,
the loop minimises the sum and logs every term. Spiking state is reset after every optimiser step
and every evaluation batch. Metrics are accumulated on the device and read once per epoch (plus a
progress-bar refresh every few steps for the human watching).
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
from tqdm.auto import tqdm

from seal_exp import checkpoint
from seal_exp.config import require
from seal_exp.distributed import SINGLE, Distributed
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.preemption import Preempted
from seal_exp.speed import COMPILE_TARGETS, PRECISIONS

log = logging.getLogger(__name__)

Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
MetricSink = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class LoopSettings:
    """How long a model trains and on how much data: the student's trainer and the teacher's recipe."""

    epochs: int
    batch_size: int
    eval_batch_size: int = 256
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.epochs, int) and self.epochs >= 0,
            "epochs",
            self.epochs,
            "use an integer >= 1 (0 only for a teacher whose pretrained weights are used as they are)",
        )
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        for name in ("limit_train_batches", "limit_eval_batches"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "use null for no limit, or a count >= 1")


@dataclass(frozen=True)
class TrainerSettings(LoopSettings):
    """The student's loop plus where and how it runs."""

    device: str = "auto"
    num_workers: int | str = "auto"
    pin_memory: bool | str = "auto"
    persistent_workers: bool = True
    test_every_epoch: bool = True
    progress: bool = True
    progress_every: int = 20
    checkpoint_every_steps: int | None = None
    sync_batchnorm: bool = False
    dist_backend: str = "auto"
    dist_timeout_min: float = 30.0
    precision: str = "fp32"
    channels_last: bool = True
    compile: str = "none"
    compile_mode: str = "default"
    cache_teacher_logits: bool | str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.cache_teacher_logits in ("auto", True, False),
            "cache_teacher_logits",
            self.cache_teacher_logits,
            "use auto (when augmentation is off and the distiller reads only the teacher's logits), "
            "true or false",
        )
        require(
            self.dist_backend in ("auto", "nccl", "gloo"),
            "dist_backend",
            self.dist_backend,
            "use auto (nccl on GPUs, gloo on CPUs), nccl or gloo",
        )
        require(self.dist_timeout_min > 0, "dist_timeout_min", self.dist_timeout_min, "must be > 0 minutes")
        require(
            self.precision in PRECISIONS,
            "precision",
            self.precision,
            f"use one of {', '.join(PRECISIONS)} (bf16: autocast with float32 losses and membranes)",
        )
        require(
            self.compile in COMPILE_TARGETS,
            "compile",
            self.compile,
            f"use one of {', '.join(COMPILE_TARGETS)}",
        )
        require(
            self.compile_mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
            "compile_mode",
            self.compile_mode,
            "use a torch.compile mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs",
        )
        require(
            self.checkpoint_every_steps is None
            or (isinstance(self.checkpoint_every_steps, int) and self.checkpoint_every_steps >= 1),
            "checkpoint_every_steps",
            self.checkpoint_every_steps,
            "use null (last.pt at every epoch's end only) or a step count >= 1",
        )
        require(self.epochs >= 1, "epochs", self.epochs, "train the student for at least one epoch")
        require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "use auto, cpu, cuda or cuda:N",
        )
        require(
            self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0),
            "num_workers",
            self.num_workers,
            "use auto (0 for in-memory data, else up to 8) or an integer >= 0",
        )
        require(
            self.pin_memory == "auto" or isinstance(self.pin_memory, bool),
            "pin_memory",
            self.pin_memory,
            "use auto (pinned when CUDA is present), true or false",
        )
        require(self.progress_every >= 1, "progress_every", self.progress_every, "must be >= 1")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"trainer.device={self.device} but CUDA is not available; use trainer.device=auto"
            )
        return torch.device(self.device)


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy in percent: of the time-mean logits, of each timestep, and of each prefix mean."""

    acc: float
    per_timestep: list[float]
    prefix_mean: list[float]

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/acc": self.acc}
        if len(self.per_timestep) > 1:
            out |= {f"{prefix}/acc_t{t + 1}": a for t, a in enumerate(self.per_timestep)}
            out |= {f"{prefix}/acc_first{t + 1}": a for t, a in enumerate(self.prefix_mean)}
        return out


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    best_test_acc_over_epochs: float | None
    test_best: Accuracy
    test_last: Accuracy
    history: list[dict[str, float]] = field(default_factory=list)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the terms and the last good checkpoint."""


def _limited(n_batches: int, limit: int | None) -> int:
    return n_batches if limit is None else min(n_batches, limit)


_NO_STEP = 2**62  # "no non-finite step" when ranks agree on the first one (their minimum)


@dataclass
class EpochTotals:
    """What one training epoch has summed so far, on the device (read once, at the epoch's end)."""

    sums: dict[str, torch.Tensor]
    correct: torch.Tensor
    bad_step: torch.Tensor
    seen: int = 0
    steps: int = 0
    rng: dict[str, Any] | None = None  # a resumed epoch: the RNG states of the step it stopped after

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        return cls({}, torch.zeros((), device=device), torch.full((), -1, device=device, dtype=torch.long))

    @torch.no_grad()
    def add(
        self,
        terms: dict[str, torch.Tensor],
        logits: torch.Tensor,
        y: torch.Tensor,
        loss: torch.Tensor,
        step: int,
    ) -> None:
        n = len(y)
        self.seen += n
        self.steps = step + 1
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach() * n
        if logits.dim() == 3:
            logits = logits.mean(0)
        self.correct += (logits.argmax(-1) == y).sum()
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(loss), step, self.bad_step)

    def reduced(self, dist: Distributed) -> EpochTotals:
        """The totals of every rank together (a copy; this rank's own stay as they are)."""
        if not dist.enabled:
            return self
        names = sorted(self.sums)
        packed = torch.stack(
            [self.sums[k].float() for k in names]
            + [self.correct.float(), torch.tensor(float(self.seen), device=self.correct.device)]
        ).to(self.correct.device)
        dist.sum_(packed)
        bad = int(self.bad_step.item())
        first_bad = dist.min_int(bad if bad >= 0 else _NO_STEP)
        return EpochTotals(
            {k: packed[i] for i, k in enumerate(names)},
            packed[-2].round().long(),
            torch.tensor(first_bad if first_bad < _NO_STEP else -1, device=self.correct.device),
            int(packed[-1].round().item()),
            self.steps,
        )

    def state(self) -> dict[str, Any]:
        return {
            "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
            "correct": self.correct.cpu(),
            "bad_step": self.bad_step.cpu(),
            "seen": self.seen,
            "steps": self.steps,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device, rng: dict[str, Any], *, holds_sums: bool = True
    ) -> EpochTotals:
        """``holds_sums=False`` (ranks other than 0): the saved sums are everyone's, held by rank 0."""
        if not holds_sums:
            empty = cls.zeros(device)
            empty.sums = {k: torch.zeros_like(v, device=device) for k, v in state["sums"].items()}
            empty.steps, empty.rng = state["steps"], rng
            return empty
        return cls(
            {k: v.to(device) for k, v in state["sums"].items()},
            state["correct"].to(device),
            state["bad_step"].to(device),
            state["seen"],
            state["steps"],
            rng,
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    limit: int | None = None,
    dist: Distributed = SINGLE,
) -> Accuracy:
    """Accuracy of a spiking ``[T,B,K]`` or ANN ``[B,K]`` model; membranes are reset after every batch.

    Data-parallel: each rank evaluates its shard of the split and the counts are added up.
    """
    model.eval()
    correct = per_t = prefix = None
    seen = 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        reset_spiking_state(model)
        if logits.dim() == 2:
            logits = logits.unsqueeze(0)
        steps = torch.arange(1, logits.shape[0] + 1, device=device).view(-1, 1, 1)
        hits_mean = (logits.mean(0).argmax(-1) == y).sum()
        hits_t = (logits.argmax(-1) == y).sum(1)
        hits_prefix = ((logits.cumsum(0) / steps).argmax(-1) == y).sum(1)
        if correct is None:
            correct, per_t, prefix = hits_mean, hits_t, hits_prefix
        else:
            correct, per_t, prefix = correct + hits_mean, per_t + hits_t, prefix + hits_prefix
        seen += len(y)
    if dist.enabled:  # once per evaluation: this rank's counts, added to everyone's
        mine = None if correct is None else (correct.item(), per_t.tolist(), prefix.tolist(), seen)
        counts = [c for c in dist.gather(mine) if c is not None]
        if counts:
            correct = sum(c[0] for c in counts)
            per_t = torch.tensor([c[1] for c in counts]).sum(0)
            prefix = torch.tensor([c[2] for c in counts]).sum(0)
            seen = sum(c[3] for c in counts)
    if correct is None:
        raise RuntimeError("evaluation saw no batches: the split is empty")

    def percent(hits: float) -> float:
        return round(100.0 * hits / seen, 4)

    return Accuracy(
        percent(int(correct)), [percent(v) for v in per_t.tolist()], [percent(v) for v in prefix.tolist()]
    )


class LaggedReadout:
    """Scalars read off the device without stalling it, for the progress bar and the non-finite check.

    On CUDA each request starts an asynchronous copy to pinned host memory and returns the values of
    the previous request once its copy has landed (None before): the GPU is never waited for. On
    other devices reading is not a synchronisation, so the values come back at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host: torch.Tensor | None = None
        self.copied: Any = None  # the CUDA event recorded after the pending copy

    def read(self, *values: torch.Tensor) -> list[float] | None:
        packed = torch.stack([v.detach().float() for v in values])
        if not self.cuda:
            return packed.tolist()
        landed = None
        if self.copied is not None and self.copied.query():
            landed, self.copied = self.host.tolist(), None
        if self.copied is None:  # the buffer is free: start the next copy
            if self.host is None or len(self.host) != len(values):
                self.host = torch.empty(len(values), pin_memory=True)
            self.host.copy_(packed, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        return landed


def train_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *extra: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimiser step on a batch already on the device: what training repeats and the benchmark times.

    ``extra``: the batch's further fields (cached teacher logits), passed on to the objective.
    Returns the logits, the loss terms and their sum (all still on the device: nothing is read).
    """
    logits, terms = objective(x, y, *extra)
    loss = torch.stack(list(terms.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    reset_spiking_state(objective)
    return logits, terms, loss


def train_one_epoch(
    objective: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    limit: int | None,
    desc: str,
    progress: bool,
    progress_every: int,
    last_good: Path | None,
    epoch: int,
    partial: EpochTotals | None = None,
    after_step: Callable[[int, EpochTotals], None] | None = None,
    dist: Distributed = SINGLE,
) -> dict[str, float]:
    """One pass over ``loader``: the sample-weighted mean of every loss term, and the train accuracy.

    ``partial`` continues an epoch interrupted after ``partial.steps`` optimiser steps: those batches
    are drawn again, so the sampler and any loader workers are where they were, but not trained on.
    ``after_step(step, totals)`` runs at every step boundary (checkpoints, the pre-timeout signal).
    Data-parallel (``objective`` wrapped in DDP): the totals are summed over the ranks at the end,
    and the ranks agree on the first non-finite step whenever one of them looks.
    """
    objective.train()
    totals = partial or EpochTotals.zeros(device)
    batches = iter(loader)
    for _ in range(totals.steps):
        next(batches)
    if totals.rng is not None:  # the global RNG states of the step boundary it stopped at
        checkpoint.restore_rng_states(totals.rng)
        totals.rng = None
    bar = tqdm(
        batches,
        desc=desc,
        total=_limited(len(loader), limit),
        initial=totals.steps,
        leave=False,
        disable=None if progress else True,
        dynamic_ncols=True,
    )
    terms: dict[str, torch.Tensor] = {}
    readout = LaggedReadout(device)
    for step, (x, y, *extra) in enumerate(bar, start=totals.steps):
        if limit is not None and step >= limit:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        extra = [e.to(device, non_blocking=True) for e in extra]
        logits, terms, loss = train_step(objective, optimizer, x, y, *extra)
        totals.add(terms, logits, y, loss, step)
        if step % progress_every == 0:
            values = readout.read(totals.bad_step, loss)
            first_bad, current = (int(values[0]), values[1]) if values is not None else (-1, None)
            if dist.enabled:
                agreed = dist.min_int(first_bad if first_bad >= 0 else _NO_STEP)
                first_bad = agreed if agreed < _NO_STEP else -1
            _stop_if_nonfinite(first_bad, terms, epoch, last_good)
            if current is not None:
                bar.set_postfix(loss=f"{current:.4f}")
        if after_step is not None:
            after_step(step, totals)
    bar.close()
    totals = totals.reduced(dist)
    _stop_if_nonfinite(totals.bad_step.item(), terms, epoch, last_good)
    stats = {name: (total / totals.seen).item() for name, total in totals.sums.items()}
    stats["loss"] = sum(stats.values())
    stats["acc"] = totals.correct.item() * 100.0 / totals.seen
    return stats


def _stop_if_nonfinite(step: int, terms: dict[str, torch.Tensor], epoch: int, last_good: Path | None) -> None:
    if step < 0:
        return
    values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    where = f"last good checkpoint: {last_good}" if last_good and last_good.exists() else "no checkpoint yet"
    raise NonFiniteLoss(
        f"loss became non-finite at epoch {epoch}, step {step} (terms now: {values}); {where}. "
        "Lower the learning rate (optim.lr) or check the inputs."
    )


LAST_FORMAT = "seal-exp/last-v1"


def _rank_rng(resume: dict[str, Any], dist: Distributed) -> dict[str, Any]:
    """This rank's RNG states from ``last.pt`` (rank 0's for a checkpoint of another world size)."""
    ranks = resume.get("rng_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    if dist.world_size != resume.get("world_size", 1):
        log.warning(
            "last.pt was written by %d process(es), this run has %d: weights, optimiser and schedule "
            "continue exactly, random draws (data order within ranks, augmentation) do not",
            resume.get("world_size", 1),
            dist.world_size,
        )
    return resume["rng"]


def fit(
    *,
    objective: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DataLoader,
    val_loader: DataLoader,
    test_loader: DataLoader,
    settings: LoopSettings,
    device: torch.device,
    progress: bool,
    progress_every: int,
    sink: MetricSink,
    name: str,
    test_every_epoch: bool,
    checkpoint_dir: Path | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint_every_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    dist: Distributed = SINGLE,
) -> FitResult:
    """Train ``model`` through ``objective`` and select the epoch with the best validation accuracy.

    Each epoch: train, step the scheduler, validate (and test, for the papers' best-test figure),
    log to ``sink`` and, with ``checkpoint_dir``, write ``last.pt`` atomically (plus ``best.pt`` when
    validation improves); ``last.pt`` is also written every ``checkpoint_every_steps`` optimiser
    steps, and at the step boundary where ``should_stop()`` first holds, after which
    :class:`~seal_exp.preemption.Preempted` is raised. ``resume`` (a loaded ``last.pt``) continues a
    fit exactly where it stopped: weights, optimiser, schedule, selection, history, the sampler's and
    every global RNG state. At the end ``model`` holds the selected weights; both the last and the
    selected model are evaluated on the test split.

    Data-parallel (``dist``): the objective runs inside DistributedDataParallel on each rank's shard
    of every batch; only rank 0 writes checkpoints (with every rank's RNG states), while decisions
    to checkpoint or stop are taken together.
    """
    best_val, best_epoch, best_state = -1.0, 0, None
    best_test: float | None = None
    history: list[dict[str, float]] = []
    done, global_step, partial = 0, 0, None
    last_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    start_epoch = getattr(objective, "start_epoch", None)  # distillers with a schedule over training
    sampler_rng = getattr(train_loader, "generator", None)  # draws each epoch's order (and worker seeds)
    if resume is not None:
        model.load_state_dict(resume["model"])
        if resume.get("objective") is not None:
            objective.load_resumable_state(resume["objective"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        done, global_step = int(resume["epoch"]), int(resume["global_step"])
        best_val, best_epoch, best_test = (
            resume["best_val_acc"],
            resume["best_epoch"],
            resume["best_test_acc"],
        )
        best_state, history = resume["best_model"], list(resume["history"])
        if sampler_rng is not None and resume.get("sampler_rng") is not None:
            sampler_rng.set_state(resume["sampler_rng"])
        rng = _rank_rng(resume, dist)
        if resume.get("partial_epoch") is not None:
            partial = EpochTotals.from_state(resume["partial_epoch"], device, rng, holds_sums=dist.is_main)
        else:
            checkpoint.restore_rng_states(rng)
        log.info(
            "%s: resuming after epoch %d%s (step %d)",
            name,
            done,
            f" + {partial.steps} steps" if partial else "",
            global_step,
        )

    # every rank computes its own gradients; DDP averages them (parameters start equal: same seed and
    # same checkpoint, and DDP broadcasts rank 0's anyway)
    forward = (
        DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)
        if dist.enabled
        else objective
    )

    def save_last(epoch_done: int, totals: EpochTotals | None, epoch_sampler_rng: Any) -> None:
        # collective: every rank gets here at the same boundary; rank 0 writes
        assert last_path is not None
        rng_ranks = dist.gather(checkpoint.rng_states()) if dist.enabled else None
        totals = totals.reduced(dist) if totals is not None else None
        if not dist.is_main:
            return
        state = {
            "format": LAST_FORMAT,
            "name": name,
            "epoch": epoch_done,
            "global_step": global_step,
            "model": model.state_dict(),
            "objective": objective.resumable_state() if hasattr(objective, "resumable_state") else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_val_acc": best_val,
            "best_epoch": best_epoch,
            "best_test_acc": best_test,
            "best_model": best_state,
            "history": history,
            "partial_epoch": totals.state() if totals is not None else None,
            "sampler_rng": epoch_sampler_rng,
            "rng": checkpoint.rng_states(),
            "rng_ranks": rng_ranks,
            "world_size": dist.world_size,
            "finished": epoch_done == settings.epochs and totals is None,
        }
        checkpoint.atomic_save(state | (checkpoint_extra() if checkpoint_extra else {}), last_path)

    for epoch in range(done + 1, settings.epochs + 1):
        start = time.perf_counter()
        if start_epoch is not None:
            start_epoch(epoch, settings.epochs)
        lr = optimizer.param_groups[0]["lr"]
        epoch_sampler_rng = sampler_rng.get_state() if sampler_rng is not None else None

        def after_step(
            step: int, totals: EpochTotals, epoch: int = epoch, rng: Any = epoch_sampler_rng
        ) -> None:
            nonlocal global_step
            global_step += 1
            stop = dist.any(should_stop is not None and should_stop())  # any rank signalled: all stop
            due = bool(checkpoint_every_steps) and global_step % checkpoint_every_steps == 0
            if last_path is not None and (stop or due):
                save_last(epoch - 1, totals, rng)
            if stop:
                dist.barrier()  # no rank leaves before rank 0 has written the checkpoint
                where = f"checkpoint {last_path}" if last_path is not None else "no checkpoint for this loop"
                raise Preempted(f"{name}: stopped after epoch {epoch - 1} + {step + 1} steps; {where}")

        train_stats = train_one_epoch(
            forward,
            train_loader,
            optimizer,
            device,
            limit=settings.limit_train_batches,
            desc=f"{name} {epoch}/{settings.epochs}",
            progress=progress,
            progress_every=progress_every,
            last_good=last_path,
            epoch=epoch,
            partial=partial,
            after_step=after_step,
            dist=dist,
        )
        partial = None
        scheduler.step()
        val = evaluate(model, val_loader, device, settings.limit_eval_batches, dist)
        metrics = {f"train/{k}": v for k, v in train_stats.items()} | val.as_metrics("val") | {"lr": lr}
        if test_every_epoch:
            test_acc = evaluate(model, test_loader, device, settings.limit_eval_batches, dist).acc
            metrics["test/acc"] = test_acc
            best_test = test_acc if best_test is None else max(best_test, test_acc)
        improved = val.acc > best_val
        if improved:
            best_val, best_epoch = val.acc, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        metrics["epoch_s"] = time.perf_counter() - start
        sink(metrics, epoch)
        history.append({"epoch": epoch, **metrics})
        terms = "  ".join(f"{k} {v:.4f}" for k, v in train_stats.items() if k not in ("loss", "acc"))
        per_t = " ".join(f"{a:.1f}" for a in val.per_timestep) if len(val.per_timestep) > 1 else ""
        log.info(
            "%s epoch %d/%d  loss %.4f (%s)  train %.2f%%  val %.2f%%%s  lr %.4g  %.1fs%s",
            name,
            epoch,
            settings.epochs,
            train_stats["loss"],
            terms,
            train_stats["acc"],
            val.acc,
            f" [per t: {per_t}]" if per_t else "",
            lr,
            metrics["epoch_s"],
            "  *best*" if improved else "",
        )
        if checkpoint_dir is not None:
            if improved and dist.is_main:
                checkpoint.atomic_save(
                    {"epoch": epoch, "val_acc": val.acc, "model": best_state}, checkpoint_dir / "best.pt"
                )
            save_last(epoch, None, sampler_rng.get_state() if sampler_rng is not None else None)
        if dist.any(should_stop is not None and should_stop()) and epoch < settings.epochs:
            dist.barrier()
            raise Preempted(f"{name}: stopped after epoch {epoch}; checkpoint {last_path}")
    test_last = evaluate(model, test_loader, device, settings.limit_eval_batches, dist)
    assert best_state is not None
    model.load_state_dict(best_state)
    test_best = evaluate(model, test_loader, device, settings.limit_eval_batches, dist)
    return FitResult(best_val, best_epoch, best_test, test_best, test_last, history)
