"""`samd`, `nld`, `samd_nld` and `kdsnn` against slow loop versions written here from the equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seal_exp.config import InvalidArgument
from seal_exp.distillers.hard_losses import mean_ce
from seal_exp.distillers.kdsnn import KDSNN, feature_loss
from seal_exp.distillers.samd import (
    NLD,
    SAMD,
    SAMDNLD,
    class_activation_map,
    grad_cam_map,
    nld_loss,
    normalise_map,
    samd_loss,
)
from seal_exp.plan import prepare
from seal_exp.train import train
from tests.conftest import SMOKE, make_cfg

DT = torch.float64

# ---------------------------------------------------------------- loop oracles, one element at a time


def relu(v: torch.Tensor) -> torch.Tensor:
    return v if v > 0 else v * 0


def argmax_row(row: torch.Tensor) -> int:
    return max(range(len(row)), key=lambda k: (row[k].item(), -k))  # first index of the max


def kl_rows(q_logits: list, p_logits: list) -> torch.Tensor:
    """Σ_k q_k (log q_k − log p_k) with q, p the softmaxes of two lists of scalars."""
    q_norm = sum(torch.exp(v) for v in q_logits)
    p_norm = sum(torch.exp(v) for v in p_logits)
    q = [torch.exp(v) / q_norm for v in q_logits]
    p = [torch.exp(v) / p_norm for v in p_logits]
    return sum(qk * (torch.log(qk) - torch.log(pk)) for qk, pk in zip(q, p, strict=True))


def cam_oracle(A_f: torch.Tensor, W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    B, D, H, Wd = A_f.shape
    rows = []
    for b in range(B):
        c = argmax_row(A[b])
        rows.append(
            torch.stack(
                [
                    torch.stack([relu(sum(W[c, d] * A_f[b, d, h, w] for d in range(D))) for w in range(Wd)])
                    for h in range(H)
                ]
            )
        )
    return torch.stack(rows)


def grad_cam_oracle(A_f: torch.Tensor, head: nn.Linear, A: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from its definition, one sample at a time: α_d = mean_hw ∂score/∂A_f[d,h,w]."""
    B, D, H, Wd = A_f.shape
    rows = []
    for b in range(B):
        c = argmax_row(A[b])
        leaf = A_f[b].detach().clone().requires_grad_(True)
        pooled = [sum(leaf[d, h, w] for h in range(H) for w in range(Wd)) / (H * Wd) for d in range(D)]
        score = sum(head.weight[c, d] * pooled[d] for d in range(D)) + head.bias[c]
        (g,) = torch.autograd.grad(score, leaf)
        alpha = [sum(g[d, h, w] for h in range(H) for w in range(Wd)) / (H * Wd) for d in range(D)]
        rows.append(
            torch.stack(
                [
                    torch.stack([relu(sum(alpha[d] * A_f[b, d, h, w] for d in range(D))) for w in range(Wd)])
                    for h in range(H)
                ]
            )
        )
    return torch.stack(rows).detach()


