"""Named-stage feature taps shared by students and teachers (for SAMD, KDSNN and friends).

A network lists its tappable stages in ``feature_stages`` (stage name → submodule path);
:meth:`FeatureTaps.forward_with_features` returns the logits together with the requested stage
outputs, captured by forward hooks, so no model code changes when a distiller needs features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureTaps:
    """Mixin for ``nn.Module`` networks: the outputs of named stages alongside the logits."""

    feature_stages: dict[str, str]

    def stage_output(self, tensor: torch.Tensor) -> torch.Tensor:
        """How a hooked output is returned (students that fold time into the batch unfold it here)."""
        return tensor

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
        return logits, {name: self.stage_output(captured[name]) for name in stages}
