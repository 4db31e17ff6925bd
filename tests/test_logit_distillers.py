"""`tkd`, `tser` and `tks` against slow loop versions written here from the equations, plus smoke runs."""

from __future__ import annotations

import pytest
import torch

from seal_exp.config import InvalidArgument
from seal_exp.distillers.hard_losses import mean_ce, tet, tet_ce
from seal_exp.distillers.tkd import TKD, correct_step_logits
from seal_exp.distillers.tks import TKS
from seal_exp.distillers.tser import TSER
from seal_exp.plan import prepare
from seal_exp.train import train
from tests.conftest import SMOKE, Fixed, make_cfg

# ---------------------------------------------------------------- loop oracles, one row at a time


def softmax_row(v: torch.Tensor, tau: float) -> torch.Tensor:
    e = [torch.exp((v[k] - v.max().detach()) / tau) for k in range(len(v))]
    total = sum(e)
    return torch.stack([x / total for x in e])


def kl_row(q_logits: torch.Tensor, p_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · Σ_k q_k (log q_k − log p_k), q = σ_τ(q_logits) (detached), p = σ_τ(p_logits)."""
    q = softmax_row(q_logits.detach(), tau)
    p = softmax_row(p_logits, tau)
    return tau**2 * sum(q[k] * (torch.log(q[k]) - torch.log(p[k])) for k in range(len(q)))


def soft_ce_row(
    q_logits: torch.Tensor, p_logits: torch.Tensor, tau: float, student_tau: float
) -> torch.Tensor:
    """τ² · Σ_k −q_k log p_k, q = σ_τ(q_logits) (detached), p = σ_τs(p_logits)."""
    q = softmax_row(q_logits.detach(), tau)
    p = softmax_row(p_logits, student_tau)
    return tau**2 * sum(-q[k] * torch.log(p[k]) for k in range(len(q)))


def entropy_row(v: torch.Tensor, tau: float) -> torch.Tensor:
    p = softmax_row(v, tau)
    return -sum(p[k] * torch.log(p[k]) for k in range(len(p)))


def ce_row(v: torch.Tensor, label: int) -> torch.Tensor:
    return -torch.log(softmax_row(v, 1.0)[label])


def argmax_row(v: torch.Tensor) -> int:
    return max(range(len(v)), key=lambda k: (v[k].item(), -k))  # the first index of the max


def tet_ce_oracle(Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    T, B, _ = Z.shape
    return sum(ce_row(Z[t, b], int(y[b])) for t in range(T) for b in range(B)) / (T * B)


def mean_ce_oracle(Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    T, B, _ = Z.shape
    return sum(ce_row(sum(Z[t, b] for t in range(T)) / T, int(y[b])) for b in range(B)) / B


def correct_steps_oracle(Z: torch.Tensor, y: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per sample: sum or mean of the detached Z[t, b] with argmax = y_b; zeros when there is none."""
    T, B, K = Z.shape
    rows = []
    for b in range(B):
        picked = [Z[t, b].detach() for t in range(T) if argmax_row(Z[t, b]) == int(y[b])]
        if not picked:
            rows.append(torch.zeros(K, dtype=Z.dtype))
        elif reduce == "sum":
            rows.append(sum(picked))
        else:
            rows.append(sum(picked) / len(picked))
    return torch.stack(rows)


def per_timestep_kd_oracle(Z: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/T) Σ_t τ² · mean_b KL(σ_τ(target_b) ‖ σ_τ(Z[t, b]))."""
    T, B, _ = Z.shape
    return sum(sum(kl_row(target[b], Z[t, b], tau) for b in range(B)) / B for t in range(T)) / T


def tkd_oracle(Z, A, y, alpha=0.2, beta=0.5, tau=3.0, self_teacher="correct_mean"):
    """(ce, kd, self) unweighted: tet_ce, (1/T)Σ_t KD_τ(Z[t], A), (1/T)Σ_t KD_τ(Z[t], ẑ)."""
    if self_teacher == "correct_mean":
        z_hat = correct_steps_oracle(Z, y, "mean")
    else:
        z_hat = (sum(Z[t] for t in range(Z.shape[0])) / Z.shape[0]).detach()
    return tet_ce_oracle(Z, y), per_timestep_kd_oracle(Z, A, tau), per_timestep_kd_oracle(Z, z_hat, tau)


def tser_oracle(Z, A, y, tau=4.0):
    """(ce, kd, entropy) unweighted: tet_ce, (1/T)Σ_t KD_τ(Z[t], A), (1/T)Σ_t mean_b H(σ_τ(Z[t, b]))."""
    T, B, _ = Z.shape
    entropy = sum(entropy_row(Z[t, b], tau) for t in range(T) for b in range(B)) / (T * B)
    return tet_ce_oracle(Z, y), per_timestep_kd_oracle(Z, A, tau), entropy


def tks_oracle(Z, y, tau=3.0, teacher_reduce="sum", temper_student=False):
    """(ce, soft) unweighted: CE(z̄, y) and (1/T)Σ_t τ² mean_b Σ_k −σ_τ(teacher)_k log softmax(Z[t])_k
    (the student side divided by τ too with temper_student)."""
    T, B, _ = Z.shape
    teacher = correct_steps_oracle(Z, y, teacher_reduce)
    s_tau = tau if temper_student else 1.0
    soft = sum(sum(soft_ce_row(teacher[b], Z[t, b], tau, s_tau) for b in range(B)) / B for t in range(T)) / T
    return mean_ce_oracle(Z, y), soft


# ---------------------------------------------------------------- fixtures


def fixed_inputs(T: int = 4, B: int = 6, K: int = 5, seed: int = 0):
    """Random float64 logits where sample 0 is never right, sample 1 always right, the rest mixed."""
    g = torch.Generator().manual_seed(seed)
    Z = 2 * torch.randn(T, B, K, generator=g, dtype=torch.float64)
    A = 3 * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    Z[:, 0, y[0]] = Z[:, 0].amin(-1) - 1.0  # no correct timestep
    Z[:, 1, y[1]] = Z[:, 1].amax(-1) + 1.0  # every timestep correct
    for t in range(T):  # sample 2: exactly the first half of the timesteps correct
        if t < T // 2:
            Z[t, 2, y[2]] = Z[t, 2].amax() + 0.5
        else:
            Z[t, 2, y[2]] = Z[t, 2].amin() - 0.5
    return Z, A, y


def correct_counts(Z: torch.Tensor, y: torch.Tensor) -> list[int]:
    return [sum(argmax_row(Z[t, b]) == int(y[b]) for t in range(Z.shape[0])) for b in range(Z.shape[1])]


def value_and_grad(distiller, y: torch.Tensor):
    """Total loss, the terms, and the gradient of the total w.r.t. the student's logits."""
    x = torch.zeros(len(y), 1)
    logits, terms = distiller(x, y)
    total = sum(terms.values())
    (grad,) = torch.autograd.grad(total, distiller.student.logits)
    return total, terms, grad, logits


def oracle_grad(loss_fn, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Z = Z.detach().clone().requires_grad_(True)
    loss = loss_fn(Z)
    (g,) = torch.autograd.grad(loss, Z)
    return loss.detach(), g


def test_fixture_mixes_never_always_and_partly_correct_samples():
    for seed in (0, 1, 2):
        Z, _, y = fixed_inputs(seed=seed)
        counts = correct_counts(Z, y)
        assert counts[0] == 0 and counts[1] == 4 and counts[2] == 2


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("seed", SEEDS)
def test_correct_step_target_matches_loop_oracle(seed, reduce):
    """Zero logits for the never-correct sample, all steps for the always-correct one; detached."""
    Z, _, y = fixed_inputs(seed=seed)
    Z.requires_grad_(True)
    got = correct_step_logits(Z, y, reduce)
    assert not got.requires_grad
    assert torch.allclose(got, correct_steps_oracle(Z, y, reduce), atol=1e-12)
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    want_1 = Z[:, 1].detach().sum(0) / (1 if reduce == "sum" else Z.shape[0])
    assert torch.allclose(got[1], want_1, atol=1e-12)


# ---------------------------------------------------------------- tkd


@pytest.mark.parametrize("self_teacher", ["correct_mean", "ensemble"])
@pytest.mark.parametrize("seed", SEEDS)
def test_tkd_matches_loop_oracle_values_and_gradients(seed, self_teacher):
    Z, A, y = fixed_inputs(seed=seed)
    tkd = TKD(Fixed(Z), Fixed(A), self_teacher=self_teacher)
    total, _, grad, logits = value_and_grad(tkd, y)

    def oracle(z):
        ce, kd, self_kd = tkd_oracle(z, A, y, self_teacher=self_teacher)
        return ce + 0.2 * kd + 0.5 * self_kd

    want, want_grad = oracle_grad(oracle, Z)
    assert logits.shape == Z.shape
    assert torch.allclose(total, want, atol=1e-10)
    assert torch.allclose(grad, want_grad, atol=1e-6)


@pytest.mark.parametrize("self_teacher", ["correct_mean", "ensemble"])
def test_tkd_terms_are_weighted_and_sum_to_the_loss(self_teacher):
    Z, A, y = fixed_inputs(seed=5)
    tkd = TKD(Fixed(Z), Fixed(A), alpha=0.3, beta=0.7, tau=2.0, self_teacher=self_teacher)
    total, terms, _, _ = value_and_grad(tkd, y)
    ce, kd, self_kd = tkd_oracle(Z, A, y, tau=2.0, self_teacher=self_teacher)
    assert set(terms) == {"ce", "kd", "self"}
    assert torch.allclose(terms["ce"], ce, atol=1e-10)
    assert torch.allclose(terms["kd"], 0.3 * kd, atol=1e-10)
    assert torch.allclose(terms["self"], 0.7 * self_kd, atol=1e-10)
    assert torch.allclose(total, ce + 0.3 * kd + 0.7 * self_kd, atol=1e-10)


def test_tkd_self_teachers_differ_and_agree_when_every_step_is_correct():
    Z, A, y = fixed_inputs(seed=6)
    x = torch.zeros(len(y), 1)
    mean = TKD(Fixed(Z), Fixed(A), self_teacher="correct_mean")(x, y)[1]["self"]
    ens = TKD(Fixed(Z), Fixed(A), self_teacher="ensemble")(x, y)[1]["self"]
    assert not torch.allclose(mean, ens)
    Z_right = Z + 50 * torch.nn.functional.one_hot(y, Z.shape[-1]).to(Z.dtype)  # right at every step
    mean = TKD(Fixed(Z_right), Fixed(A), self_teacher="correct_mean")(x, y)[1]["self"]
    ens = TKD(Fixed(Z_right), Fixed(A), self_teacher="ensemble")(x, y)[1]["self"]
    assert torch.allclose(mean, ens, atol=1e-12)


def test_tkd_with_zero_weights_is_its_hard_loss():
    Z, A, y = fixed_inputs(seed=7)
    for hard in (tet_ce, mean_ce, tet):
        total, terms, _, _ = value_and_grad(TKD(Fixed(Z), Fixed(A), alpha=0.0, beta=0.0, hard_loss=hard), y)
        assert torch.equal(total.detach(), hard(Z, y))
        assert terms["kd"].item() == 0.0 and terms["self"].item() == 0.0


# ---------------------------------------------------------------- tser


@pytest.mark.parametrize("seed", SEEDS)
def test_tser_matches_loop_oracle_values_and_gradients(seed):
    Z, A, y = fixed_inputs(seed=seed)
    total, _, grad, logits = value_and_grad(TSER(Fixed(Z), Fixed(A)), y)

    def oracle(z):
        ce, kd, entropy = tser_oracle(z, A, y, tau=4.0)
        return 0.5 * ce + 0.5 * kd - 0.1 * entropy

    want, want_grad = oracle_grad(oracle, Z)
    assert logits.shape == Z.shape
    assert torch.allclose(total, want, atol=1e-10)
    assert torch.allclose(grad, want_grad, atol=1e-6)


def test_tser_terms_are_weighted_and_sum_to_the_loss():
    Z, A, y = fixed_inputs(seed=5)
    total, terms, _, _ = value_and_grad(TSER(Fixed(Z), Fixed(A), alpha=0.3, tau=2.0, gamma=0.25), y)
    ce, kd, entropy = tser_oracle(Z, A, y, tau=2.0)
    assert set(terms) == {"ce", "kd", "entropy"}
    assert torch.allclose(terms["ce"], 0.7 * ce, atol=1e-10)
    assert torch.allclose(terms["kd"], 0.3 * kd, atol=1e-10)
    assert torch.allclose(terms["entropy"], -0.25 * entropy, atol=1e-10)
    assert terms["entropy"].item() < 0  # maximised: subtracted from the loss
    assert torch.allclose(total, 0.7 * ce + 0.3 * kd - 0.25 * entropy, atol=1e-10)


def test_tser_entropy_is_maximised():
    """A gradient step on the entropy term alone raises the per-timestep entropy."""
    Z, A, y = fixed_inputs(seed=8)
    tser = TSER(Fixed(Z), Fixed(A), gamma=1.0)
    _, terms = tser(torch.zeros(len(y), 1), y)
    (grad,) = torch.autograd.grad(terms["entropy"], tser.student.logits)
    before = tser_oracle(Z, A, y)[2]
    after = tser_oracle(Z - 0.1 * grad, A, y)[2]
    assert after > before


# ---------------------------------------------------------------- tks


@pytest.mark.parametrize("temper_student", [False, True])
@pytest.mark.parametrize("teacher_reduce", ["sum", "mean"])
@pytest.mark.parametrize("seed", SEEDS)
def test_tks_matches_loop_oracle_values_and_gradients(seed, teacher_reduce, temper_student):
    Z, _, y = fixed_inputs(seed=seed)
    tks = TKS(Fixed(Z), teacher_reduce=teacher_reduce, temper_student=temper_student)
    tks.start_epoch(4, 10)  # a_e = 1 − (3/10)·0.7 = 0.79
    total, _, grad, logits = value_and_grad(tks, y)

    def oracle(z):
        ce, soft = tks_oracle(z, y, tau=3.0, teacher_reduce=teacher_reduce, temper_student=temper_student)
        return 0.79 * ce + 0.21 * soft

    want, want_grad = oracle_grad(oracle, Z)
    assert logits.shape == Z.shape
    assert torch.allclose(total, want, atol=1e-10)
    assert torch.allclose(grad, want_grad, atol=1e-6)


def test_tks_teacher_reductions_differ():
    Z, _, y = fixed_inputs(seed=6)
    x = torch.zeros(len(y), 1)
    results = []
    for reduce in ("sum", "mean"):
        tks = TKS(Fixed(Z), teacher_reduce=reduce)
        tks.start_epoch(10, 10)
        results.append(tks(x, y)[1]["soft"])
    assert not torch.allclose(*results)


def test_tks_schedule_hands_weight_to_the_soft_loss():
    """a_e = 1 − ((epoch − 1)/epochs)·a: 1 in the first epoch, 1 − 0.9·0.7 = 0.37 in the last of 10."""
    Z, _, y = fixed_inputs(seed=9)
    ce, soft = tks_oracle(Z, y, tau=3.0)
    tks = TKS(Fixed(Z))
    x = torch.zeros(len(y), 1)

    tks.start_epoch(1, 10)
    assert tks.hard_weight() == 1.0
    terms = tks(x, y)[1]
    assert set(terms) == {"ce", "soft"}
    assert torch.allclose(terms["ce"], ce, atol=1e-10)
    assert terms["soft"].item() == 0.0

    tks.start_epoch(10, 10)
    assert tks.hard_weight() == pytest.approx(0.37)
    terms = tks(x, y)[1]
    assert torch.allclose(terms["ce"], 0.37 * ce, atol=1e-10)
    assert torch.allclose(terms["soft"], 0.63 * soft, atol=1e-10)


def test_tks_builds_no_teacher(tmp_path):
    Z, A, _ = fixed_inputs()
    assert TKS.requires_teacher is False
    assert TKS(Fixed(Z), Fixed(A)).teacher is None
    plan = prepare(make_cfg(tmp_path, ["distiller=tks"]))
    assert plan.teacher is None
    assert plan.student.distiller is not None and plan.student.distiller.teacher is None


# ---------------------------------------------------------------- all three


def build(name: str, Z: torch.Tensor, A: torch.Tensor, **kwargs):
    return {"tkd": TKD, "tser": TSER, "tks": TKS}[name](Fixed(Z), Fixed(A), **kwargs)


VARIANTS = [
    ("tkd", {"self_teacher": "correct_mean"}),
    ("tkd", {"self_teacher": "ensemble"}),
    ("tser", {}),
    ("tks", {"teacher_reduce": "sum"}),
    ("tks", {"teacher_reduce": "mean"}),
]


@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize(("name", "kwargs"), VARIANTS)
def test_every_loss_is_finite_on_extreme_logits(name, kwargs, scale):
    g = torch.Generator().manual_seed(11)
    Z = scale * torch.sign(torch.randn(4, 6, 5, generator=g))
    A = scale * torch.sign(torch.randn(6, 5, generator=g))
    y = torch.randint(0, 5, (6,), generator=g)
    distiller = build(name, Z, A, **kwargs)
    distiller.start_epoch(5, 10)  # every term weighted, tks's soft loss included
    total, terms, grad, _ = value_and_grad(distiller, y)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("tkd", {"alpha": -0.1}, "alpha"),
        ("tkd", {"beta": -0.1}, "beta"),
        ("tkd", {"tau": 0.0}, "tau"),
        ("tkd", {"self_teacher": "mean"}, "self_teacher"),
        ("tser", {"alpha": -0.1}, "alpha"),
        ("tser", {"alpha": 1.5}, "alpha"),
        ("tser", {"tau": -1.0}, "tau"),
        ("tser", {"gamma": -0.1}, "gamma"),
        ("tks", {"alpha": -0.1}, "alpha"),
        ("tks", {"alpha": 1.5}, "alpha"),
        ("tks", {"tau": 0.0}, "tau"),
        ("tks", {"teacher_reduce": "max"}, "teacher_reduce"),
    ],
)
def test_arguments_are_validated(name, kwargs, key):
    Z, A, _ = fixed_inputs()
    with pytest.raises(InvalidArgument, match=key) as info:
        build(name, Z, A, **kwargs)
    assert info.value.name == key


