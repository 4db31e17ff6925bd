"""One training epoch: optimiser steps, device-side totals read once per epoch, the non-finite check.

Spiking state is reset after every optimiser step. Metrics are accumulated on the device and read
once per epoch (plus a progress-bar refresh every few steps for the human watching).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from seal_exp.config import RunFailed
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.run import checkpoint
from seal_exp.run.distributed import SINGLE, Distributed
from seal_exp.training.progress_lines import ProgressLines


class NonFiniteLoss(RunFailed):
    """The loss became NaN or infinite; the message names the step, the terms, the last good checkpoint and
    the settings to change."""


NONFINITE_ADVICE = "lower the learning rate (optim.lr) or check the inputs"  # a loop told nothing better


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
    on_nonfinite: str = NONFINITE_ADVICE,
) -> dict[str, float]:
    """One pass over ``loader``: the sample-weighted mean of every loss term, and the train accuracy.

    ``partial`` continues an epoch interrupted after ``partial.steps`` optimiser steps: the sampler
    draws those batches again, so it (and any loader workers) end where they were; they are not
    trained on, and without workers not even read.
    ``after_step(step, totals)`` runs at every step boundary (checkpoints, the pre-timeout signal).
    Data-parallel (``objective`` wrapped in DDP): the totals are summed over the ranks at the end,
    and the ranks agree on the first non-finite step whenever one of them looks. ``on_nonfinite``: what
    the :class:`NonFiniteLoss` tells the user to change (the run's own keys and values).
    """
    objective.train()
    totals = partial or EpochTotals.zeros(device)
    batches = _batches_from(loader, totals)
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
    lines = ProgressLines(desc, _limited(len(loader), limit), progress, done=totals.steps)
    current = None
    for step, (x, y, *extra) in enumerate(bar, start=totals.steps):
        if limit is not None and step >= limit:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        extra = [e.to(device, non_blocking=True) for e in extra]
        logits, terms, loss = train_step(objective, optimizer, x, y, *extra)
        totals.add(terms, logits, y, loss, step)
        if step % progress_every == 0:
            where = (epoch, last_good, on_nonfinite)
            current = _lagged_check(readout, totals, loss, dist, terms, where) or current
            if current is not None:
                bar.set_postfix(loss=f"{current:.4f}")
        lines.update(step + 1, current)
        if after_step is not None:
            after_step(step, totals)
    bar.close()
    totals = totals.reduced(dist)
    _stop_if_nonfinite(totals.bad_step.item(), terms, epoch, last_good, on_nonfinite)
    stats = {name: (total / totals.seen).item() for name, total in totals.sums.items()}
    stats["loss"] = sum(stats.values())
    stats["acc"] = totals.correct.item() * 100.0 / totals.seen
    return stats


def _lagged_check(
    readout: LaggedReadout,
    totals: EpochTotals,
    loss: torch.Tensor,
    dist: Distributed,
    terms: dict[str, torch.Tensor],
    where: tuple[int, Path | None, str],
) -> float | None:
    """Stop on a non-finite loss seen so far (all ranks agree on the first); the loss for the bar.

    ``where``: the epoch, the last good checkpoint and what to change, for the message."""
    values = readout.read(totals.bad_step, loss)
    first_bad, current = (int(values[0]), values[1]) if values is not None else (-1, None)
    if dist.enabled:
        agreed = dist.min_int(first_bad if first_bad >= 0 else _NO_STEP)
        first_bad = agreed if agreed < _NO_STEP else -1
    _stop_if_nonfinite(first_bad, terms, *where)
    return current


def _batches_from(loader: DataLoader, totals: EpochTotals) -> Any:
    """The loader's batches after the ``totals.steps`` already trained; the RNG states of that boundary.

    Without loader workers the batches already trained are not read again: only their indices are
    drawn, so the sampler (and the loader's generator) end where they were, and the global RNG states an
    augmentation would have drawn from are put back just after. Loader workers each hold an RNG that the
    skipped samples advanced, so there the batches are read again (and not trained on).
    """
    if loader.num_workers == 0 and totals.steps:
        batches = iter(_after_first_batches(loader, totals.steps))
    else:
        batches = iter(loader)
        for _ in range(totals.steps):
            next(batches)
    if totals.rng is not None:  # the global RNG states of the step boundary it stopped at
        checkpoint.restore_rng_states(totals.rng)
        totals.rng = None
    return batches


class _AfterFirst(Sampler[list[int]]):
    """A batch sampler's batches after its first ``skip``, which are drawn (the sampler's random order
    advances as before) but not handed on."""

    def __init__(self, batches: Any, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        drawn = iter(self.batches)
        for _ in range(self.skip):
            next(drawn, None)
        yield from drawn

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


def _after_first_batches(loader: DataLoader, skip: int) -> DataLoader:
    """``loader`` (no workers) without its first ``skip`` batches; the same generator, so the one draw each
    iteration makes from it comes out as ``iter(loader)``'s would."""
    return DataLoader(
        loader.dataset,
        batch_sampler=_AfterFirst(loader.batch_sampler, skip),
        num_workers=0,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )


def _stop_if_nonfinite(
    step: int,
    terms: dict[str, torch.Tensor],
    epoch: int,
    last_good: Path | None,
    on_nonfinite: str = NONFINITE_ADVICE,
) -> None:
    if step < 0:
        return
    values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    where = f"last good checkpoint: {last_good}" if last_good and last_good.exists() else "no checkpoint yet"
    raise NonFiniteLoss(
        f"the loss became non-finite at epoch {epoch}, step {step} (terms now: {values}); {where}. "
        f"{on_nonfinite[:1].upper()}{on_nonfinite[1:]}."
    )
