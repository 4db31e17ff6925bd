"""A small ANN CNN: the embedded default teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seal_exp.config import require
from seal_exp.models.ann import AnnNetwork


class ConvNet(AnnNetwork):
    """Stages of two conv3×3 → BN → ReLU (max-pool between stages), global average pool, linear head.

    Stages ``stage1`` … are tappable (before their max-pool).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int]) -> None:
        super().__init__()
        require(
            len(channels) >= 1 and all(c >= 1 for c in channels),
            "channels",
            list(channels),
            "give at least one positive width",
        )
        blocks: list[nn.Module] = []
        self.feature_stages = {}
        width = in_channels
        for i, out in enumerate(channels):
            for _ in range(2):
                blocks += [
                    nn.Conv2d(width, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                width = out
            self.feature_stages[f"stage{i + 1}"] = f"features.{len(blocks) - 1}"
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    @property
    def classifier(self) -> nn.Linear:
        return self.head