def bilinear_oracle(m: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear resize, half-pixel centres (align_corners=False), one output pixel at a time."""
    H, W = m.shape

    def taps(dst: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    out = []
    for i in range(out_h):
        r0, r1, fr = taps(i, H, out_h)
        row = []
        for j in range(out_w):
            c0, c1, fc = taps(j, W, out_w)
            top = (1 - fc) * m[r0, c0] + fc * m[r0, c1]
            bottom = (1 - fc) * m[r1, c0] + fc * m[r1, c1]
            row.append((1 - fr) * top + fr * bottom)
        out.append(torch.stack(row))
    return torch.stack(out)


def normalise_oracle(maps: list[list[torch.Tensor]], norm: str) -> list[list[torch.Tensor]]:
    """M' = M − min M, then M' / (max M' + 1e-3): the maximum of the *shifted* map (the paper's definition).
    Maps are given as per-sample lists of pixel scalars."""

    def shift_then_scale(values: list[torch.Tensor], low: torch.Tensor, high: torch.Tensor):
        return [(v - low) / (high + 1e-3) for v in values]

    if norm == "batch":
        low = min(v for m in maps for v in m)
        high = max(v - low for m in maps for v in m)
        return [shift_then_scale(m, low, high) for m in maps]
    out = []
    for m in maps:
        low = min(m)
        out.append(shift_then_scale(m, low, max(v - low for v in m)))
    return out


def samd_oracle(
    F_s: torch.Tensor, teacher_map: torch.Tensor, tau: float, norm: str, t2_scale: bool
) -> torch.Tensor:
    T, B, C, H, W = F_s.shape
    student = [
        [sum(F_s[t, b, c, h, w] for t in range(T) for c in range(C)) for h in range(H) for w in range(W)]
        for b in range(B)
    ]
    teacher = []
    for b in range(B):
        m = teacher_map[b].detach()
        if m.shape != (H, W):
            m = bilinear_oracle(m, H, W)
        teacher.append([m[h, w] for h in range(H) for w in range(W)])
    student, teacher = normalise_oracle(student, norm), normalise_oracle(teacher, norm)
    total = sum(kl_rows([v / tau for v in teacher[b]], [v / tau for v in student[b]]) for b in range(B)) / B
    return total * tau**2 if t2_scale else total


def nld_oracle(
    z: torch.Tensor, A: torch.Tensor, n: torch.Tensor, tau: float, mode: str, w: float, lam: float
) -> torch.Tensor:
    B, K = z.shape
    total = 0.0
    for b in range(B):
        mu = sum(z[b, k] for k in range(K)) / K
        var = sum((z[b, k] - mu) ** 2 for k in range(K)) / (K - 1)
        sigma = torch.sqrt(var)
        teacher = [A[b, k].detach() / tau for k in range(K)]
        t_norm = sum(torch.exp(v) for v in teacher)
        p = [torch.exp(v) / t_norm for v in teacher]
        if mode == "code":
            clean = [z[b, k] / tau for k in range(K)]
            noisy = [(mu + sigma**2 * n[b, k]) / tau for k in range(K)]
            c_norm = sum(torch.exp(v) for v in clean)
            n_norm = sum(torch.exp(v) for v in noisy)
            q = [
                w * torch.exp(c) / c_norm + (1 - w) * torch.exp(v) / n_norm
                for c, v in zip(clean, noisy, strict=True)
            ]
        else:
            soft = [(z[b, k] + lam * (mu + sigma * n[b, k])) / tau for k in range(K)]
            s_norm = sum(torch.exp(v) for v in soft)
            q = [torch.exp(v) / s_norm for v in soft]
        total = total + tau**2 * sum(
            pk * (torch.log(pk) - torch.log(qk)) for pk, qk in zip(p, q, strict=True)
        )
    return total / B


def kd_oracle(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    K = s.shape[1]
    rows = [
        kl_rows([t[b, k].detach() / tau for k in range(K)], [s[b, k] / tau for k in range(K)])
        for b in range(len(s))
    ]
    return tau**2 * sum(rows) / len(s)


def feat_oracle(F_s: torch.Tensor, conv: nn.Conv2d, A_f: torch.Tensor) -> torch.Tensor:
    """‖conv1x1(mean_t F) − A_f‖² / B, with the teacher resized to the student's size if needed."""
    T, B, C, H, W = F_s.shape
    D = conv.out_channels
    total = 0.0
    for b in range(B):
        for d in range(D):
            target = A_f[b, d].detach()
            if target.shape != (H, W):
                target = bilinear_oracle(target, H, W)
            for h in range(H):
                for w in range(W):
                    mean = [sum(F_s[t, b, c, h, w] for t in range(T)) / T for c in range(C)]
                    out = conv.bias[d] + sum(conv.weight[d, c, 0, 0] * mean[c] for c in range(C))
                    total = total + (out - target[h, w]) ** 2
    return total / B


# ---------------------------------------------------------------- fixtures and fake networks


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


class FakeStudent(nn.Module):
    """Given logits ``[T,B,K]`` and last-stage features ``[T,B,C,H,W]``, as parameters (for gradients)."""

    feature_stages = {"last": "last"}  # noqa: RUF012

    def __init__(self, logits: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.detach().clone())
        self.features = nn.Parameter(features.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits

    def forward_with_features(self, x, stages):
        return self.logits, {s: self.features for s in stages}

    def stage_channels(self, name: str) -> int:
        return self.features.shape[2]


class FakeTeacher(nn.Module):
    """Given last-stage features ``[B,D,H,W]`` and a GAP → linear head, as the embedded ConvNet has."""

    feature_stages = {"last": "last"}  # noqa: RUF012

    def __init__(self, features: torch.Tensor, num_classes: int, seed: int = 0, head_in: int | None = None):
        super().__init__()
        self.features = nn.Parameter(features.detach().clone())
        D = features.shape[1]
        self.classifier = nn.Linear(head_in or D, num_classes).to(DT)
        with torch.no_grad():
            self.classifier.weight.copy_(rand(num_classes, head_in or D, seed=seed + 100))
            self.classifier.bias.copy_(rand(num_classes, seed=seed + 101))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features.mean(dim=(2, 3)))

    def forward_with_features(self, x, stages):
        return self(x), {s: self.features for s in stages}

    def stage_channels(self, name: str) -> int:
        return self.features.shape[1]


def nets(T=3, B=4, K=5, C=3, D=4, hw=(3, 3), thw=(3, 3), seed=0):
    """A fake student/teacher pair, labels and a dummy input."""
    student = FakeStudent(rand(T, B, K, seed=seed, scale=2.0), rand(T, B, C, *hw, seed=seed + 1))
    teacher = FakeTeacher(rand(B, D, *thw, seed=seed + 2).abs(), K, seed=seed)
    y = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed + 3))
    return student, teacher, y, torch.zeros(B, 1)


