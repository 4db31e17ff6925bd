"""``tks``: temporal knowledge sharing, a teacher-free baseline (beside the seed papers' methods) [summary].

The self-teacher is the sum (switch ``teacher_reduce``: ``sum`` default, or ``mean``) of ``Z[t]`` over
each sample's timesteps whose argmax is the label, detached (zero logits when none is correct);

``L_soft = (1/T)Σ_t τ² · mean_b Σ_k −σ_τ(teacher)_k · log softmax(Z[t])_k`` (a cross-entropy against
the soft target, not a KL) and ``L = a_e·L_hard + (1−a_e)·L_soft`` with ``a_e = 1 − (e/epochs)·a``, ``e`` the
0-based epoch (the first epoch is pure hard loss). Defaults τ = 3, a = 0.7, hard loss ``mean_ce``
(``CE(z̄, y)``). No ANN teacher is built. All timesteps at once, no host synchronisation.
The method's description writes the student side untempered (``log softmax(Z[t])``); the switch
``temper_student=true`` divides it by τ as well, as Hinton KD does (the τ² factor suggests that form):
the summary does not settle it, so both are offered and the run records which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seal_exp.config import require, require_finite
from seal_exp.distillers.base import Distiller, HardLoss
from seal_exp.distillers.hard_losses import mean_ce
from seal_exp.distillers.tkd import correct_step_logits

TEACHER_REDUCTIONS = ("sum", "mean")


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, tau: float, student_tau: float = 1.0
) -> torch.Tensor:
    """``(1/T)Σ_t τ² · mean_b Σ_k −σ_τ(target)_k · log σ_τs(Z[t])_k``, ``Z`` ``[T, B, K]``, target ``[B, K]``.

    A cross-entropy against the soft target, not a KL: the target's own entropy is added, which
    changes the value, not the gradient. The target is detached; log-softmax keeps it finite on ±1e4.
    """
    p_target = F.softmax(target.detach() / tau, dim=-1).unsqueeze(0)
    log_p = F.log_softmax(logits / student_tau, dim=-1)
    return tau**2 * -(p_target * log_p).sum(-1).mean()


class TKS(Distiller):
    """TKS: the timesteps that are right teach every timestep, with a weight growing over training.

    Early on the correct timesteps are few and unreliable, so the hard loss dominates; ``a_e`` hands
    weight to the shared soft target as epochs pass.
    """

    requires_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        alpha: float = 0.7,
        tau: float = 3.0,
        teacher_reduce: str = "sum",
        temper_student: bool = False,
        hard_loss: HardLoss = mean_ce,
    ) -> None:
        require_finite(alpha=alpha, tau=tau)
        require(0 <= alpha <= 1, "alpha", alpha, "the final soft-loss share a must lie in [0, 1]")
        require(tau > 0, "tau", tau, "the temperature must be > 0")
        require(
            teacher_reduce in TEACHER_REDUCTIONS,
            "teacher_reduce",
            teacher_reduce,
            f"choose one of {', '.join(TEACHER_REDUCTIONS)}",
        )
        super().__init__(student, None, hard_loss)
        self.alpha, self.tau = float(alpha), float(tau)
        self.teacher_reduce = teacher_reduce
        self.temper_student = bool(temper_student)

    def hard_weight(self) -> float:
        """``a_e = 1 − (e/epochs)·a``, ``e = epoch − 1``: the engine counts epochs from 1, TKS from 0."""
        return 1.0 - (self.epoch - 1) / self.epochs * self.alpha

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        target = correct_step_logits(logits, y, self.teacher_reduce)
        a_e = self.hard_weight()
        return logits, {
            "ce": a_e * self.hard_loss(logits, y),
            "soft": (1 - a_e)
            * soft_cross_entropy(logits, target, self.tau, self.tau if self.temper_student else 1.0),
        }
