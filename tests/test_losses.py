"""The losses of `none`, `kd` and `seal` against slow loop versions written here from the equations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from seal_exp.distillers.divergence import kd_loss
from seal_exp.distillers.hard_losses import mean_ce, tet, tet_ce
from seal_exp.distillers.kd import KD
from seal_exp.distillers.none import NoDistillation
from seal_exp.distillers.seal import SeAl, ela_loss, sta_loss
from tests.conftest import Fixed

# ---------------------------------------------------------------- loop oracles, one row at a time


def kl_row(q_logits: torch.Tensor, p_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · Σ_k q_k (log q_k − log p_k), q = softmax(q_logits/τ), p = softmax(p_logits/τ)."""
    q = torch.softmax(q_logits / tau, dim=0)
    p = torch.softmax(p_logits / tau, dim=0)
    return tau**2 * sum(q[k] * (torch.log(q[k]) - torch.log(p[k])) for k in range(len(q)))


def ela_oracle(Z: torch.Tensor, A: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    T, B, K = Z.shape
    total = 0.0
    for t in range(T):
        rows = []
        for b in range(B):
            label = int(y[b])
            pred = max(range(K), key=lambda k: (Z[t, b, k].item(), -k))  # first index of the max
            s = [Z[t, b, k] for k in range(K)]
            a = [A[b, k] for k in range(K)]
            if pred != label:
                s[pred] = Z[t, b, label]
                low = min(A[b, label].item(), A[b, pred].item())
                a[label] = a[pred] = torch.tensor(low, dtype=A.dtype)
            rows.append(kl_row(torch.stack(a).detach(), torch.stack(s), tau))
        total = total + sum(rows) / B
    return total / T


def sta_oracle(Z: torch.Tensor, tau: float) -> torch.Tensor:
    T, B, K = Z.shape
    if T == 1:
        return torch.zeros((), dtype=Z.dtype)
    total = 0.0
    for b in range(B):
        kappa = []
        for t in range(T):
            p = torch.softmax(Z[t, b].detach(), dim=0)
            entropy = -sum(p[k] * math.log(p[k].item() + 1e-8) for k in range(K))
            kappa.append(1 - entropy / math.log(K))
        for i in range(T):
            others = [j for j in range(T) if j != i]
            scores = []
            for j in others:
                u, v = Z[i, b].detach(), Z[j, b].detach()
                cos = float(u @ v) / (float(u.norm()) * float(v.norm()))
                scores.append(float(kappa[j]) * cos)
            m = max(scores)
            w = [math.exp(s - m) for s in scores]
            w = [x / sum(w) for x in w]
            target = sum(wj * Z[j, b].detach() for wj, j in zip(w, others, strict=True))
            total = total + kl_row(target, Z[i, b], tau)
    return total / (T * B)


def kd_oracle(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    return sum(kl_row(t[b].detach(), s[b], tau) for b in range(s.shape[0])) / s.shape[0]


def fixed_inputs(T: int = 4, B: int = 6, K: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Z = (2 * torch.randn(T, B, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    A = 3 * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    return Z, A, y


def grad_of(loss_fn, Z: torch.Tensor) -> torch.Tensor:
    Z = Z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(Z), Z)
    return g


# ---------------------------------------------------------------- ELA


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ela_matches_loop_oracle_values_and_gradients(seed):
    Z, A, y = fixed_inputs(seed=seed)
    wrong = (Z.argmax(-1) != y).float().mean().item()
    assert 0 < wrong < 1, "fixture should mix correct and erroneous timesteps"
    assert torch.allclose(ela_loss(Z, A, y, 3.0), ela_oracle(Z, A, y, 3.0), atol=1e-10)
    g_impl = grad_of(lambda z: ela_loss(z, A, y, 3.0), Z)
    g_loop = grad_of(lambda z: ela_oracle(z, A, y, 3.0), Z)
    assert torch.allclose(g_impl, g_loop, atol=1e-6)


def test_ela_worked_example_from_the_spec():
    """τ=3, K=5, y=0: plain KD gives −1.54 / +0.85 on classes 0 / 1; ELA gives ≈ +0.25 / exactly 0."""
    student = torch.tensor([[[2.0, 3.0, 0.0, -1.0, 0.5]]], dtype=torch.float64)
    teacher = torch.tensor([[8.0, 1.0, 0.0, -1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    g_ela = grad_of(lambda z: ela_loss(z, teacher, y, 3.0), student)[0, 0]
    g_kd = grad_of(lambda z: kd_loss(z[0], teacher, 3.0), student)[0, 0]
    assert g_kd[0].item() == pytest.approx(-1.54, abs=0.005)
    assert g_kd[1].item() == pytest.approx(0.85, abs=0.005)
    assert g_ela[0].item() == pytest.approx(0.25, abs=0.005)
    assert g_ela[1].item() == 0.0


def test_ela_is_per_timestep_kd_when_every_step_is_correct():
    Z, A, y = fixed_inputs(seed=3)
    Z = Z.detach() + 50 * F.one_hot(y, Z.shape[-1]).to(Z.dtype)  # the label wins at every step
    per_step = torch.stack([kd_loss(Z[t], A, 3.0) for t in range(Z.shape[0])]).mean()
    assert torch.allclose(ela_loss(Z, A, y, 3.0), per_step, atol=1e-12)


def test_ela_ignores_the_teachers_correctness():
    """Only the student's own prediction decides whether a step is erroneous."""
    Z, A, y = fixed_inputs(seed=4)
    A_wrong = A.clone()
    A_wrong[torch.arange(len(y)), y] = -20.0  # the teacher is wrong everywhere
    assert torch.allclose(ela_loss(Z, A_wrong, y, 3.0), ela_oracle(Z, A_wrong, y, 3.0), atol=1e-10)


# ---------------------------------------------------------------- STA


@pytest.mark.parametrize("seed", [0, 1])
def test_sta_matches_loop_oracle_values_and_gradients(seed):
    Z, _, _ = fixed_inputs(seed=seed)
    assert torch.allclose(sta_loss(Z, 3.0), sta_oracle(Z, 3.0), atol=1e-10)
    g_impl = grad_of(lambda z: sta_loss(z, 3.0), Z)
    g_loop = grad_of(lambda z: sta_oracle(z, 3.0), Z)
    assert torch.allclose(g_impl, g_loop, atol=1e-6)


def test_sta_is_zero_for_one_timestep_and_for_identical_timesteps():
    Z, _, _ = fixed_inputs(T=1)
    assert sta_loss(Z, 3.0).item() == 0.0
    same = fixed_inputs(T=1)[0].detach().expand(4, -1, -1)
    assert abs(sta_loss(same, 3.0).item()) < 1e-12
    assert sta_loss(fixed_inputs(T=4)[0], 3.0).item() > 1e-3


def test_sta_does_not_use_labels():
    import inspect

    assert "labels" not in inspect.signature(sta_loss).parameters


# ---------------------------------------------------------------- hard losses and KD


def test_hard_losses_match_their_definitions():
    Z, _, y = fixed_inputs(seed=5)
    Z = Z.detach()
    per_t = sum(F.cross_entropy(Z[t], y) for t in range(Z.shape[0])) / Z.shape[0]
    assert torch.allclose(tet_ce(Z, y), per_t, atol=1e-12)
    assert torch.allclose(mean_ce(Z, y), F.cross_entropy(Z.mean(0), y), atol=1e-12)
    mse = sum(((Z[t] - 1.0) ** 2).mean() for t in range(Z.shape[0])) / Z.shape[0]
    assert torch.allclose(tet(Z, y), 0.999 * per_t + 1e-3 * mse, atol=1e-12)


def test_kd_loss_matches_loop_oracle():
    Z, A, _ = fixed_inputs(seed=6)
    s = Z.mean(0)
    assert torch.allclose(kd_loss(s, A, 4.0), kd_oracle(s, A, 4.0), atol=1e-10)


# ---------------------------------------------------------------- the distillers built on them


def test_seal_with_zero_weights_equals_none():
    Z, A, y = fixed_inputs(seed=7)
    x = torch.zeros(len(y), 1)
    seal = SeAl(Fixed(Z), Fixed(A), alpha=0.0, beta=0.0)
    alone = NoDistillation(Fixed(Z))
    l_seal = sum(seal(x, y)[1].values())
    l_none = sum(alone(x, y)[1].values())
    assert torch.equal(l_seal, l_none)


def test_seal_total_is_the_weighted_sum_of_its_terms():
    Z, A, y = fixed_inputs(seed=8)
    x = torch.zeros(len(y), 1)
    logits, terms = SeAl(Fixed(Z), Fixed(A), alpha=0.6, beta=0.15, tau=3.0)(x, y)
    assert set(terms) == {"ce", "ela", "sta"}
    assert torch.allclose(terms["ce"], tet_ce(Z, y))
    assert torch.allclose(terms["ela"], 0.6 * ela_oracle(Z, A, y, 3.0), atol=1e-10)
    assert torch.allclose(terms["sta"], 0.15 * sta_oracle(Z, 3.0), atol=1e-10)
    assert logits.shape == Z.shape


def test_kd_distiller_terms():
    Z, A, y = fixed_inputs(seed=9)
    x = torch.zeros(len(y), 1)
    _, terms = KD(Fixed(Z), Fixed(A), alpha=0.3, tau=4.0)(x, y)
    assert torch.allclose(terms["ce"], 0.7 * F.cross_entropy(Z.mean(0), y))
    assert torch.allclose(terms["kd"], 0.3 * kd_oracle(Z.mean(0), A, 4.0), atol=1e-10)


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    Z, A, y = fixed_inputs(seed=10)
    teacher = torch.nn.Sequential(torch.nn.BatchNorm1d(1), Fixed(A))
    seal = SeAl(Fixed(Z), teacher)
    seal.train()
    assert seal.student.training and not teacher.training
    loss = sum(seal(torch.zeros(len(y), 1), y)[1].values())
    loss.backward()
    assert teacher[1].logits.grad is None
    assert seal.student.logits.grad is not None


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_every_loss_is_finite_on_extreme_logits(scale):
    g = torch.Generator().manual_seed(11)
    Z = (scale * torch.sign(torch.randn(4, 6, 5, generator=g))).requires_grad_(True)
    A = scale * torch.sign(torch.randn(6, 5, generator=g))
    y = torch.randint(0, 5, (6,), generator=g)
    for loss in (
        ela_loss(Z, A, y, 3.0),
        sta_loss(Z, 3.0),
        tet_ce(Z, y),
        mean_ce(Z, y),
        tet(Z, y),
        kd_loss(Z.mean(0), A, 4.0),
    ):
        (grad,) = torch.autograd.grad(loss, Z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_distiller_arguments_are_validated():
    from seal_exp.config import InvalidArgument

    Z, A, _ = fixed_inputs()
    with pytest.raises(InvalidArgument, match="alpha"):
        SeAl(Fixed(Z), Fixed(A), alpha=-0.1)
    with pytest.raises(InvalidArgument, match="tau"):
        SeAl(Fixed(Z), Fixed(A), tau=0.0)
    with pytest.raises(ValueError, match="teacher"):
        SeAl(Fixed(Z), None)
    assert NoDistillation(Fixed(Z), copy.deepcopy(Fixed(A))).teacher is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_do_not_synchronise_the_host():
    Z, A, y = fixed_inputs(T=4, B=32, K=10)
    Z, A, y = Z.detach().cuda().requires_grad_(True), A.cuda(), y.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = ela_loss(Z, A, y, 3.0) + sta_loss(Z, 3.0) + tet_ce(Z, y)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
