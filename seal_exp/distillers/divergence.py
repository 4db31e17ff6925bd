"""The tempered KL divergence every logit distiller is built from."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tempered_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))`` for each row (summed over the last axis).

    The teacher side is detached. Log-softmax on both sides keeps it finite for logits of ±1e4.
    """
    log_p_teacher = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
    log_p_student = F.log_softmax(student_logits / tau, dim=-1)
    return tau**2 * (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton's KD: :func:`tempered_kl` averaged over every leading axis (batch, and time if present)."""
    return tempered_kl(student_logits, teacher_logits, tau).mean()
