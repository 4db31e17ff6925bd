"""``seal``: Selective Alignment KD — error-aware logit alignment (ELA) + selective temporal alignment (STA).

``L = L_CE + α·L_ELA + β·L_STA`` with α = 0.6, β = 0.15, τ = 3 (the published commands).
Both terms are computed for all timesteps at once on ``[T, B, K]``: no Python loop over time and
no host synchronisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seal_exp.config import require, require_finite
from seal_exp.distillers.base import Distiller, HardLoss
from seal_exp.distillers.divergence import tempered_kl
from seal_exp.distillers.hard_losses import tet_ce


def ela_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float
) -> torch.Tensor:
    """Per-timestep KD in which the student's erroneous timesteps stop being pushed further wrong.

    A timestep is erroneous when the student's own top-1 class ``ŷ`` differs from the label ``y``.
    There, the student's ``ŷ`` logit is replaced by a differentiable copy of its ``y`` logit, and the
    teacher's ``y`` and ``ŷ`` logits both by their minimum: the two competing classes are equalised,
    so the gradient pulls ``y`` up without the teacher's mass on ``y`` dominating. Correct timesteps
    get plain KD. Returns ``(1/T) Σ_t τ² · mean_b KL``.
    """
    T, B, K = student_logits.shape
    classes = torch.arange(K, device=student_logits.device)
    pred = student_logits.argmax(-1, keepdim=True)  # [T, B, 1]
    true = labels.reshape(1, B, 1).expand(T, B, 1)
    wrong = pred != true
    at_pred = (classes == pred) & wrong  # the top-1 wrong class, at erroneous steps only
    at_true = (classes == true) & wrong
    student = torch.where(at_pred, student_logits.gather(-1, true), student_logits)
    teacher = teacher_logits.detach().unsqueeze(0).expand(T, B, K)
    floor = torch.minimum(teacher.gather(-1, true), teacher.gather(-1, pred))
    teacher = torch.where(at_pred | at_true, floor, teacher)
    return tempered_kl(student, teacher, tau).mean()


def sta_loss(student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Align each timestep with a detached mix of the other timesteps' logits.

    The mix for step ``i`` weights step ``j`` by ``softmax_j(κ_j · cos(Z_i, Z_j))``: confident source
    steps (``κ = 1 - H/ln K``) whose logits point the same way count most. Labels are not used.
    Returns ``τ² · mean_{i,b} KL(σ_τ(r_i) ‖ σ_τ(Z_i))``; 0 when T = 1.
    """
    T, _, K = student_logits.shape
    if T == 1:
        return student_logits.new_zeros(())
    with torch.no_grad():
        z = student_logits
        p = z.softmax(-1)
        confidence = 1 - (-(p * torch.log(p + 1e-8)).sum(-1)) / math.log(K)  # [T, B]
        unit = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        similarity = torch.einsum("ibk,jbk->ijb", unit, unit)  # [i, j, B]
        score = confidence.unsqueeze(0) * similarity  # κ of the source step j
        self_pairs = torch.eye(T, dtype=torch.bool, device=z.device).unsqueeze(-1)
        weights = score.masked_fill(self_pairs, float("-inf")).softmax(dim=1)
        target = torch.einsum("ijb,jbk->ibk", weights, z)
    return tempered_kl(student_logits, target, tau).mean()


class SeAl(Distiller):
    """SeAl-KD: ``L = L_hard + α·L_ELA + β·L_STA`` (hard loss ``tet_ce`` by default)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        alpha: float = 0.6,
        beta: float = 0.15,
        tau: float = 3.0,
        hard_loss: HardLoss = tet_ce,
    ) -> None:
        require_finite(alpha=alpha, beta=beta, tau=tau)
        require(alpha >= 0, "alpha", alpha, "the ELA weight must be >= 0")
        require(beta >= 0, "beta", beta, "the STA weight must be >= 0")
        require(tau > 0, "tau", tau, "the temperature must be > 0")
        super().__init__(student, teacher, hard_loss)
        self.alpha, self.beta, self.tau = float(alpha), float(beta), float(tau)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {
            "ce": self.hard_loss(logits, y),
            "ela": self.alpha * ela_loss(logits, self.teacher_logits(x), y, self.tau),
            "sta": self.beta * sta_loss(logits, self.tau),
        }
