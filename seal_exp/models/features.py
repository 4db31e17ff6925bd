"""Named-stage feature taps shared by students and teachers (for SAMD, KDSNN and friends).

A network lists its tappable stages in ``feature_stages`` (stage name → submodule path);
:meth:`FeatureTaps.forward_with_features` returns the logits together with the requested stage
outputs, captured by forward hooks, so no model code changes when a distiller needs features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seal_exp.models.speed import full_precision


class FeatureTaps:
    """Mixin for ``nn.Module`` networks: the outputs of named stages alongside the logits."""

    feature_stages: dict[str, str]

    def stage_output(self, tensor: torch.Tensor) -> torch.Tensor:
        """How a hooked output is returned (students that fold time into the batch unfold it here)."""
        return tensor

    def stage_channels(self, name: str) -> int:
        """Channel count of a stage's output, read from the layers up to it (no forward pass).

        The last convolution or BatchNorm registered up to the end of the stage decides: modules are
        registered in the order they run in every network here (a block's 1×1 shortcut registered
        after its main path has the same width).
        """
        if name not in self.feature_stages:
            known = ", ".join(self.feature_stages)
            raise KeyError(f"{type(self).__name__} has no stage {name!r}; its stages are {known}")
        path = self.feature_stages[name]
        module: nn.Module = self  # type: ignore[assignment]
        channels = None
        inside = False
        for sub_path, sub in module.named_modules():
            in_stage = sub_path == path or sub_path.startswith(path + ".")
            if inside and not in_stage:
                break
            inside = inside or in_stage
            if isinstance(sub, nn.modules.conv._ConvNd):  # Conv2d, and the transformers' token Conv1d
                channels = sub.out_channels
            elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
                channels = sub.num_features
        if channels is None:
            raise ValueError(f"{type(self).__name__}: stage {name!r} has no convolution before it")
        return channels

    def forward_with_features(
        self, x: torch.Tensor, stages: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and ``{stage: output}``: ``[T, B, C, H, W]`` for students, ``[B, C, H, W]`` for teachers."""
        unknown = [s for s in stages if s not in self.feature_stages]
        if unknown:
            raise KeyError(
                f"{type(self).__name__} has no stage {', '.join(map(repr, unknown))}; "
                f"its stages are {', '.join(self.feature_stages)}"
            )
        captured: dict[str, torch.Tensor] = {}
        module: nn.Module = self  # type: ignore[assignment]
        handles = [
            module.get_submodule(self.feature_stages[name]).register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out)
            )
            for name in stages
        ]
        try:
            logits = module(x)
        finally:
            for handle in handles:
                handle.remove()
        # under bf16 autocast the hooks caught reduced-precision outputs: losses get float32
        return logits, {name: full_precision(self.stage_output(captured[name])) for name in stages}
