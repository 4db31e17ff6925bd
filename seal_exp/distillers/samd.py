"""``samd``, ``nld``, ``samd_nld``: "A closer look at KD in SNN training" (AAAI 2026) [summary + code].

``L = L_hard + β·L_SAMD + γ·L_NLD`` with β = γ = 1 and hard loss ``mean_ce`` = ``CE(z̄, y)``;
``samd`` has only the β term, ``nld`` only the γ term, ``samd_nld`` both.

SAMD, saliency-scaled activation-map distillation, on the last stage of both networks:

- teacher map, ``ĉ = argmax A``, ``A_f ∈ R^{B×D×H×W}``, ``W ∈ R^{K×D}`` the teacher's final linear layer:
  ``teacher_map=cam`` (default, [code]): ``M^te_b = ReLU(Σ_d W[ĉ_b,d]·A_f[b,d])``;
  ``teacher_map=gradcam`` ([paper]): ``M^te_b = ReLU(Σ_d α_{b,d}·A_f[b,d])`` with
  ``α_{b,d} = mean_{h,w} ∂A[b,ĉ_b]/∂A_f[b,d,h,w]`` through global-average-pool → ``W``
  (so ``gradcam = cam / (H·W)`` for such a head);
- student map ``M^st_b = Σ_t Σ_c F[t,b,c]`` (the gradient flows through it);
- the teacher map is resized bilinearly to the student's ``H×W`` when the sizes differ (before normalising);
- ``M ← (M − min M)/(max(M − min M) + 1e-3)``: the minimum is subtracted first and the maximum is taken
  of the shifted map ([code]), so maps that differ by an offset and a positive scale normalise alike;
  min and max over the whole batch (``norm=batch``, default, [code]) or per sample (``norm=sample``);
- ``P = softmax over H·W of M/𝒯``, 𝒯 = 2 (``map_tau``); ``L_SAMD = mean_b KL(P^te_b ‖ P^st_b)``, times
  𝒯² when ``t2_scale`` (the paper's statement; default off, as in the code).

NLD, noise-smoothed logit distillation; ``μ_b, σ_b`` mean and unbiased std over classes of ``z̄_b``
(not detached), τ = 2, ``n ~ N(0, I)`` drawn from the run's seeded generator:

- ``mode=code`` (default): ``q = w·σ_τ(z̄) + (1−w)·σ_τ(μ + σ²·n)``, w = 0.9;
  ``L_NLD = τ²·mean_b KL(σ_τ(A_b) ‖ q_b)``;
- ``mode=paper``: ``z_soft = z̄ + λ·ε``, ``ε = μ + σ·n ~ N(μ, σ²)``, λ = 0.1; ``L_NLD = KD_τ(z_soft, A)``.

Every loss here is vectorised over time, batch and space, with no host synchronisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seal_exp.config import require, require_finite
from seal_exp.distillers.base import Distiller, HardLoss, last_stage
from seal_exp.distillers.hard_losses import mean_ce

TEACHER_MAPS = ("cam", "gradcam")
NORMS = ("batch", "sample")
NLD_MODES = ("code", "paper")
MAP_EPS = 1e-3  # the normalisation's denominator offset: (M − min M)/(max(M − min M) + 1e-3)
VAR_FLOOR = 1e-12  # σ = sqrt(max(var, 1e-12)) in paper mode: a finite gradient when all logits tie


def class_activation_map(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM ``ReLU(Σ_d W[ĉ_b,d]·A_f[b,d])`` ``[B, H, W]``: where the teacher sees its predicted class."""
    return F.relu(torch.einsum("bd,bdhw->bhw", weight.detach().index_select(0, classes), features.detach()))


