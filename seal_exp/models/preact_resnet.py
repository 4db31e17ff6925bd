"""The pre-activation spiking ResNet-34 of the ImageNet recipe: a real-valued residual stream.

Stem: conv7×7 stride 2 (with bias) → BN → max-pool, no neuron. Block: ``x → neuron → conv3×3 → BN →
neuron → conv3×3 → BN``, added to ``x`` itself or to its 1×1 conv + BN downsample (the shortcut
carries the real-valued ``x``, never spikes). Head: GAP → fc. Convs have biases and Kaiming-normal
(fan_out) weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.spiking_network import SpikingNetwork, StaticStem, single_step


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, neuron: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.act1 = neuron()
        self.conv1 = layer.Conv2d(in_planes, planes, 3, stride, 1, bias=True)
        self.bn1 = layer.BatchNorm2d(planes)
        self.act2 = neuron()
        self.conv2 = layer.Conv2d(planes, planes, 3, 1, 1, bias=True)
        self.bn2 = layer.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                layer.Conv2d(in_planes, planes, 1, stride, bias=True), layer.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(self.act1(x)))
        out = self.bn2(self.conv2(self.act2(out)))
        return out + self.downsample(x)


class PreActResNet(SpikingNetwork):
    """``blocks`` [3,4,6,3] at 64/128/256/512 gives preact_resnet34."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        blocks: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_once: bool = True,
    ) -> None:
        super().__init__(T, stem_once)
        require(
            len(blocks) == len(widths) >= 1 and all(b >= 1 for b in blocks) and all(w >= 1 for w in widths),
            "blocks/widths",
            [list(blocks), list(widths)],
            "give one positive block count and width per stage",
        )
        self.stem = StaticStem(
            layer.Conv2d(in_channels, widths[0], 7, 2, 3, bias=True),
            layer.BatchNorm2d(widths[0]),
            layer.MaxPool2d(3, 2, 1),
        )
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        in_planes = widths[0]
        for i, (count, width) in enumerate(zip(blocks, widths, strict=True), start=1):
            stride = 1 if i == 1 else 2
            stages[f"layer{i}"] = nn.Sequential(
                *(
                    PreActBlock(in_planes if j == 0 else width, width, stride if j == 0 else 1, neuron)
                    for j in range(count)
                )
            )
            in_planes = width
        self.layers = nn.Sequential(stages)
        self.pool = layer.AdaptiveAvgPool2d(1)
        self.flatten = layer.Flatten(start_dim=1)
        self.fc = layer.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        functional.set_step_mode(self, "m")
        single_step(self.stem)
        self.feature_stages = {name: f"layers.{name}" for name, _ in self.layers.named_children()}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(x))))
