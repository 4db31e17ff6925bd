"""Accuracy of a spiking ``[T,B,K]`` or ANN ``[B,K]`` model: of the time-mean logits, of every timestep
and of every prefix of timesteps (what the papers' accuracy-at-fewer-timesteps figures read)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from seal_exp.models.neurons import reset_spiking_state
from seal_exp.run.distributed import SINGLE, Distributed
from seal_exp.training.progress_lines import ProgressLines


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    limit: int | None = None,
    dist: Distributed = SINGLE,
    progress: str | None = None,
) -> Accuracy:
    """Accuracy of a spiking ``[T,B,K]`` or ANN ``[B,K]`` model; membranes are reset after every batch.

    Data-parallel: each rank evaluates its shard of the split and the counts are added up.
    ``progress``: what to call the pass in progress lines (written without a terminal only).
    """
    model.eval()
    correct = per_t = prefix = None
    seen = 0
    total = len(loader) if limit is None else min(len(loader), limit)
    lines = ProgressLines(progress or "", total, progress is not None and dist.is_main, parts=4)
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
        lines.update(i + 1)
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