def grad_wrt(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, tensors)


SIZES = {"same": ((3, 3), (3, 3)), "up": ((4, 4), (2, 2)), "down": ((3, 3), (5, 4))}

# ---------------------------------------------------------------- SAMD


@pytest.mark.parametrize("t2_scale", [False, True])
@pytest.mark.parametrize("norm", ["batch", "sample"])
@pytest.mark.parametrize("size", list(SIZES))
def test_samd_loss_matches_loop_oracle_values_and_gradients(size, norm, t2_scale):
    (sh, th) = SIZES[size]
    F_s = rand(2, 3, 4, *sh, seed=1).requires_grad_(True)
    teacher_map = rand(3, *th, seed=2).abs()
    impl = samd_loss(F_s, teacher_map, 2.0, norm, t2_scale)
    loop = samd_oracle(F_s, teacher_map, 2.0, norm, t2_scale)
    assert impl.item() > 1e-4
    assert torch.allclose(impl, loop, atol=1e-10)
    (g_impl,) = grad_wrt(impl, F_s)
    (g_loop,) = grad_wrt(loop, F_s)
    assert torch.allclose(g_impl, g_loop, atol=1e-6)


def test_t2_scale_multiplies_by_the_spatial_temperature_squared():
    F_s, teacher_map = rand(2, 3, 4, 3, 3, seed=1), rand(3, 3, 3, seed=2).abs()
    plain = samd_loss(F_s, teacher_map, 1.5, "batch", False)
    assert torch.allclose(samd_loss(F_s, teacher_map, 1.5, "batch", True), 1.5**2 * plain, atol=1e-14)


@pytest.mark.parametrize("teacher_map", ["cam", "gradcam"])
def test_teacher_maps_match_loop_oracles(teacher_map):
    _, teacher, _, x = nets(thw=(3, 2))
    A, A_f = teacher(x).detach(), teacher.features.detach()
    if teacher_map == "cam":
        impl = class_activation_map(A_f, teacher.classifier.weight, A.argmax(-1))
        loop = cam_oracle(A_f, teacher.classifier.weight.detach(), A)
    else:
        impl = grad_cam_map(A_f, teacher.classifier, A.argmax(-1))
        loop = grad_cam_oracle(A_f, teacher.classifier, A)
    assert impl.shape == (4, 3, 2) and (impl > 0).any() and (impl == 0).any(), "ReLU should bite somewhere"
    assert torch.allclose(impl, loop, atol=1e-12)