def test_switch_errors_name_the_allowed_values():
    Z, A, _ = fixed_inputs()
    with pytest.raises(InvalidArgument, match="correct_mean, ensemble"):
        TKD(Fixed(Z), Fixed(A), self_teacher="mean")
    with pytest.raises(InvalidArgument, match="sum, mean"):
        TKS(Fixed(Z), teacher_reduce="max")


def test_teacher_distillers_need_a_teacher():
    Z, _, _ = fixed_inputs()
    for cls in (TKD, TSER):
        with pytest.raises(ValueError, match="teacher"):
            cls(Fixed(Z), None)


def test_configs_carry_the_spec_defaults(tmp_path):
    tkd = make_cfg(tmp_path, ["distiller=tkd"]).distiller
    assert (tkd.alpha, tkd.beta, tkd.tau, tkd.self_teacher) == (0.2, 0.5, 3.0, "correct_mean")
    assert tkd.hard_loss._target_.endswith("tet_ce")
    tser = make_cfg(tmp_path, ["distiller=tser"]).distiller
    assert (tser.alpha, tser.tau, tser.gamma) == (0.5, 4.0, 0.1)
    assert tser.hard_loss._target_.endswith("tet_ce")
    tks = make_cfg(tmp_path, ["distiller=tks"]).distiller
    assert (tks.alpha, tks.tau, tks.teacher_reduce) == (0.7, 3.0, "sum")
    assert tks.hard_loss._target_.endswith("mean_ce")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "kwargs"), VARIANTS)
def test_losses_do_not_synchronise_the_host(name, kwargs):
    Z, A, y = fixed_inputs(T=4, B=32, K=10)
    distiller = build(name, Z, A, **kwargs).cuda()
    distiller.start_epoch(5, 10)
    y = y.cuda()
    x = torch.zeros(len(y), 1, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, terms = distiller(x, y)
        sum(terms.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- whole runs


@pytest.mark.parametrize("distiller", ["tkd", "tser", "tks"])
def test_smoke_run_of_each_distiller(shared_root, tmp_path, distiller):
    summary = train(
        make_cfg(shared_root, [*SMOKE, f"distiller={distiller}", "tracking=none"], output=tmp_path)
    )
    assert len(summary["per_timestep_test_acc"]) == 4
    assert 0 <= summary["test_acc"] <= 100
    assert (summary["teacher_test_acc"] is None) == (distiller == "tks")
    assert (tmp_path / "summary.json").is_file()
