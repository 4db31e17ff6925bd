"""``none``: the student trained alone on its hard loss, the baseline every table needs."""

from __future__ import annotations

import torch
from torch import nn

from seal_exp.distillers.base import Distiller, HardLoss
from seal_exp.distillers.hard_losses import tet_ce


class NoDistillation(Distiller):
    """``L = L_hard``; ``tet_ce`` by default, SeAl's own hard term, so a comparison isolates distillation."""

    requires_teacher = False

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None = None, hard_loss: HardLoss = tet_ce
    ) -> None:
        super().__init__(student, None, hard_loss)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {"ce": self.hard_loss(logits, y)}