def test_cam_and_gradcam_agree_up_to_a_positive_scale_for_a_gap_linear_head():
    """Grad-CAM = CAM / (H·W) here; after normalisation only the 1e-3 offset (scaled) tells them apart."""
    _, teacher, _, x = nets(thw=(3, 3))
    A, A_f = teacher(x).detach(), teacher.features.detach() * 50  # a realistic activation range
    cam = class_activation_map(A_f, teacher.classifier.weight, A.argmax(-1))
    grad_cam = grad_cam_map(A_f, teacher.classifier, A.argmax(-1))
    assert torch.allclose(grad_cam * 9, cam, rtol=1e-12, atol=1e-12)
    for norm in ("batch", "sample"):
        n_cam, n_grad = normalise_map(cam, norm), normalise_map(grad_cam, norm)
        assert torch.allclose(n_cam, n_grad, atol=1e-3)  # M'/(max M' + 1e-3) vs M'/(max M' + 9e-3)
    F_s = rand(2, 4, 3, 3, 3, seed=5)
    l_cam = samd_loss(F_s, cam, 2.0, "batch", False)
    assert torch.allclose(samd_loss(F_s, grad_cam, 2.0, "batch", False), l_cam, rtol=1e-3)


def test_normalise_map_by_batch_and_by_sample():
    m = rand(3, 2, 2, seed=6) + 5.0  # an offset: the old reading (max of the unshifted map) differs here
    by_batch, by_sample = normalise_map(m, "batch"), normalise_map(m, "sample")
    assert torch.allclose(by_batch, (m - m.min()) / ((m - m.min()).max() + 1e-3))
    for b in range(3):
        shifted = m[b] - m[b].min()
        assert torch.allclose(by_sample[b], shifted / (shifted.max() + 1e-3))
    assert torch.allclose(by_batch.amax(), torch.tensor(1.0, dtype=m.dtype), atol=1e-3)
    assert by_batch.amin() == 0


def test_the_worked_example_of_the_corrected_normalisation():
    """Student map [2,3,4,6] and teacher CAM [0,1,2,4] both normalise to [0, .25, .5, 1] (up to the
    1e-3 offset): SAMD between them is 0 (the old reading, max of the unshifted map, gave 2.0e-3)."""
    student_map = torch.tensor([[[2.0, 3.0], [4.0, 6.0]]], dtype=torch.float64)
    teacher_map = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]], dtype=torch.float64)
    expected = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]], dtype=torch.float64) / (4 + 1e-3)
    for norm in ("batch", "sample"):
        assert torch.allclose(normalise_map(student_map, norm), expected, atol=1e-15)
        assert torch.allclose(normalise_map(teacher_map, norm), expected, atol=1e-15)
        F_s = student_map.reshape(1, 1, 1, 2, 2)
        assert abs(samd_loss(F_s, teacher_map, 2.0, norm, False).item()) < 1e-15


@pytest.mark.parametrize("norm", ["batch", "sample"])
def test_maps_that_differ_by_an_offset_and_a_positive_scale_give_zero_samd(norm):
    """An offset cancels exactly; a positive scale cancels up to the 1e-3 in the denominator."""
    teacher_map = rand(4, 3, 3, seed=8).abs()
    if norm == "batch":  # one offset and one scale for the whole batch
        offsets, scales = torch.tensor(-2.0, dtype=DT), torch.tensor(3.5, dtype=DT)
    else:  # per sample, each its own
        offsets = torch.tensor([-2.0, 0.5, 7.0, 0.0], dtype=DT).view(4, 1, 1)
        scales = torch.tensor([0.5, 3.0, 11.0, 1.0], dtype=DT).view(4, 1, 1)
    for scale, exact in ((torch.ones_like(scales), True), (scales, False)):
        student_map = scale * teacher_map + offsets
        F_s = student_map.reshape(1, 4, 1, 3, 3).clone().requires_grad_(True)
        n_student, n_teacher = normalise_map(student_map, norm), normalise_map(teacher_map, norm)
        loss = samd_loss(F_s, teacher_map, 2.0, norm, True)
        (grad,) = grad_wrt(loss, F_s)
        if exact:
            assert torch.allclose(n_student, n_teacher, rtol=0, atol=1e-14)
            assert abs(loss.item()) < 1e-14 and grad.abs().max() < 1e-12
        else:  # M'/(m + ε) against sM'/(s·m + ε), m = max M': apart by at most ε/min(m, s·m)
            dims = (0, 1, 2) if norm == "batch" else (1, 2)
            m = (teacher_map - teacher_map.amin(dim=dims, keepdim=True)).amax(dim=dims)
            bound = 1e-3 / torch.minimum(m, m * scales.flatten()).min()
            assert 0 < (n_student - n_teacher).abs().max() <= bound
            assert abs(loss.item()) < 1e-7 and grad.abs().max() < 1e-4


