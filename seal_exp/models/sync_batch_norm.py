"""BatchNorm over the global batch of a data-parallel run (``trainer.sync_batchnorm=true``).

torch's ``nn.SyncBatchNorm`` runs on GPUs only and normalises over dimension 1, which for
spikingjelly's multi-step ``[T, B, C, H, W]`` BatchNorm is the batch; this one keeps each layer's
step mode and the static stem's repeat count (:func:`~seal_exp.models.spiking_network.batch_norm_repeated`)
and works on any process-group backend (gloo on CPU, NCCL on GPUs). Statistics are computed in two
passes (the mean, then the centred second moment), both summed over the ranks with an
autograd-aware all-reduce, so the gradients are those of BatchNorm on the whole global batch.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn  # autograd-aware; the replacement is still private
from torch import nn

log = logging.getLogger(__name__)


def _summed(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        with warnings.catch_warnings():  # deprecated in favour of a private module (torch 2.9)
            warnings.simplefilter("ignore", FutureWarning)
            return dist_fn.all_reduce(tensor, group=group or dist.group.WORLD)
    return tensor


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover every rank's part of the batch."""

    def __init__(self, source: nn.BatchNorm2d, group: Any = None) -> None:
        like = next(iter(source.parameters()), source.running_mean)  # device and dtype to keep
        super().__init__(
            source.num_features,
            source.eps,
            source.momentum,
            source.affine,
            source.track_running_stats,
            **({"device": like.device, "dtype": like.dtype} if like is not None else {}),
        )
        self.load_state_dict(source.state_dict())
        if hasattr(source, "step_mode"):  # spikingjelly's layer: 'm' takes [T, B, C, H, W]
            self.step_mode = source.step_mode
        self.group = group

    def forward(self, x: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        if getattr(self, "step_mode", "s") == "m":
            if x.dim() != 5:
                raise ValueError(f"expected [T, B, C, H, W] in multi-step mode, got {tuple(x.shape)}")
            return self._normalise(x.flatten(0, 1), repeats).unflatten(0, x.shape[:2])
        return self._normalise(x, repeats)

    def _normalise(self, x: torch.Tensor, repeats: int) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.dtype in (torch.float16, torch.bfloat16):  # statistics in float32, as autocast does
            x = x.float()
        C = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, C] + [1] * (x.dim() - 2)
        # the element count rides along with the sums, so uneven batches over the ranks stay exact
        count = x.new_full((1,), x.numel() // C)
        totals = _summed(torch.cat([x.sum(dims), count]), self.group)
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _summed(centred.pow(2).sum(dims), self.group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
                seen = n * repeats  # the static stem's copies count towards the unbiasing factor
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * seen / (seen - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y


def convert_sync_batch_norm(module: nn.Module, group: Any = None) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by :class:`SyncBatchNorm2d`.

    Other normalisation layers (the token BatchNorm1d of the zoo's transformers) keep each process's
    statistics; a warning says how many, so a run is never silently half-synchronised.
    """
    _convert(module, group)
    others = [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.BatchNorm2d)
    ]
    if others:
        log.warning(
            "trainer.sync_batchnorm: %d BatchNorm layer(s) of %s are not 2-d (e.g. %s) and keep each "
            "process's own statistics",
            len(others),
            type(module).__name__,
            others[0],
        )
    return module


def _convert(module: nn.Module, group: Any) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            setattr(module, name, SyncBatchNorm2d(child, group))
        else:
            _convert(child, group)
