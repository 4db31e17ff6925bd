"""ANN teachers: the common interface, and torchvision's ResNets with the stem the dataset needs."""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn

from seal_exp.config import require
from seal_exp.models.features import FeatureTaps

STEMS = ("auto", "cifar", "imagenet")


class AnnNetwork(FeatureTaps, nn.Module, abc.ABC):
    """An ANN teacher: ``forward(x) → [B, K]``; event frames ``[T, B, C, H, W]`` are seen as their
    time-mean, as the DVS teachers of the papers are. Exposes named stages and its final linear layer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = x.mean(0)
        return self.logits(x)

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B, K]``."""

    @property
    @abc.abstractmethod
    def classifier(self) -> nn.Linear:
        """The final linear layer (SAMD weighs the last stage's channels with its rows)."""


def resolve_stem(stem: str, num_classes: int) -> str:
    """``auto``: the CIFAR stem (3×3, stride 1, no max-pool) for ≤ 100 classes, ImageNet's otherwise."""
    require(stem in STEMS, "stem", stem, f"choose one of {', '.join(STEMS)}")
    if stem == "auto":
        return "cifar" if num_classes <= 100 else "imagenet"
    return stem


def kaiming_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The initialisation torchvision and spikingjelly give their ResNet convs."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class TorchvisionResNet(AnnNetwork):
    """torchvision's ``resnet18/34/50`` (ReLU), with the stem swapped for the dataset.

    ``net`` is the torchvision constructor (from the config), called with ``weights=None``: nothing
    is downloaded. The CIFAR stem is conv3×3 stride 1 without max-pool; ``in_channels`` other than 3
    (2 for DVS polarities, 1 for MNIST) replace the first convolution.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        net: Callable[..., nn.Module],
        stem: str = "auto",
    ) -> None:
        super().__init__()
        stem = resolve_stem(stem, num_classes)
        self.net = net(weights=None, num_classes=num_classes)
        if stem == "cifar":
            self.net.conv1 = kaiming_conv(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False))
            self.net.maxpool = nn.Identity()
        elif in_channels != 3:
            self.net.conv1 = kaiming_conv(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False))
        self.feature_stages = {"stem": "net.relu", **{f"layer{i}": f"net.layer{i}" for i in range(1, 5)}}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def classifier(self) -> nn.Linear:
        return self.net.fc
