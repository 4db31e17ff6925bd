"""``tkd``: temporally decoupled logit KD (ICML 2025; the code SeAl was derived from) [code].

``L = L_CE + α·(1/T)Σ_t KD_τ(Z[t], A) + β·(1/T)Σ_t KD_τ(Z[t], ẑ)`` with α = 0.2, β = 0.5, τ = 3 and
hard loss ``tet_ce``. The self-teacher ``ẑ`` (switch ``self_teacher``) is ``correct_mean`` by default
(the released code): per sample, the mean of ``Z[t]`` over the timesteps whose argmax is the label,
detached, and zero logits (a uniform target) when no timestep is correct; ``ensemble`` (the paper's
wording) is the detached time-mean ``z̄``. Every term is computed for all timesteps at once on
``[T, B, K]``: no Python loop over time and no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import nn

from seal_exp.config import require, require_finite
from seal_exp.distillers.base import Distiller, HardLoss
from seal_exp.distillers.divergence import kd_loss
from seal_exp.distillers.hard_losses import tet_ce

SELF_TEACHERS = ("correct_mean", "ensemble")


def correct_step_logits(logits: torch.Tensor, labels: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Per sample, the mean (or sum) of the logits ``[T, B, K]`` over the timesteps predicting the label.

    Only the student's own correct timesteps teach, so a wrong step never becomes a target. Samples
    with no correct timestep get zero logits, a uniform target. Returns ``[B, K]``, detached; masks,
    not indexing, keep it free of host synchronisation.
    """
    with torch.no_grad():
        correct = (logits.argmax(-1) == labels.unsqueeze(0)).unsqueeze(-1)  # [T, B, 1]
        total = torch.where(correct, logits, torch.zeros_like(logits)).sum(0)
        if reduce == "sum":
            return total
        return total / correct.sum(0).clamp_min(1).to(logits.dtype)


def self_teacher_logits(logits: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """TKD's self-teacher ``ẑ`` ``[B, K]``, detached: ``correct_mean`` or ``ensemble`` (``z̄``)."""
    if mode == "ensemble":
        return logits.detach().mean(0)
    return correct_step_logits(logits, labels, "mean")


def per_timestep_kd(logits: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """``(1/T)Σ_t KD_τ(Z[t], target)``: one target ``[B, K]`` distilled into every timestep of ``Z``."""
    return kd_loss(logits, target.unsqueeze(0).expand_as(logits), tau)


class TKD(Distiller):
    """TKD: ``L = L_hard + α·(1/T)Σ_t KD_τ(Z[t], A) + β·(1/T)Σ_t KD_τ(Z[t], ẑ)``.

    Distilling into each timestep, not the time-mean, is what makes it "temporally decoupled"; the
    self-teacher term shares what the correct timesteps know with the others.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        alpha: float = 0.2,
        beta: float = 0.5,
        tau: float = 3.0,
        self_teacher: str = "correct_mean",
        hard_loss: HardLoss = tet_ce,
    ) -> None:
        require_finite(alpha=alpha, beta=beta, tau=tau)
        require(alpha >= 0, "alpha", alpha, "the teacher KD weight must be >= 0")
        require(beta >= 0, "beta", beta, "the self-teacher KD weight must be >= 0")
        require(tau > 0, "tau", tau, "the temperature must be > 0")
        require(
            self_teacher in SELF_TEACHERS,
            "self_teacher",
            self_teacher,
            f"choose one of {', '.join(SELF_TEACHERS)}",
        )
        super().__init__(student, teacher, hard_loss)
        self.alpha, self.beta, self.tau = float(alpha), float(beta), float(tau)
        self.self_teacher = self_teacher

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        target = self_teacher_logits(logits, y, self.self_teacher)
        return logits, {
            "ce": self.hard_loss(logits, y),
            "kd": self.alpha * per_timestep_kd(logits, self.teacher_logits(x), self.tau),
            "self": self.beta * per_timestep_kd(logits, target, self.tau),
        }
