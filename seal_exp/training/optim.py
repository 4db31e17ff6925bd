"""Optimisers as the reference recipes set them up."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from seal_exp.config import require, require_finite


def sgd(
    modules: Iterable[nn.Module],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    decay_all_params: bool = False,
) -> torch.optim.SGD:
    """SGD with weight decay on conv and linear weights only (BatchNorm parameters and biases get 0).

    ``decay_all_params`` decays every parameter instead, as the ANN-teacher recipes of the papers do.
    """
    require_finite(lr=lr, momentum=momentum, weight_decay=weight_decay)
    require(lr > 0, "lr", lr, "the learning rate must be > 0")
    require(0 <= momentum < 1, "momentum", momentum, "must lie in [0, 1)")
    require(weight_decay >= 0, "weight_decay", weight_decay, "must be >= 0")
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                is_weight = name == "weight" and isinstance(module, nn.modules.conv._ConvNd | nn.Linear)
                (decayed if decay_all_params or is_weight else plain).append(param)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=nesterov)


def step_decay(
    optimizer: torch.optim.Optimizer, step_size: int, gamma: float = 0.1
) -> torch.optim.lr_scheduler.StepLR:
    """The learning rate times ``gamma`` every ``step_size`` epochs (stepped once per epoch).

    Checked here rather than left to ``StepLR``, which would divide by a zero step size mid-run.
    """
    require(
        isinstance(step_size, int) and not isinstance(step_size, bool) and step_size >= 1,
        "step_size",
        step_size,
        "the number of epochs between decays must be an integer >= 1",
    )
    require_finite(gamma=gamma)
    require(gamma > 0, "gamma", gamma, "the decay factor must be > 0 (0.1: ten times smaller)")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=float(gamma))
