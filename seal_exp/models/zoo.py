"""Students from spikingjelly's own model zoo, made to fit the platform.

The zoo constructor comes from the config (``net: {_target_: ...sew_resnet18, _partial_: true, ...}``)
and is called with this run's neuron (one per layer) and class count. Then: the network is put in
multi-step mode, and its first conv + BN (+ any pooling before the first neuron) move into a
:class:`StaticStem` (replaced by identities in the zoo network), so static inputs can compute the stem
once. The zoo's own ``forward`` returns the time-mean of the logits; where it does, :meth:`body` runs the
zoo's modules and stops before that mean, so every student here returns per-timestep logits
``[T, B, K]`` whose mean is exactly what the zoo network outputs.

- SEW-ResNet (``sew_resnet18/34``) and spiking VGG-BN (``spiking_vgg11_bn``): the zoo's ImageNet networks.
- MS-ResNet (``ms_resnet18``), QKFormer, Spike-driven Transformer and Spikformer: the architectures the
  self-distillation and transformer-KD papers report on.

A custom neuron replaces every neuron of a zoo network, so the zoo's per-position defaults (e.g. the
attention neurons' threshold 0.5 of the transformers) would be lost; ``attention_v_threshold`` puts that
one back on the attention neurons (``attn_lif``), as the papers have it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from seal_exp.config import require
from seal_exp.models.ann import kaiming_conv
from seal_exp.models.spiking_network import SpikingNetwork, StaticStem, single_step

ZOO_STEMS = ("imagenet", "cifar")


def _zoo(
    net: Callable[..., nn.Module], neuron: Callable[[], nn.Module], num_classes: int, **kwargs: Any
) -> nn.Module:
    # The zoo calls spiking_neuron(**neuron_kwargs) once per layer; our factory carries its settings.
    return net(spiking_neuron=lambda **_: neuron(), num_classes=num_classes, **kwargs)


def _attention_threshold(model: nn.Module, v_threshold: float | None) -> None:
    """Give the attention neurons (``attn_lif``) the zoo's threshold back (``None``: the neuron group's)."""
    if v_threshold is None:
        return
    require(v_threshold > 0, "attention_v_threshold", v_threshold, "use a threshold > 0, or null")
    attention = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "attn_lif"]
    require(
        bool(attention),
        "attention_v_threshold",
        v_threshold,
        "this network has no attention neurons; use null",
    )
    for module in attention:
        module.v_threshold = float(v_threshold)


def _take_stem(container: nn.Module, conv: str, bn: str, pool: str | None = None) -> StaticStem:
    """Move ``container``'s conv, BN (and pool) into a :class:`StaticStem`; identities take their places."""
    modules = [container.get_submodule(name) if name else None for name in (conv, bn, pool)]
    for name in (conv, bn, pool):
        if name:
            parent, _, attr = name.rpartition(".")
            setattr(container.get_submodule(parent) if parent else container, attr, nn.Identity())
    return StaticStem(modules[0], modules[1], modules[2])


class _ZooNetwork(SpikingNetwork):
    """A zoo network ``self.net`` built with the run's neuron, its stem taken out as the static stem.

    Subclasses take the stem out (:meth:`take_stem`), say where the zoo keeps its stages
    (:meth:`stage_paths`) and run its modules up to the per-timestep logits (:meth:`body`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        net: Callable[..., nn.Module],
        stem_once: bool = True,
        stem_options: dict[str, Any] | None = None,
        zoo_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(T, stem_once)
        zoo = _zoo(net, neuron, num_classes, **(zoo_options or {}))
        # registered first: modules in running order
        self.stem = self.take_stem(zoo, in_channels, **(stem_options or {}))
        self.net = zoo
        self.feature_stages = {name: f"net.{path}" for name, path in self.stage_paths(zoo).items()}
        functional.set_step_mode(self, "m")
        single_step(self.stem)

    @abc.abstractmethod
    def take_stem(self, zoo: nn.Module, in_channels: int, **options: Any) -> StaticStem:
        """The static stem, moved out of ``zoo`` (identities take its places); any other change the zoo
        network needs for this run's inputs."""

    @staticmethod
    @abc.abstractmethod
    def stage_paths(zoo: nn.Module) -> dict[str, str]:
        """Tappable stage name → path inside the zoo network, input to output."""


