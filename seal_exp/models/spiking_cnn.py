"""A small multi-step spiking CNN: the embedded default student."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.spiking_network import SpikingNetwork, StaticStem, single_step


class SpikingConvNet(SpikingNetwork):
    """Stages of conv3×3 → BN → neuron (max-pool between stages), global average pool, linear read-out.

    Returns per-timestep logits ``[T, B, K]``; the prediction is their mean over T. BatchNorm
    statistics are shared over time. Stages ``stage1`` … (neuron outputs) are tappable.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        channels: Sequence[int],
        neuron: Callable[[], nn.Module],
        stem_once: bool = True,
    ) -> None:
        super().__init__(T, stem_once)
        require(
            len(channels) >= 1 and all(c >= 1 for c in channels),
            "channels",
            list(channels),
            "give at least one positive width",
        )
        self.stem = StaticStem(
            layer.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), layer.BatchNorm2d(channels[0])
        )
        blocks: list[nn.Module] = [neuron()]
        self.feature_stages = {"stage1": "features.0"}
        width = channels[0]
        for out in channels[1:]:
            blocks += [
                layer.MaxPool2d(2),
                layer.Conv2d(width, out, 3, padding=1, bias=False),
                layer.BatchNorm2d(out),
                neuron(),
            ]
            self.feature_stages[f"stage{len(self.feature_stages) + 1}"] = f"features.{len(blocks) - 1}"
            width = out
        self.features = nn.Sequential(*blocks)
        self.pool = layer.AdaptiveAvgPool2d(1)
        self.flatten = layer.Flatten(start_dim=1)
        self.classifier = layer.Linear(width, num_classes)
        functional.set_step_mode(self, "m")
        single_step(self.stem)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))
