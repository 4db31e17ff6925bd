"""``self_distill``: teacher-free Strong2Weak / Weak2Strong self-distillation between timesteps.

Source: the NeurIPS 2025 paper [paper; no public code]. Each timestep of the SNN is a submodel.

``L = L_hard + λ·L_SD``, with ``L_hard = CE(z̄, y)`` (``mean_ce``) by default and λ = 1.

- Confidence of step t, per batch and without labels: ``c_t = mean_b max_k softmax(Z[t, b])``;
  strong step ``t_s = argmax_t c_t``, weak step ``t_w = argmin_t c_t`` (ties: the first index).
- ``p_t = softmax(Z[t] / α_s)``, α_s = 2; ``KL(q ‖ p) = Σ_k q_k (log q_k − log p_k)``, reduced over
  the batch by ``kl_reduction`` (``batchmean`` by default), times α_s² only when ``scale_by_alpha_sq``.
- ``direction``: ``s2w`` (default; the papers name none) — the strong step teaches the weak one;
  ``w2s`` — the reverse.
- ``variant``:
  ``pair`` (default) ``KL(p_teacher ‖ p_student)`` between the two extremes;
  ``ensemble_teacher``: the pair's student learns from the mean *logits* of the other T−1 steps;
  ``ensemble_student``: the pair's teacher teaches every other step, mean of the T−1 KLs;
  ``simultaneous``: ``KL(p_s ‖ p_w) + KL(p_w ‖ p_s)`` (``direction`` plays no role);
  ``cascade``: steps ranked by decreasing confidence, each adjacent pair (i, i+1) one KL (s2w: i
  teaches i+1; w2s: the reverse), the T−1 KLs averaged.
- ``detach_teacher`` (default true) stops the gradient at the teaching side.

``L_SD`` never reads labels and is exactly 0 when T = 1 (there is no pair). Everything is computed
on ``[T, B, K]`` at once: index vectors from ``argmax``/``argsort``, ``index_select``, no Python loop
over time and no host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seal_exp.config import require, require_finite
from seal_exp.distillers.base import Distiller, HardLoss
from seal_exp.distillers.hard_losses import mean_ce

DIRECTIONS = ("s2w", "w2s")
VARIANTS = ("pair", "ensemble_teacher", "ensemble_student", "simultaneous", "cascade")
KL_REDUCTIONS = ("batchmean", "mean", "sum")


def step_confidence(logits: torch.Tensor) -> torch.Tensor:
    """``c_t = mean_b max_k softmax(Z[t, b])`` ``[T]``: how sure each timestep is, judged without labels."""
    with torch.no_grad():
        return logits.softmax(-1).amax(-1).mean(-1)


def _all_but(index: torch.Tensor, T: int) -> torch.Tensor:
    """The T−1 timesteps other than ``index`` (a 0-d tensor), in order, built on the device (no sync)."""
    steps = torch.arange(T - 1, device=index.device)
    return steps + (steps >= index).long()


def teaching_pairs(logits: torch.Tensor, direction: str, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student timesteps ``[P]`` of each KL (for ``ensemble_teacher``: the student only).

    The index vectors stay on the device so that choosing steps never waits for the GPU.
    """
    T = logits.shape[0]
    confidence = step_confidence(logits)
    strong, weak = confidence.argmax(), confidence.argmin()  # first index on ties
    teacher, student = (strong, weak) if direction == "s2w" else (weak, strong)
    if variant == "pair":
        return teacher.view(1), student.view(1)
    if variant == "ensemble_teacher":
        return _all_but(student, T), student.view(1)
    if variant == "ensemble_student":
        return teacher.expand(T - 1), _all_but(teacher, T)
    if variant == "simultaneous":
        return torch.stack([strong, weak]), torch.stack([weak, strong])
    order = torch.sort(confidence, descending=True, stable=True).indices  # cascade: strongest first
    stronger, weaker = order[:-1], order[1:]
    return (stronger, weaker) if direction == "s2w" else (weaker, stronger)


