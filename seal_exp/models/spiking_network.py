"""The common shape of every multi-step student: a stem, a time-major body, per-timestep logits.

Static images use direct encoding (the same image at every timestep). The stem (first conv and its
BatchNorm, plus any pooling before the first neuron) is then the same at every step, so it can be
computed once per image and broadcast over T: exact in the forward pass, equal up to float
summation order in the backward pass, and with BatchNorm's running statistics updated as if all
``T·B`` copies had been seen. ``stem_once=false`` runs the stem on all ``T·B`` copies instead.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.features import FeatureTaps
from seal_exp.models.sync_batch_norm import SyncBatchNorm2d


def batch_norm_repeated(bn: nn.BatchNorm2d, x: torch.Tensor, repeats: int) -> torch.Tensor:
    """``bn(x)`` as if every sample of ``x`` appeared ``repeats`` times in the batch.

    The normalisation is identical (copies change neither mean nor biased variance); only the
    running variance's unbiasing factor ``n/(n−1)`` depends on the count, so it is applied here with
    ``n`` of the repeated batch. No host synchronisation.
    """
    if isinstance(bn, SyncBatchNorm2d):  # data-parallel with global statistics: it counts the copies itself
        return bn(x, repeats=repeats)
    if repeats == 1 or not bn.training or not bn.track_running_stats:
        return bn(x)
    y = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    with torch.no_grad():
        n = x.numel() // x.shape[1] * repeats
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), momentum)
    return y


def linear_head(
    width: int,
    hidden: int | None,
    num_classes: int,
    act: Callable[[], nn.Module],
    activation: bool = True,
    key: str = "head_hidden",
) -> nn.Module:
    """The classifier on pooled (or flattened) features: one Linear, or Linear → ``act`` → Linear through
    a ``hidden`` width; without the activation between (``activation=False``) the two are one affine map.

    Multi-step networks apply it at every timestep; ``key`` names the config key of ``hidden`` in errors.
    """
    if hidden is None:
        return layer.Linear(width, num_classes)
    require(hidden >= 1, key, hidden, "use null (no hidden layer) or a width >= 1")
    between = [act()] if activation else []
    return nn.Sequential(layer.Linear(width, hidden), *between, layer.Linear(hidden, num_classes))


class StaticStem(nn.Module):
    """conv → BatchNorm → optional pooling, run on ``[N, C, H, W]`` (N = B, or T·B with ``repeats=1``)."""

    def __init__(self, conv: nn.Module, bn: nn.BatchNorm2d, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        return self.pool(batch_norm_repeated(self.bn, self.conv(x), repeats))


def single_step(*modules: nn.Module) -> None:
    """Put spikingjelly layers back into single-step mode (the stem sees plain ``[N, C, H, W]``)."""
    for module in modules:
        for m in module.modules():
            if hasattr(m, "step_mode"):
                m.step_mode = "s"


class SpikingNetwork(FeatureTaps, nn.Module, abc.ABC):
    """Base of the multi-step students: ``forward(x) → [T, B, K]`` per-timestep logits.

    ``x`` is a static batch ``[B, C, H, W]`` (repeated over T) or event frames ``[T, B, C, H, W]``.
    Subclasses set ``self.stem`` (a :class:`StaticStem`) and implement :meth:`body`, which maps the
    time-major stem output ``[T, B, C, H, W]`` to logits ``[T, B, K]``.
    """

    stem: StaticStem

    def __init__(self, T: int, stem_once: bool = True) -> None:
        super().__init__()
        require(int(T) == T and T >= 1, "T", T, "the number of timesteps must be an integer >= 1")
        self.T = int(T)
        self.stem_once = bool(stem_once)

    @abc.abstractmethod
    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major stem output ``[T, B, C, H, W]`` → per-timestep logits ``[T, B, K]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # static images: direct encoding
            if self.stem_once:
                h = self.stem(x, repeats=self.T)
                h = h.unsqueeze(0).expand(self.T, *h.shape)
            else:
                B = x.shape[0]
                x = x.unsqueeze(0).expand(self.T, *x.shape).reshape(self.T * B, *x.shape[1:])
                h = self.stem(x).unflatten(0, (self.T, B))
        elif x.dim() == 5:  # event frames, already time-major
            if x.shape[0] != self.T:
                raise ValueError(
                    f"the input has {x.shape[0]} frames but the student runs T={self.T} steps; "
                    "set the dataset's frame count to neuron.T"
                )
            h = self.stem(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        else:
            raise ValueError(f"expected [B, C, H, W] or [T, B, C, H, W] input, got shape {tuple(x.shape)}")
        return self.body(h)
