"""CIFAR-style ResNets (3×3 stride-1 stem, no max-pool): the spiking students resnet18/19/20 and
ckdsnn_resnet19, and the ANN teachers resnet19 and ckdsnn_resnet19, which share one topology and differ
only in the activation.

Block: ``act(BN(conv3×3))`` → ``BN(conv3×3)`` → ``+ shortcut`` → ``act`` after the add. On a shape change
the shortcut is a 1×1 conv + BN (``shortcut=conv``, TET's resnet19) or AvgPool(stride) → 1×1 conv + BN
(``shortcut=avgpool``, the SAMD/NLD authors' code). ``last_activation=relu`` ends the last block of the
last stage in a ReLU instead of a neuron (their code: the SAMD map there is real-valued). Head: global
average pool → Linear per timestep, optionally through a hidden Linear, with a neuron between the two
(resnet19) or none (``head_activation=false``: one affine map, applied to every timestep, whose mean over
time equals the authors' head on the time-mean). No output neuron: the logits are real-valued.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.ann import AnnNetwork, kaiming_conv
from seal_exp.models.spiking_network import SpikingNetwork, StaticStem, linear_head, single_step

Activation = Callable[[], nn.Module]


SHORTCUTS = ("conv", "avgpool")
LAST_ACTIVATIONS = ("neuron", "relu")


def _shortcut(in_planes: int, planes: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "conv":
        return nn.Sequential(
            layer.Conv2d(in_planes, planes, 1, stride, bias=False), layer.BatchNorm2d(planes)
        )
    # AvgPool(stride) then a stride-1 1×1 conv; rounding up (over the pixels present) keeps odd sizes
    # aligned with the strided 3×3 path and changes nothing on even ones
    pool = (
        layer.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(pool, layer.Conv2d(in_planes, planes, 1, 1, bias=False), layer.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        act: Activation,
        shortcut: str = "conv",
        out_act: Activation | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = layer.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = layer.BatchNorm2d(planes)
        self.act1 = act()
        self.conv2 = layer.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = layer.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)
        self.act2 = (out_act or act)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def _check_layout(widths: Sequence[int], blocks: Sequence[int], strides: Sequence[int]) -> None:
    require(
        len(widths) == len(blocks) == len(strides) >= 1,
        "widths/blocks/strides",
        [list(widths), list(blocks), list(strides)],
        "give one width, block count and stride per stage",
    )
    require(
        all(w >= 1 for w in widths) and all(b >= 1 for b in blocks), "widths", list(widths), "must be >= 1"
    )
    require(all(s in (1, 2) for s in strides), "strides", list(strides), "each stride must be 1 or 2")


def relu() -> nn.Module:
    return nn.ReLU(inplace=True)


def residual_stages(
    in_planes: int,
    widths: Sequence[int],
    blocks: Sequence[int],
    strides: Sequence[int],
    act: Activation,
    shortcut: str = "conv",
    last_activation: str = "neuron",
) -> nn.Sequential:
    """``layer1 … layerN`` of BasicBlocks; the first block of a stage carries its stride.

    ``last_activation=relu``: the very last block ends in a ReLU instead of ``act``.
    """
    _check_layout(widths, blocks, strides)
    require(shortcut in SHORTCUTS, "shortcut", shortcut, f"choose {' or '.join(SHORTCUTS)}")
    require(
        last_activation in LAST_ACTIVATIONS,
        "last_activation",
        last_activation,
        f"choose {' or '.join(LAST_ACTIVATIONS)}",
    )
    stages = OrderedDict()
    for i, (width, count, stride) in enumerate(zip(widths, blocks, strides, strict=True), start=1):
        stage = []
        for j in range(count):
            last = i == len(widths) and j == count - 1
            out_act = relu if last and last_activation == "relu" else None
            stage.append(BasicBlock(in_planes, width, stride if j == 0 else 1, act, shortcut, out_act))
            in_planes = width
        stages[f"layer{i}"] = nn.Sequential(*stage)
    return nn.Sequential(stages)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kaiming_conv(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SpikingResNet(SpikingNetwork):
    """resnet18 (64/128/256/512, [2,2,2,2]), resnet19 (128/256/512, [3,3,2], hidden head 256) and the
    SAMD/NLD authors' ckdsnn_resnet19 and resnet20 ([3,3,3] at 16/32/64) as multi-step spiking networks:
    conv3×3 stem → BN → neuron, BasicBlocks, GAP, head per timestep. Stage outputs ``stem``,
    ``layer1`` … are tappable as ``[T, B, C, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Activation,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        head_hidden: int | None = None,
        stem_once: bool = True,
        shortcut: str = "conv",
        last_activation: str = "neuron",
        head_activation: bool = True,
    ) -> None:
        super().__init__(T, stem_once)
        require(stem_width >= 1, "stem_width", stem_width, "must be >= 1")
        self.stem = StaticStem(
            layer.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False), layer.BatchNorm2d(stem_width)
        )
        self.stem_neuron = neuron()
        self.layers = residual_stages(stem_width, widths, blocks, strides, neuron, shortcut, last_activation)
        self.pool = layer.AdaptiveAvgPool2d(1)
        self.flatten = layer.Flatten(start_dim=1)
        self.head = linear_head(widths[-1], head_hidden, num_classes, neuron, head_activation)
        _init(self)
        functional.set_step_mode(self, "m")
        single_step(self.stem)
        self.feature_stages = {
            "stem": "stem_neuron",
            **{name: f"layers.{name}" for name, _ in self.layers.named_children()},
        }

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.layers(self.stem_neuron(x)))))


class AnnResNet(AnnNetwork):
    """The same CIFAR-style topology with ReLU: the ANN teachers resnet19 (the DVS recipes) and
    ckdsnn_resnet19 (the SAMD/NLD authors': AvgPool shortcuts, one Linear on the pooled features)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        head_hidden: int | None = None,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        require(stem_width >= 1, "stem_width", stem_width, "must be >= 1")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), relu()
        )
        self.layers = residual_stages(stem_width, widths, blocks, strides, relu, shortcut)
        self.head = linear_head(widths[-1], head_hidden, num_classes, relu)
        _init(self)
        functional.set_step_mode(self, "s")
        self.feature_stages = {
            "stem": "stem",
            **{name: f"layers.{name}" for name, _ in self.layers.named_children()},
        }

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    @property
    def classifier(self) -> nn.Linear:
        return self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