def _kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, alpha_s: float, reduction: str
) -> torch.Tensor:
    """``KL(softmax(t/α_s) ‖ softmax(s/α_s))`` per leading pair ``[P]``, reduced over batch and classes.

    ``batchmean``: summed over classes, mean over the batch (the true KL per sample);
    ``mean``: mean over batch *and* classes (PyTorch ``kl_div(reduction="mean")``, i.e. batchmean / K);
    ``sum``: summed over batch and classes. Log-softmax on both sides keeps logits of ±1e4 finite.
    """
    log_q = F.log_softmax(teacher_logits / alpha_s, dim=-1)
    log_p = F.log_softmax(student_logits / alpha_s, dim=-1)
    rows = (log_q.exp() * (log_q - log_p)).sum(-1)  # [P, B]
    if reduction == "batchmean":
        return rows.mean(-1)
    if reduction == "mean":
        return rows.mean(-1) / student_logits.shape[-1]
    return rows.sum(-1)


def self_distill_loss(
    logits: torch.Tensor,
    direction: str = "s2w",
    variant: str = "pair",
    alpha_s: float = 2.0,
    detach_teacher: bool = True,
    kl_reduction: str = "batchmean",
    scale_by_alpha_sq: bool = False,
) -> torch.Tensor:
    """``L_SD`` on per-timestep logits ``[T, B, K]`` (unweighted by λ); labels are never an input."""
    T = logits.shape[0]
    if T == 1:  # one step: nobody to learn from
        return logits.new_zeros(())
    teacher_steps, student_steps = teaching_pairs(logits, direction, variant)
    student = logits.index_select(0, student_steps)
    teacher = logits.index_select(0, teacher_steps)
    if variant == "ensemble_teacher":
        teacher = teacher.mean(0, keepdim=True)  # the other T−1 steps' mean logits
    if detach_teacher:
        teacher = teacher.detach()
    per_pair = _kl(teacher, student, alpha_s, kl_reduction)
    loss = per_pair.sum() if variant == "simultaneous" else per_pair.mean()
    return loss * alpha_s**2 if scale_by_alpha_sq else loss


class SelfDistill(Distiller):
    """Strong2Weak / Weak2Strong: ``L = L_hard + λ·L_SD``, no teacher network at all."""

    requires_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        lam: float = 1.0,
        alpha_s: float = 2.0,
        direction: str = "s2w",
        variant: str = "pair",
        detach_teacher: bool = True,
        kl_reduction: str = "batchmean",
        scale_by_alpha_sq: bool = False,
        hard_loss: HardLoss = mean_ce,
    ) -> None:
        require_finite(lam=lam, alpha_s=alpha_s)
        require(lam >= 0, "lam", lam, "the self-distillation weight must be >= 0")
        require(alpha_s > 0, "alpha_s", alpha_s, "the softening temperature must be > 0")
        require(direction in DIRECTIONS, "direction", direction, f"choose one of {', '.join(DIRECTIONS)}")
        require(variant in VARIANTS, "variant", variant, f"choose one of {', '.join(VARIANTS)}")
        require(
            kl_reduction in KL_REDUCTIONS,
            "kl_reduction",
            kl_reduction,
            f"choose one of {', '.join(KL_REDUCTIONS)}",
        )
        require(isinstance(detach_teacher, bool), "detach_teacher", detach_teacher, "use true or false")
        require(
            isinstance(scale_by_alpha_sq, bool), "scale_by_alpha_sq", scale_by_alpha_sq, "use true or false"
        )
        super().__init__(student, None, hard_loss)
        self.lam, self.alpha_s = float(lam), float(alpha_s)
        self.direction, self.variant, self.kl_reduction = direction, variant, kl_reduction
        self.detach_teacher, self.scale_by_alpha_sq = detach_teacher, scale_by_alpha_sq

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        sd = self_distill_loss(
            logits,
            self.direction,
            self.variant,
            self.alpha_s,
            self.detach_teacher,
            self.kl_reduction,
            self.scale_by_alpha_sq,
        )
        return logits, {"ce": self.hard_loss(logits, y), "sd": self.lam * sd}