@pytest.mark.parametrize("norm", ["batch", "sample"])
def test_samd_is_zero_on_identical_maps(norm):
    teacher_map = rand(4, 3, 3, seed=7).abs()
    F_s = teacher_map.reshape(1, 4, 1, 3, 3)  # T = C = 1: the student's map is the teacher's map
    assert abs(samd_loss(F_s, teacher_map, 2.0, norm, True).item()) < 1e-14
    split = torch.stack([0.25 * F_s, 0.75 * F_s]).squeeze(1)  # T = 2: the sum over t is the same map
    assert abs(samd_loss(split, teacher_map, 2.0, norm, False).item()) < 1e-14


@pytest.mark.parametrize("t2_scale", [False, True])
@pytest.mark.parametrize("norm", ["batch", "sample"])
@pytest.mark.parametrize("teacher_map", ["cam", "gradcam"])
def test_samd_distiller_matches_loop_oracle(teacher_map, norm, t2_scale):
    student, teacher, y, x = nets(hw=(4, 4), thw=(2, 2))
    distiller = SAMD(
        student, teacher, beta=0.7, map_tau=2.0, teacher_map=teacher_map, norm=norm, t2_scale=t2_scale
    )
    logits, terms = distiller(x, y)
    assert set(terms) == {"ce", "samd"} and logits is student.logits
    A = teacher(x).detach()
    oracle_map = (
        cam_oracle if teacher_map == "cam" else lambda f, w, a: grad_cam_oracle(f, teacher.classifier, a)
    )(teacher.features.detach(), teacher.classifier.weight.detach(), A)
    loop = 0.7 * samd_oracle(student.features, oracle_map, 2.0, norm, t2_scale)
    assert torch.allclose(terms["samd"], loop, atol=1e-10)
    assert torch.allclose(terms["ce"], F.cross_entropy(student.logits.mean(0), y))
    g_impl = grad_wrt(terms["samd"], student.features)[0]
    g_loop = grad_wrt(loop, student.features)[0]
    assert torch.allclose(g_impl, g_loop, atol=1e-6)


