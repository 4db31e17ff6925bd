"""``kd``: Hinton's logit distillation applied to the student's time-mean logits."""

from __future__ import annotations

import torch
from torch import nn

from seal_exp.config import require, require_finite
from seal_exp.distillers.base import Distiller, HardLoss
from seal_exp.distillers.divergence import kd_loss
from seal_exp.distillers.hard_losses import mean_ce


class KD(Distiller):
    """``L = (1-α)·L_hard + α·KD_τ(mean_t Z, A)``.

    No canonical SNN default exists, so the run records α and τ.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        alpha: float = 0.5,
        tau: float = 4.0,
        hard_loss: HardLoss = mean_ce,
    ) -> None:
        require_finite(alpha=alpha, tau=tau)
        require(0 <= alpha <= 1, "alpha", alpha, "the KD weight must lie in [0, 1]")
        require(tau > 0, "tau", tau, "the temperature must be > 0")
        super().__init__(student, teacher, hard_loss)
        self.alpha, self.tau = float(alpha), float(tau)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {
            "ce": (1 - self.alpha) * self.hard_loss(logits, y),
            "kd": self.alpha * kd_loss(logits.mean(0), self.teacher_logits(x), self.tau),
        }
