"""A small multi-step spiking CNN: the embedded default student."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require


class SpikingConvNet(nn.Module):
    """Stages of conv3×3 → BN → neuron (max-pool between stages), global average pool, linear read-out.

    Time-major throughout: a static image ``[B, C, H, W]`` is repeated over ``T`` (direct encoding);
    a ``[T, B, C, H, W]`` input (event frames) is used as it is. Returns per-timestep logits
    ``[T, B, K]``; the prediction is their mean over T. BatchNorm statistics are shared over time.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        channels: Sequence[int],
        neuron: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        require(int(T) == T and T >= 1, "T", T, "the number of timesteps must be an integer >= 1")
        require(
            len(channels) >= 1 and all(c >= 1 for c in channels),
            "channels",
            list(channels),
            "give at least one positive width",
        )
        self.T = int(T)
        blocks: list[nn.Module] = []
        width = in_channels
        for i, out in enumerate(channels):
            blocks += [layer.Conv2d(width, out, 3, padding=1, bias=False), layer.BatchNorm2d(out), neuron()]
            if i < len(channels) - 1:
                blocks.append(layer.MaxPool2d(2))
            width = out
        self.features = nn.Sequential(*blocks)
        self.pool = layer.AdaptiveAvgPool2d(1)
        self.flatten = layer.Flatten(start_dim=1)
        self.classifier = layer.Linear(width, num_classes)
        functional.set_step_mode(self, "m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        return self.classifier(self.flatten(self.pool(self.features(x))))