@pytest.mark.parametrize("teacher_map", ["cam", "gradcam"])
def test_the_teacher_gets_no_gradient_and_stays_in_eval_mode(teacher_map):
    student, teacher, y, x = nets()
    distiller = SAMDNLD(student, teacher, teacher_map=teacher_map).train()
    assert student.training and not teacher.training
    sum(distiller(x, y)[1].values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.features.grad is not None and student.features.grad.abs().sum() > 0


def test_gradcam_works_where_autograd_is_off():
    """The engine may call a distiller under no_grad (e.g. for a validation loss): Grad-CAM still works."""
    student, teacher, y, x = nets()
    with torch.no_grad():
        loss = SAMD(student, teacher, teacher_map="gradcam")(x, y)[1]["samd"]
    assert torch.isfinite(loss) and loss > 0


def test_cam_and_gradcam_of_the_embedded_teacher_agree():
    """The real ConvNet teacher's classifier reads its pooled last stage, so Grad-CAM = CAM / (H·W)."""
    from seal_exp.models.ann_cnn import ConvNet

    torch.manual_seed(0)
    teacher = ConvNet(1, 10, [8, 16]).eval()
    x = torch.randn(5, 1, 8, 8)
    A, stages = teacher.forward_with_features(x, ["stage2"])
    A_f = stages["stage2"]
    assert torch.allclose(teacher.classifier(A_f.mean(dim=(2, 3))), A, atol=1e-5)
    cam = class_activation_map(A_f, teacher.classifier.weight, A.argmax(-1))
    grad_cam = grad_cam_map(A_f, teacher.classifier, A.argmax(-1))
    assert torch.allclose(grad_cam * A_f.shape[-2] * A_f.shape[-1], cam, atol=1e-5)


def test_samd_refuses_a_teacher_whose_head_does_not_read_the_last_stage():
    student, _, _, _ = nets()
    hidden_head = FakeTeacher(rand(4, 4, 3, 3, seed=1), 5, head_in=7)
    with pytest.raises(ValueError, match="classifier takes 7 features"):
        SAMD(student, hidden_head)
    NLD(student, hidden_head)  # NLD needs only the logits


# ---------------------------------------------------------------- NLD


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("seed", [0, 1])
def test_nld_loss_matches_loop_oracle_values_and_gradients(mode, seed):
    Z = rand(3, 4, 5, seed=seed, scale=2.0).requires_grad_(True)
    A, n = rand(4, 5, seed=seed + 10, scale=3.0), rand(4, 5, seed=seed + 20)
    impl = nld_loss(Z.mean(0), A, n, 2.0, mode, 0.9, 0.1)
    loop = nld_oracle(Z.mean(0), A, n, 2.0, mode, 0.9, 0.1)
    assert impl.item() > 1e-3
    assert torch.allclose(impl, loop, atol=1e-10)
    (g_impl,) = grad_wrt(impl, Z)
    (g_loop,) = grad_wrt(loop, Z)
    assert torch.allclose(g_impl, g_loop, atol=1e-6)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_nld_distiller_draws_its_noise_from_the_seeded_generator(mode):
    student, teacher, y, x = nets(seed=3)

    def first_loss(seed: int) -> torch.Tensor:
        distiller = NLD(student, teacher, gamma=0.5, mode=mode)
        distiller.seed_noise(seed)
        return distiller(x, y)[1]["nld"].detach()

    rng = torch.get_rng_state()
    a, b, c = first_loss(11), first_loss(11), first_loss(12)
    assert torch.equal(torch.get_rng_state(), rng), "the global torch RNG must not be touched"
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the draw is exactly a standard normal from torch.Generator().manual_seed(seed), shaped like z̄
    n = torch.randn(4, 5, generator=torch.Generator().manual_seed(11), dtype=DT)
    expected = 0.5 * nld_oracle(student.logits.detach().mean(0), teacher(x).detach(), n, 2.0, mode, 0.9, 0.1)
    assert torch.allclose(a, expected, atol=1e-10)
    # and the generator advances: the next step draws fresh noise
    distiller = NLD(student, teacher, mode=mode)
    distiller.seed_noise(11)
    assert not torch.equal(distiller(x, y)[1]["nld"], distiller(x, y)[1]["nld"])


def test_nld_mixture_limits():
    """w = 1 is plain KD_τ(z̄, A); λ = 0 in paper mode is plain KD_τ(z̄, A) too."""
    z, A, n = rand(4, 5, seed=1), rand(4, 5, seed=2), rand(4, 5, seed=3)
    plain = nld_oracle(z, A, torch.zeros_like(n), 2.0, "paper", 0.9, 0.0)
    assert torch.allclose(nld_loss(z, A, n, 2.0, "code", 1.0, 0.1), plain, atol=1e-12)
    assert torch.allclose(nld_loss(z, A, n, 2.0, "paper", 0.9, 0.0), plain, atol=1e-12)
    assert torch.isfinite(nld_loss(z, A, n, 2.0, "code", 0.0, 0.1))


def test_samd_nld_terms_are_the_weighted_parts():
    student, teacher, y, x = nets(seed=4)
    both = SAMDNLD(student, teacher, beta=0.3, gamma=0.6)
    both.seed_noise(5)
    _, terms = both(x, y)
    assert set(terms) == {"ce", "samd", "nld"}
    samd = SAMD(student, teacher)
    nld = NLD(student, teacher)
    nld.seed_noise(5)
    assert torch.allclose(terms["samd"], 0.3 * samd(x, y)[1]["samd"], atol=1e-14)
    assert torch.allclose(terms["nld"], 0.6 * nld(x, y)[1]["nld"], atol=1e-14)
    assert set(nld(x, y)[1]) == {"ce", "nld"}
    assert torch.allclose(terms["ce"], mean_ce(student.logits, y))


# ---------------------------------------------------------------- KDSNN


@pytest.mark.parametrize("size", list(SIZES))
def test_kdsnn_matches_loop_oracle_values_and_gradients(size):
    (sh, th) = SIZES[size]
    student, teacher, y, x = nets(hw=sh, thw=th, C=3, D=4, seed=6)
    distiller = KDSNN(student, teacher, alpha=0.4, tau=4.0, alpha_f=0.3)
    _, terms = distiller(x, y)
    assert set(terms) == {"ce", "kd", "feat"}
    A = teacher(x).detach()
    assert torch.allclose(terms["ce"], 0.6 * F.cross_entropy(student.logits.mean(0), y))
    kd = 0.4 * kd_oracle(student.logits.mean(0), A, 4.0)
    feat = 0.3 * feat_oracle(student.features, distiller.projector, teacher.features)
    assert torch.allclose(terms["kd"], kd, atol=1e-10)
    assert torch.allclose(terms["feat"], feat, atol=1e-10)
    params = (student.features, student.logits, distiller.projector.weight, distiller.projector.bias)
    impl = grad_wrt(terms["kd"] + terms["feat"], *params)
    loop = grad_wrt(kd + feat, *params)
    for g_impl, g_loop in zip(impl, loop, strict=True):
        assert torch.allclose(g_impl, g_loop, atol=1e-6)


def test_feature_loss_resizes_the_teacher_to_the_student():
    projected, target = rand(2, 3, 4, 4, seed=1), rand(2, 3, 2, 2, seed=2)
    resized = F.interpolate(target, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(feature_loss(projected, target), ((projected - resized) ** 2).sum() / 2)


def test_kdsnn_projector_is_learnable_and_gets_a_gradient():
    student, teacher, y, x = nets(C=3, D=6)
    distiller = KDSNN(student, teacher)
    assert distiller.learnable_modules() == [student, distiller.projector]
    assert distiller.projector.in_channels == 3 and distiller.projector.out_channels == 6
    assert distiller.projector.kernel_size == (1, 1)
    sum(distiller(x, y)[1].values()).backward()
    assert distiller.projector.weight.grad is not None and distiller.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_kdsnn_projector_init_follows_the_run_seed_not_the_global_rng(tmp_path):
    def projector(seed: int) -> torch.Tensor:
        cfg = make_cfg(tmp_path, [*SMOKE, "distiller=kdsnn", "tracking=none", f"seed={seed}"])
        return prepare(cfg).student.distiller.projector.weight

    rng = torch.get_rng_state()
    a, b, c = projector(1), projector(1), projector(2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- robustness and validation


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_every_loss_is_finite_on_extreme_values(scale):
    g = torch.Generator().manual_seed(11)
    Z = (scale * torch.sign(torch.randn(4, 6, 5, generator=g))).requires_grad_(True)
    A = scale * torch.sign(torch.randn(6, 5, generator=g))
    n = torch.randn(6, 5, generator=g)
    same = torch.full((4, 6, 5), scale, requires_grad=True)  # every class tied: σ = 0
    F_s = (scale * torch.rand(4, 6, 3, 2, 2, generator=g)).requires_grad_(True)
    for loss, wrt in (
        (nld_loss(Z.mean(0), A, n, 2.0, "code"), Z),
        (nld_loss(Z.mean(0), A, n, 2.0, "paper"), Z),
        (nld_loss(same.mean(0), A, n, 2.0, "code"), same),
        (nld_loss(same.mean(0), A, n, 2.0, "paper"), same),
        (samd_loss(F_s, torch.rand(6, 2, 2, generator=g) * abs(scale), 2.0, "batch"), F_s),
        (samd_loss(F_s, torch.rand(6, 4, 4, generator=g), 2.0, "sample", True), F_s),
    ):
        (grad,) = torch.autograd.grad(loss, wrt)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    student = FakeStudent(Z.detach().double(), F_s.detach().double())
    teacher = FakeTeacher(scale * rand(6, 4, 2, 2, seed=1).abs(), 5)
    y = torch.randint(0, 5, (6,), generator=g)
    for distiller in (
        SAMDNLD(student, teacher),
        SAMDNLD(student, teacher, mode="paper"),
        KDSNN(student, teacher),
    ):
        loss = sum(distiller(torch.zeros(6, 1), y)[1].values())
        grads = torch.autograd.grad(loss, [student.logits, student.features])
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


BAD_ARGUMENTS = [
    (SAMD, "beta", -1.0),
    (SAMD, "map_tau", 0.0),
    (SAMD, "teacher_map", "grad-cam"),
    (SAMD, "norm", "channel"),
    (SAMD, "t2_scale", "yes"),
    (NLD, "gamma", -0.5),
    (NLD, "tau", 0.0),
    (NLD, "mode", "both"),
    (NLD, "w", 1.5),
    (NLD, "lam", -0.1),
    (SAMDNLD, "beta", -1.0),
    (SAMDNLD, "gamma", -1.0),
    (SAMDNLD, "map_tau", -2.0),
    (SAMDNLD, "norm", "pixel"),
    (SAMDNLD, "mode", "paper2"),
    (KDSNN, "alpha", 1.5),
    (KDSNN, "tau", -4.0),
    (KDSNN, "alpha_f", -1.0),
]


@pytest.mark.parametrize(
    ("cls", "name", "value"), BAD_ARGUMENTS, ids=[f"{c.__name__}-{n}" for c, n, _ in BAD_ARGUMENTS]
)
def test_arguments_are_validated_and_named(cls, name, value):
    student, teacher, _, _ = nets()
    with pytest.raises(InvalidArgument) as info:
        cls(student, teacher, **{name: value})
    assert info.value.name == name and name in str(info.value)


@pytest.mark.parametrize("cls", [SAMD, NLD, SAMDNLD, KDSNN])
def test_every_feature_distiller_needs_a_teacher(cls):
    with pytest.raises(ValueError, match="teacher"):
        cls(nets()[0], None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_feature_losses_do_not_synchronise_the_host():
    student, teacher, y, x = nets(T=4, B=8, K=10, C=6, D=8, hw=(4, 4), thw=(2, 2))
    distillers = [
        SAMDNLD(student, teacher, teacher_map="gradcam", norm="sample"),
        SAMDNLD(student, teacher, mode="paper"),
        KDSNN(student, teacher),
    ]
    distillers = [d.cuda() for d in distillers]
    x, y = x.cuda(), y.cuda()
    for d in distillers:  # create the generators first (their seeding is a one-off, outside the loss)
        d.generator(x.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for d in distillers:
            sum(d(x, y)[1].values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- whole smoke runs


SMOKE_RUNS = {
    "samd": ["distiller=samd"],
    "nld": ["distiller=nld"],
    "samd_nld": ["distiller=samd_nld"],
    "kdsnn": ["distiller=kdsnn"],
    "samd_nld-switches": [
        "distiller=samd_nld",
        "distiller.teacher_map=gradcam",
        "distiller.norm=sample",
        "distiller.t2_scale=true",
        "distiller.mode=paper",
    ],
    "samd_nld-resnet20-resnet18": ["distiller=samd_nld", "student=resnet20", "teacher=resnet18"],
}


@pytest.mark.parametrize("overrides", list(SMOKE_RUNS.values()), ids=list(SMOKE_RUNS))
def test_smoke_run_of_each_feature_distiller(shared_root, tmp_path, overrides):
    summary = train(make_cfg(shared_root, [*SMOKE, *overrides, "tracking=none"], output=tmp_path))
    assert 0 <= summary["test_acc"] <= 100
    assert len(summary["per_timestep_test_acc"]) == 4
    assert summary["teacher_test_acc"] is not None
    assert (tmp_path / "last.pt").is_file()
