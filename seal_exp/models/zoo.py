"""Students from spikingjelly's own model zoo (SEW-ResNet, spiking VGG-BN), made to fit the platform.

The zoo constructor comes from the config (``net: {_target_: ...sew_resnet18, _partial_: true}``)
and is called with this run's neuron (one per layer) and class count. Then: the first convolution is
rebuilt for the dataset's input channels, the network is put in multi-step mode, and its first
conv + BN move into a :class:`StaticStem` (replaced by identities in the zoo network, whose own
forward then runs the rest), so static inputs can compute the stem once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.ann import kaiming_conv
from seal_exp.models.spiking_network import SpikingNetwork, StaticStem, single_step

ZOO_STEMS = ("imagenet", "cifar")


def _zoo(net: Callable[..., nn.Module], neuron: Callable[[], nn.Module], num_classes: int) -> nn.Module:
    # The zoo calls spiking_neuron(**neuron_kwargs) once per layer; our factory carries its settings.
    return net(spiking_neuron=lambda **_: neuron(), num_classes=num_classes)


class ZooSEWResNet(SpikingNetwork):
    """spikingjelly's SEW-ResNet (Fang et al., 2021; ``cnf`` ADD/AND/IAND set in ``net``).

    ``stem: imagenet`` keeps the zoo's conv7×7 stride 2 + max-pool; ``cifar`` uses conv3×3 stride 1
    and no max-pool, for 32×32 inputs.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        net: Callable[..., nn.Module],
        stem: str = "imagenet",
        stem_once: bool = True,
    ) -> None:
        super().__init__(T, stem_once)
        require(stem in ZOO_STEMS, "stem", stem, f"choose one of {', '.join(ZOO_STEMS)}")
        zoo = _zoo(net, neuron, num_classes)
        width = zoo.conv1.out_channels
        if stem == "cifar":
            conv = layer.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            zoo.maxpool = nn.Identity()
        else:
            conv = layer.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.stem = StaticStem(kaiming_conv(conv), zoo.bn1)  # registered first: modules in running order
        zoo.conv1, zoo.bn1 = nn.Identity(), nn.Identity()
        self.net = zoo
        functional.set_step_mode(self, "m")
        single_step(self.stem)
        self.feature_stages = {"stem": "net.sn1", **{f"layer{i}": f"net.layer{i}" for i in range(1, 5)}}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ZooSpikingVGG(SpikingNetwork):
    """spikingjelly's spiking VGG with BatchNorm (e.g. ``spiking_vgg11_bn``).

    Its max-pools round up (``ceil_mode``), which changes nothing on 32×32 or 224×224 inputs and lets
    28×28 images survive five halvings. Stages ``block1`` … are the outputs of the max-pools.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        net: Callable[..., nn.Module],
        stem_once: bool = True,
    ) -> None:
        super().__init__(T, stem_once)
        zoo = _zoo(net, neuron, num_classes)
        features = zoo.features
        first = features[0]
        conv = layer.Conv2d(in_channels, first.out_channels, 3, 1, 1, bias=first.bias is not None)
        require(
            isinstance(features[1], nn.BatchNorm2d), "net", net, "use a spiking VGG with BatchNorm (*_bn)"
        )
        self.stem = StaticStem(kaiming_conv(conv), features[1])  # registered first: modules in running order
        features[0], features[1] = nn.Identity(), nn.Identity()
        self.net = zoo
        self.feature_stages = {}
        for i, module in enumerate(features):
            if isinstance(module, nn.MaxPool2d):
                module.ceil_mode = True
                self.feature_stages[f"block{len(self.feature_stages) + 1}"] = f"net.features.{i}"
        functional.set_step_mode(self, "m")
        single_step(self.stem)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
