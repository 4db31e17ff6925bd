"""Training the ANN teacher once, into the cache: cross-entropy through the shared training loop.

Parallel jobs that need the same teacher wait on a file lock, and the later ones reuse the cached
file. Data-parallel, all ranks train it together, hold the same state after every epoch (rank 0's,
BatchNorm statistics included) and rank 0 writes it to the cache. An interrupted teacher
training (timeout, preemption) continues from ``<cache file>.partial/last.pt`` on the next start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from omegaconf import DictConfig
from torch import nn

from seal_exp.data import DataSplits
from seal_exp.objective import Objective
from seal_exp.plan import Plan
from seal_exp.run import checkpoint
from seal_exp.run.distributed import Distributed
from seal_exp.seeding import seed_rank
from seal_exp.teacher import cache
from seal_exp.training.evaluate import evaluate
from seal_exp.training.loop import Fit, fit

log = logging.getLogger(__name__)


class Supervised(Objective):
    """Cross-entropy training of an ANN, as a training-loop objective."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}


@dataclass
class TeacherStage:
    """The teacher's part of one run: obtain it (from the cache, a checkpoint, or trained into the cache),
    freeze it, and report its test accuracy."""

    cfg: DictConfig
    plan: Plan
    data: DataSplits
    data_fingerprint: str | None  # the data's content (seal_exp.data.fingerprint), recorded with the teacher
    val_loader: Any
    test_loader: Any
    should_stop: Callable[[], bool]
    dist: Distributed

    def obtain(self) -> dict[str, Any]:
        """The teacher ready to distil from; its lines of the run summary."""
        plan, teacher, dist = self.plan, self.plan.teacher, self.dist
        teacher.model.to(plan.device)
        if teacher.training is not None:
            # every rank now holds the state written to the cache (the loop shares rank 0's after every
            # epoch), so this run goes on exactly as one that finds the teacher cached
            teacher.record = self.train_into_cache()
        else:  # checked against the data again: an event dataset's fingerprint is known once it is built
            cache.check_data(teacher.record, teacher.source, self.data_fingerprint)
        # measured on this run's test split (whatever split it was trained with) and as this run measures
        # (trainer.limit_eval_batches, not the recipe's): a teacher just trained and the same teacher from
        # the cache report the same accuracy
        limit = plan.settings.limit_eval_batches
        test_acc = evaluate(teacher.model, self.test_loader, plan.device, limit, dist).acc
        teacher.model.requires_grad_(False)  # frozen from here on (and left out of DDP's gradient sync)
        if teacher.record.get("data_split_id") not in (None, self.data.split_id):
            log.warning(
                "the teacher was trained on a different split (%s, this run: %s): its test accuracy "
                "may be optimistic",
                teacher.record["data_split_id"],
                self.data.split_id,
            )
        if not plan.tracker.has_metric("teacher/test/acc"):  # once per run, over any number of restarts
            plan.tracker.log_metrics({"teacher/test/acc": test_acc}, step=0)
        origin = "trained" if teacher.training is not None else teacher.source.origin
        log.info("teacher (%s) test accuracy %.2f%%", origin, test_acc)
        checkpoint_path = str(teacher.source.path)
        return {
            "teacher_test_acc": test_acc,
            "teacher_val_acc": teacher.record.get("val_acc"),
            "teacher_checkpoint": checkpoint_path,
            "teacher_origin": origin,
        }

    def train_into_cache(self) -> dict[str, Any]:
        """Train the teacher into the cache and return its record, unless a parallel job finished it first.

        Data-parallel: all ranks train it together; rank 0 holds the lock and writes the cache.
        """
        teacher, dist = self.plan.teacher, self.dist
        path = teacher.source.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock") if dist.is_main else contextlib.nullcontext():
            if dist.share(path.is_file()):
                log.info("another job trained this teacher meanwhile; reusing %s", path)
                return cache.load_into(teacher.model, teacher.source, self.cfg, self.data_fingerprint)
            val_acc, test_acc, best_epoch = self._fit()
            record = None
            if dist.is_main:
                record = cache.save(
                    teacher.model,
                    path,
                    self.cfg,
                    val_acc=val_acc,
                    test_acc=test_acc,
                    best_epoch=best_epoch,
                    data_split_id=self.data.split_id,
                    data_fingerprint=self.data_fingerprint,
                )
            return dist.share(record)  # the others wait here until the cache file is written

    def _fit(self) -> tuple[float, float, int]:
        """Validation and test accuracy of the teacher to cache, and its epoch (0: the initial weights)."""
        plan, dist, data = self.plan, self.dist, self.data
        teacher, training = plan.teacher, plan.teacher.training
        loop = training.loop
        if loop.epochs == 0:  # pretrained weights (e.g. a timm file) used as they are
            log.info("teacher.recipe.epochs=0: evaluating the initial weights and caching them untrained")
            val = evaluate(teacher.model, self.val_loader, plan.device, loop.limit_eval_batches, dist)
            test = evaluate(teacher.model, self.test_loader, plan.device, loop.limit_eval_batches, dist)
            return val.acc, test.acc, 0
        log.info(
            "training the %s teacher for %d epochs (cached afterwards at %s)",
            self.cfg.teacher.arch,
            loop.epochs,
            teacher.source.path,
        )
        seed_rank(plan.seed, dist.rank)
        part = data.train if data.teacher_train is None else data.teacher_train
        # an interrupted teacher training continues from here; the folder goes once the teacher is cached
        partial_dir = teacher.source.path.with_suffix(".partial")
        last = partial_dir / "last.pt"
        resume = checkpoint.load(last) if dist.share(last.is_file()) else None
        job = Fit(
            name="teacher",
            objective=Supervised(teacher.model),
            model=teacher.model,
            optimizer=training.optimizer,
            scheduler=training.scheduler,
            train_loader=plan.loader(data, part, loop.batch_size, shuffle=True, dist=dist),
            val_loader=self.val_loader,
            test_loader=self.test_loader,
            settings=loop,
            device=plan.device,
            sink=lambda metrics, step: plan.tracker.log_metrics(
                {f"teacher/{k}": v for k, v in metrics.items()}, step
            ),
            progress=plan.settings.progress and dist.is_main,
            progress_every=plan.settings.progress_every,
            checkpoint_dir=partial_dir,
            should_stop=self.should_stop,
            dist=dist,
            on_nonfinite=training.on_nonfinite,
        )
        result = fit(job, resume)
        if dist.is_main:
            shutil.rmtree(partial_dir, ignore_errors=True)
        return result.best_val_acc, result.test_best.acc, result.best_epoch
