"""Spiking VGGs from a layer list: VGGSNN (the common spiking VGG for 48×48 DVS frames, TET and the DVS
baselines after it) and VGG-9 (the self-distillation literature's).

A layout lists conv3×3 → BN → neuron widths and ``"pool"`` (2×2 average pooling). Then one Linear over
the flattened map per timestep (VGGSNN), or Linear → neuron → Linear through a ``hidden`` width (VGG-9).

- VGGSNN: 64, 128 | pool | 256, 256 | pool | 512, 512 | pool | 512, 512 | pool; convolutions with biases,
  as in the common implementation.
- VGG-9: 64, 64 | pool | 128, 128 | pool | 256, 256, 256 | pool, then Linear(→1024) → neuron →
  Linear(→K): seven convolutions and two linear layers, the VGG-9 of Kim & Panda (2021, "Revisiting
  batch normalization for training low-latency deep spiking neural networks from scratch") that the
  temporal self-distillation papers train; convolutions without biases (a BatchNorm follows each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.spiking_network import SpikingNetwork, StaticStem, linear_head, single_step

LAYOUT: tuple[int | str, ...] = (64, 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    require(len(image_size) == 2, "image_size", list(image_size), "give one size or [height, width]")
    return int(image_size[0]), int(image_size[1])


class VGGSNN(SpikingNetwork):
    """Stages ``block1`` … (each after its pooling) are tappable as ``[T, B, C, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        image_size: int | Sequence[int],
        stem_once: bool = True,
        layout: Sequence[int | str] = LAYOUT,
        hidden: int | None = None,
        conv_bias: bool = True,
    ) -> None:
        super().__init__(T, stem_once)
        layout = tuple(layout)
        require(
            len(layout) >= 1
            and isinstance(layout[0], int)
            and all(item == "pool" or (isinstance(item, int) and item >= 1) for item in layout),
            "layout",
            list(layout),
            'give conv widths (integers >= 1) and "pool", starting with a width',
        )
        height, width = _size(image_size)
        pools = layout.count("pool")
        h_out, w_out = height, width
        for _ in range(pools):
            h_out, w_out = h_out // 2, w_out // 2
        require(
            h_out >= 1 and w_out >= 1,
            "image_size",
            [height, width],
            f"this VGG halves the input {pools} times; it needs at least {2**pools}×{2**pools} pixels "
            "(the size is dataset.image_size)",
        )
        first = layout[0]
        assert isinstance(first, int)
        self.stem = StaticStem(
            layer.Conv2d(in_channels, first, 3, 1, 1, bias=conv_bias), layer.BatchNorm2d(first)
        )
        body: list[nn.Module] = [neuron()]
        self.feature_stages = {}
        channels = first
        for item in layout[1:]:
            if item == "pool":
                body.append(layer.AvgPool2d(2))
                self.feature_stages[f"block{len(self.feature_stages) + 1}"] = f"features.{len(body) - 1}"
            else:
                assert isinstance(item, int)
                body += [
                    layer.Conv2d(channels, item, 3, 1, 1, bias=conv_bias),
                    layer.BatchNorm2d(item),
                    neuron(),
                ]
                channels = item
        if not self.feature_stages:  # no pooling: the last neuron's output is the one stage
            self.feature_stages["block1"] = f"features.{len(body) - 1}"
        self.features = nn.Sequential(*body)
        self.flatten = layer.Flatten(start_dim=1)
        self.classifier = linear_head(channels * h_out * w_out, hidden, num_classes, neuron, key="hidden")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        functional.set_step_mode(self, "m")
        single_step(self.stem)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