def grad_cam_map(features: torch.Tensor, head: nn.Module, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``[B, H, W]`` of the score ``A[b, ĉ_b]`` recomputed as ``head(GAP(A_f))``.

    The gradient is taken on a detached copy of the features only (``autograd.grad``), so nothing is
    accumulated in the teacher's parameters and the teacher stays frozen; samples are independent
    through GAP and a linear head, so one backward pass of the summed scores gives every sample's map.
    """
    with torch.enable_grad():
        leaf = features.detach().requires_grad_(True)
        score = head(leaf.mean(dim=(2, 3))).gather(1, classes.unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(score, leaf)
    channel_weights = grad.mean(dim=(2, 3))  # α_{b,d}
    return F.relu(torch.einsum("bd,bdhw->bhw", channel_weights, features.detach()))


def normalise_map(m: torch.Tensor, norm: str = "batch") -> torch.Tensor:
    """``(M − min M)/(max(M − min M) + 1e-3)`` of maps ``[B, H, W]``: one min/max for the batch, or one
    per sample. The maximum is that of the shifted map, so only the map's shape matters, not its offset
    or (positive) scale: the student learns where the teacher looks, not its activation range."""
    dims = (1, 2) if norm == "sample" else (0, 1, 2)
    shifted = m - m.amin(dim=dims, keepdim=True)
    return shifted / (shifted.amax(dim=dims, keepdim=True) + MAP_EPS)


def samd_loss(
    student_features: torch.Tensor,
    teacher_map: torch.Tensor,
    tau: float = 2.0,
    norm: str = "batch",
    t2_scale: bool = False,
) -> torch.Tensor:
    """``mean_b KL(P^te_b ‖ P^st_b)`` between spatial softmaxes of the normalised maps (× 𝒯² if ``t2_scale``).

    ``student_features`` is ``F [T, B, C, H, W]`` (its map ``Σ_t Σ_c F`` keeps the gradient);
    ``teacher_map`` is ``[B, H', W']`` (detached, resized bilinearly to ``H×W`` when it differs), so the
    student learns *where* the teacher looks rather than its feature values.
    """
    student_map = student_features.sum(dim=(0, 2))  # [B, H, W]
    teacher_map = teacher_map.detach()
    if teacher_map.shape[-2:] != student_map.shape[-2:]:
        teacher_map = F.interpolate(
            teacher_map.unsqueeze(1), size=student_map.shape[-2:], mode="bilinear", align_corners=False
        ).squeeze(1)
    log_p_teacher = F.log_softmax(normalise_map(teacher_map, norm).flatten(1) / tau, dim=-1)
    log_p_student = F.log_softmax(normalise_map(student_map, norm).flatten(1) / tau, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
    return kl * tau**2 if t2_scale else kl


def nld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    noise: torch.Tensor,
    tau: float = 2.0,
    mode: str = "code",
    w: float = 0.9,
    lam: float = 0.1,
) -> torch.Tensor:
    """KD from the teacher to a noise-smoothed student distribution; ``student_logits`` is ``z̄ [B, K]``.

    ``noise`` is the standard normal draw ``n [B, K]`` (the caller takes it from the run's seeded
    generator, so the loss itself is deterministic and testable). The noise scale follows the
    student's own logit spread (μ, σ per sample, not detached). The ``code`` mixture is formed in log
    space (``logaddexp``) so it stays finite for logits of ±1e4.
    """
    mu = student_logits.mean(-1, keepdim=True)
    var = student_logits.var(-1, keepdim=True)  # unbiased; σ² of the paper
    log_p_teacher = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
    if mode == "code":
        log_w = math.log(w) if w > 0 else -math.inf
        log_1mw = math.log1p(-w) if w < 1 else -math.inf
        log_q = torch.logaddexp(
            log_w + F.log_softmax(student_logits / tau, dim=-1),
            log_1mw + F.log_softmax((mu + var * noise) / tau, dim=-1),
        )
    else:
        sigma = var.clamp_min(VAR_FLOOR).sqrt()
        log_q = F.log_softmax((student_logits + lam * (mu + sigma * noise)) / tau, dim=-1)
    return tau**2 * (log_p_teacher.exp() * (log_p_teacher - log_q)).sum(-1).mean()


def check_cam_head(teacher: nn.Module) -> None:
    """SAMD weighs the last stage's channels with the classifier's rows: their widths must agree.

    A teacher with a hidden layer in its head (``resnet19``: 512 → 256 → K) has no such linear map.
    """
    head = getattr(teacher, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"SAMD needs the teacher's final nn.Linear as .classifier; got {type(head).__name__}"
        )
    stage = last_stage(teacher)
    channels = teacher.stage_channels(stage)
    if head.in_features != channels:
        raise ValueError(
            f"SAMD needs a global-average-pool → linear teacher head: the teacher's last stage {stage!r} has "
            f"{channels} channels but its classifier takes {head.in_features} features (a hidden head "
            "layer?); pick a teacher whose classifier reads the pooled last stage: teacher=ckdsnn_resnet19 "
            "(the authors' ResNet-19 teacher), a torchvision resnet, or teacher.model.head_hidden=null"
        )


class _SamdNld(Distiller):
    """Shared forward of the three: ``L = L_hard + β·L_SAMD + γ·L_NLD``, each term only when enabled."""

    use_samd: bool
    use_nld: bool

    def _setup_samd(self, beta: float, map_tau: float, teacher_map: str, norm: str, t2_scale: bool) -> None:
        require_finite(beta=beta, map_tau=map_tau)
        require(beta >= 0, "beta", beta, "the SAMD weight must be >= 0")
        require(map_tau > 0, "map_tau", map_tau, "the spatial temperature must be > 0")
        require(
            teacher_map in TEACHER_MAPS, "teacher_map", teacher_map, f"choose {' or '.join(TEACHER_MAPS)}"
        )
        require(norm in NORMS, "norm", norm, f"choose {' or '.join(NORMS)}")
        require(isinstance(t2_scale, bool), "t2_scale", t2_scale, "use true or false")
        self.beta, self.map_tau = float(beta), float(map_tau)
        self.teacher_map, self.norm, self.t2_scale = teacher_map, norm, t2_scale

    def _setup_nld(self, gamma: float, tau: float, mode: str, w: float, lam: float) -> None:
        require_finite(gamma=gamma, tau=tau, w=w, lam=lam)
        require(gamma >= 0, "gamma", gamma, "the NLD weight must be >= 0")
        require(tau > 0, "tau", tau, "the temperature must be > 0")
        require(mode in NLD_MODES, "mode", mode, f"choose {' or '.join(NLD_MODES)}")
        require(0 <= w <= 1, "w", w, "the weight of the clean distribution must lie in [0, 1]")
        require(lam >= 0, "lam", lam, "the noise scale must be >= 0")
        self.gamma, self.tau, self.mode, self.w, self.lam = (
            float(gamma),
            float(tau),
            mode,
            float(w),
            float(lam),
        )

    def saliency(self, features: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's map ``[B, H, W]`` for its own predicted class."""
        assert self.teacher is not None
        classes = teacher_logits.argmax(-1)
        if self.teacher_map == "gradcam":
            return grad_cam_map(features, self.teacher.classifier, classes)
        return class_activation_map(features, self.teacher.classifier.weight, classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self.teacher is not None
        if self.use_samd:
            logits, student_stages = self.student_with_features(x)
            teacher_logits, teacher_stages = self.teacher_with_features(x)
        else:
            logits, teacher_logits = self.student(x), self.teacher_logits(x)
        terms = {"ce": self.hard_loss(logits, y)}
        if self.use_samd:
            teacher_map = self.saliency(teacher_stages[last_stage(self.teacher)], teacher_logits)
            samd = samd_loss(
                student_stages[last_stage(self.student)], teacher_map, self.map_tau, self.norm, self.t2_scale
            )
            terms["samd"] = self.beta * samd
        if self.use_nld:
            z = logits.mean(0)
            noise = torch.randn(z.shape, generator=self.generator(z.device), device=z.device, dtype=z.dtype)
            nld = nld_loss(z, teacher_logits, noise, self.tau, self.mode, self.w, self.lam)
            terms["nld"] = self.gamma * nld
        return logits, terms


class SAMD(_SamdNld):
    """``L = L_hard + β·L_SAMD``: the student's summed activation map follows the teacher's CAM."""

    use_samd, use_nld = True, False
    reads_teacher_features = True  # the teacher's CAM

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        beta: float = 1.0,
        map_tau: float = 2.0,
        teacher_map: str = "cam",
        norm: str = "batch",
        t2_scale: bool = False,
        hard_loss: HardLoss = mean_ce,
    ) -> None:
        super().__init__(student, teacher, hard_loss)
        self._setup_samd(beta, map_tau, teacher_map, norm, t2_scale)
        check_cam_head(self.teacher)


class NLD(_SamdNld):
    """``L = L_hard + γ·L_NLD``: logit KD against a noise-smoothed student distribution."""

    use_samd, use_nld = False, True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        gamma: float = 1.0,
        tau: float = 2.0,
        mode: str = "code",
        w: float = 0.9,
        lam: float = 0.1,
        hard_loss: HardLoss = mean_ce,
    ) -> None:
        super().__init__(student, teacher, hard_loss)
        self._setup_nld(gamma, tau, mode, w, lam)


class SAMDNLD(_SamdNld):
    """``L = L_hard + β·L_SAMD + γ·L_NLD``: the paper's full method."""

    use_samd, use_nld = True, True
    reads_teacher_features = True  # the teacher's CAM

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        beta: float = 1.0,
        gamma: float = 1.0,
        map_tau: float = 2.0,
        teacher_map: str = "cam",
        norm: str = "batch",
        t2_scale: bool = False,
        tau: float = 2.0,
        mode: str = "code",
        w: float = 0.9,
        lam: float = 0.1,
        hard_loss: HardLoss = mean_ce,
    ) -> None:
        super().__init__(student, teacher, hard_loss)
        self._setup_samd(beta, map_tau, teacher_map, norm, t2_scale)
        self._setup_nld(gamma, tau, mode, w, lam)
        check_cam_head(self.teacher)