class _TimeMajorZoo(_ZooNetwork):
    """A zoo network that takes ``T`` and ``in_channels`` itself; its own first conv, BN (and pooling)
    become the static stem, found at :meth:`stem_paths`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        net: Callable[..., nn.Module],
        attention_v_threshold: float | None = None,
        stem_once: bool = True,
    ) -> None:
        shape = {"T": T, "in_channels": in_channels}
        super().__init__(in_channels, num_classes, T, neuron, net, stem_once, zoo_options=shape)
        _attention_threshold(self, attention_v_threshold)

    def take_stem(self, zoo: nn.Module, in_channels: int, **options: Any) -> StaticStem:
        return _take_stem(zoo, *self.stem_paths(zoo))

    @staticmethod
    @abc.abstractmethod
    def stem_paths(zoo: nn.Module) -> tuple[str, str, str | None]:
        """Paths of the first conv, its BN and any pooling before the first neuron, inside the zoo network."""


class ZooSEWResNet(_ZooNetwork):
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
        require(stem in ZOO_STEMS, "stem", stem, f"choose one of {', '.join(ZOO_STEMS)}")
        super().__init__(in_channels, num_classes, T, neuron, net, stem_once, stem_options={"kind": stem})

    def take_stem(self, zoo: nn.Module, in_channels: int, **options: Any) -> StaticStem:
        """A new first conv for ``in_channels`` (the zoo's takes 3), with the zoo's BN."""
        width = zoo.conv1.out_channels
        if options["kind"] == "cifar":
            conv = layer.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            zoo.maxpool = nn.Identity()
        else:
            conv = layer.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        stem = StaticStem(kaiming_conv(conv), zoo.bn1)
        zoo.conv1, zoo.bn1 = nn.Identity(), nn.Identity()
        return stem

    @staticmethod
    def stage_paths(zoo: nn.Module) -> dict[str, str]:
        return {"stem": "sn1", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ZooSpikingVGG(_ZooNetwork):
    """spikingjelly's spiking VGG with BatchNorm (e.g. ``spiking_vgg11_bn``).

    Its max-pools round up (``ceil_mode``), which changes nothing on 32×32 or 224×224 inputs and lets
    28×28 images survive five halvings. Stages ``block1`` … are the outputs of the max-pools.
    """

    def take_stem(self, zoo: nn.Module, in_channels: int, **options: Any) -> StaticStem:
        """A new first conv for ``in_channels`` (the zoo's takes 3), with the zoo's first BN; every
        max-pool set to round up."""
        features = zoo.features
        first = features[0]
        conv = layer.Conv2d(in_channels, first.out_channels, 3, 1, 1, bias=first.bias is not None)
        require(
            isinstance(features[1], nn.BatchNorm2d),
            "net",
            type(zoo).__name__,
            "use a spiking VGG with BatchNorm (*_bn)",
        )
        stem = StaticStem(kaiming_conv(conv), features[1])
        features[0], features[1] = nn.Identity(), nn.Identity()
        for module in features:
            if isinstance(module, nn.MaxPool2d):
                module.ceil_mode = True
        return stem

    @staticmethod
    def stage_paths(zoo: nn.Module) -> dict[str, str]:
        pools = [i for i, module in enumerate(zoo.features) if isinstance(module, nn.MaxPool2d)]
        return {f"block{k}": f"features.{i}" for k, i in enumerate(pools, start=1)}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ZooMSResNet(_TimeMajorZoo):
    """spikingjelly's MS-ResNet (Hu et al.): membrane shortcuts, each residual branch spiking before its conv.

    The zoo's stem (conv, BN and an optional max-pool, no neuron) is the static stem. Per-timestep logits
    are its ``head`` on the pooled output of ``head_lif`` at every step (the zoo returns their mean).
    Stages ``layer1`` … are tappable (membrane-valued sums, ``[T, B, C, H, W]``).
    """

    @staticmethod
    def stem_paths(zoo: nn.Module) -> tuple[str, str, str | None]:
        return "stem.0", "stem.1", "stem.2" if len(zoo.stem) > 2 else None

    @staticmethod
    def stage_paths(zoo: nn.Module) -> dict[str, str]:
        return {f"layer{i}": f"layer{i}" for i in range(1, 5) if getattr(zoo, f"layer{i}", None) is not None}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.layer3(n.layer2(n.layer1(x)))
        if n.layer4 is not None:
            x = n.layer4(x)
        return n.head(n.avgpool(n.head_lif(x)).flatten(2))


class ZooQKFormer(_TimeMajorZoo):
    """spikingjelly's QKFormer (Zhou et al., 2024): three patch-embedding stages, Q-K attention blocks in
    the first two, spiking self-attention in the third. The first patch embedding's conv → BN → max-pool
    is the static stem. Stages ``stage1`` … ``stage3`` (each after its last block) are tappable."""

    @staticmethod
    def stem_paths(zoo: nn.Module) -> tuple[str, str, str | None]:
        return "patch_embed1.conv1", "patch_embed1.bn1", "patch_embed1.pool1"

    @staticmethod
    def stage_paths(zoo: nn.Module) -> dict[str, str]:
        stages = {}
        for i in (1, 2, 3):
            blocks = len(getattr(zoo, f"stage{i}"))
            stages[f"stage{i}"] = f"stage{i}.{blocks - 1}" if blocks else f"patch_embed{i}"
        return stages

    def body(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for embed, stage in (
            (n.patch_embed1, n.stage1),
            (n.patch_embed2, n.stage2),
            (n.patch_embed3, n.stage3),
        ):
            x = embed(x)
            for block in stage:
                x = block(x)
        return n.head(x.flatten(3).mean(-1))


def _block_stages(zoo: nn.Module) -> dict[str, str]:
    return {"patch_embed": "patch_embed", **{f"block{i + 1}": f"blocks.{i}" for i in range(len(zoo.blocks))}}


class ZooSpikeDrivenTransformer(_TimeMajorZoo):
    """spikingjelly's Spike-driven Transformer (Yao et al., 2023): a convolutional patch embedding, then
    blocks of spike-driven self-attention (masks and sums, no multiplications of two real tensors). The
    embedding's first conv → BN is the static stem. Per-timestep logits: ``head`` on ``head_lif`` of the
    pooled tokens at every step (the zoo returns the head of their mean). Stages ``patch_embed``,
    ``block1`` … are tappable."""

    @staticmethod
    def stem_paths(zoo: nn.Module) -> tuple[str, str, str | None]:
        return "patch_embed.stages.0.0", "patch_embed.stages.0.1", None

    stage_paths = staticmethod(_block_stages)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.patch_embed(x)
        for block in n.blocks:
            x = block(x)
        return n.head(n.head_lif(x.flatten(3).mean(-1)))


class ZooSpikformer(_TimeMajorZoo):
    """spikingjelly's Spikformer (Zhou et al., 2023): a spiking patch stem (conv-BN-neuron stages and a
    convolutional position encoding), then spiking self-attention blocks. The stem's first conv → BN (→
    max-pool) is the static stem. The zoo already returns per-timestep logits. Stages ``patch_embed``,
    ``block1`` … are tappable."""

    @staticmethod
    def stem_paths(zoo: nn.Module) -> tuple[str, str, str | None]:
        first = "patch_embed.stages.0.conv_bn.block"
        return f"{first}.0", f"{first}.1", f"{first}.2" if len(zoo.get_submodule(first)) > 2 else None

    stage_paths = staticmethod(_block_stages)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.forward_features(x))
