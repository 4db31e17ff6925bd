"""``self_distill`` (Strong2Weak / Weak2Strong) against a slow loop version written from the equations."""

from __future__ import annotations

import inspect
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seal_exp.config import InvalidArgument
from seal_exp.distillers.hard_losses import mean_ce, tet_ce
from seal_exp.distillers.self_distill import (
    DIRECTIONS,
    KL_REDUCTIONS,
    VARIANTS,
    SelfDistill,
    self_distill_loss,
    step_confidence,
    teaching_pairs,
)
from seal_exp.train import train
from tests.conftest import SMOKE, Fixed, make_cfg

GRID = list(itertools.product(VARIANTS, DIRECTIONS))
GRID_IDS = [f"{v}-{d}" for v, d in GRID]

# ---------------------------------------------------------------- the loop oracle, from the paper's equations


def softmax_row(v: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    m = max(float(x.detach()) for x in v)
    e = [torch.exp((x - m) / alpha) for x in v]
    total = sum(e)
    return [x / total for x in e]


def kl_oracle(
    teacher: list[list[torch.Tensor]], student: list[list[torch.Tensor]], alpha: float, reduction: str
):
    """Σ_b Σ_k q_k (log q_k − log p_k), q = softmax(t_b/α), p = softmax(s_b/α), then the reduction."""
    B, K = len(student), len(student[0])
    total = 0.0
    for b in range(B):
        q, p = softmax_row(teacher[b], alpha), softmax_row(student[b], alpha)
        total = total + sum(q[k] * (torch.log(q[k]) - torch.log(p[k])) for k in range(K))
    return {"batchmean": total / B, "mean": total / (B * K), "sum": total}[reduction]


def confidence_oracle(Z: torch.Tensor) -> list[float]:
    """c_t = mean_b max_k softmax(Z[t, b]) (temperature 1), as plain floats."""
    T, B, K = Z.shape
    out = []
    for t in range(T):
        acc = 0.0
        for b in range(B):
            row = [float(Z[t, b, k].detach()) for k in range(K)]
            m = max(row)
            e = [math.exp(x - m) for x in row]
            acc += max(e) / sum(e)
        out.append(acc / B)
    return out


def sd_oracle(
    Z: torch.Tensor,
    direction: str = "s2w",
    variant: str = "pair",
    alpha: float = 2.0,
    detach_teacher: bool = True,
    reduction: str = "batchmean",
    scale: bool = False,
) -> torch.Tensor:
    T, B, K = Z.shape
    if T == 1:
        return torch.zeros((), dtype=Z.dtype)
    c = confidence_oracle(Z)
    strong = max(range(T), key=lambda t: (c[t], -t))  # first index of the max
    weak = min(range(T), key=lambda t: (c[t], t))  # first index of the min

    def rows(t: int, teaching: bool) -> list[list[torch.Tensor]]:
        src = Z.detach() if (teaching and detach_teacher) else Z
        return [[src[t, b, k] for k in range(K)] for b in range(B)]

    def kl(teacher_t: int, student_t: int) -> torch.Tensor:
        return kl_oracle(rows(teacher_t, True), rows(student_t, False), alpha, reduction)

    teacher, student = (strong, weak) if direction == "s2w" else (weak, strong)
    if variant == "pair":
        loss = kl(teacher, student)
    elif variant == "ensemble_teacher":
        others = [t for t in range(T) if t != student]
        src = Z.detach() if detach_teacher else Z
        mix = [[sum(src[t, b, k] for t in others) / len(others) for k in range(K)] for b in range(B)]
        loss = kl_oracle(mix, rows(student, False), alpha, reduction)
    elif variant == "ensemble_student":
        others = [t for t in range(T) if t != teacher]
        loss = sum(kl(teacher, t) for t in others) / len(others)
    elif variant == "simultaneous":
        loss = kl(strong, weak) + kl(weak, strong)
    else:  # cascade
        ranked = sorted(range(T), key=lambda t: (-c[t], t))
        pairs = list(itertools.pairwise(ranked))
        if direction == "w2s":
            pairs = [(j, i) for i, j in pairs]
        loss = sum(kl(i, j) for i, j in pairs) / (T - 1)
    return loss * alpha**2 if scale else loss


def fixed_logits(T: int = 5, B: int = 6, K: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.5, 3.0, T, dtype=torch.float64)[torch.randperm(T, generator=g)]
    Z = spread.view(T, 1, 1) * torch.randn(T, B, K, generator=g, dtype=torch.float64)
    return Z.requires_grad_(True)


def grad_of(loss_fn, Z: torch.Tensor) -> torch.Tensor:
    Z = Z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(Z), Z)
    return g


# ---------------------------------------------------------------- golden tests


def test_confidence_matches_the_loop_oracle():
    Z = fixed_logits()
    c = step_confidence(Z)
    assert c.shape == (Z.shape[0],) and not c.requires_grad
    assert torch.allclose(c, torch.tensor(confidence_oracle(Z), dtype=c.dtype), atol=1e-12)


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "no_detach"])
@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_oracle_values_and_gradients(seed, variant, direction, detach):
    Z = fixed_logits(seed=seed)
    c = confidence_oracle(Z)
    assert len(set(c)) == len(c), "fixture should have distinct confidences"

    def impl(z):
        return self_distill_loss(z, direction, variant, detach_teacher=detach)

    def loop(z):
        return sd_oracle(z, direction, variant, detach_teacher=detach)

    assert torch.allclose(impl(Z), loop(Z), atol=1e-10)
    assert torch.allclose(grad_of(impl, Z), grad_of(loop, Z), atol=1e-6)


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("variant", ["pair", "cascade", "ensemble_teacher"])
def test_switches_match_loop_oracle(variant, reduction, scale):
    Z = fixed_logits(seed=2)

    def impl(z):
        return self_distill_loss(z, "w2s", variant, 1.5, True, reduction, scale)

    def loop(z):
        return sd_oracle(z, "w2s", variant, 1.5, True, reduction, scale)

    assert torch.allclose(impl(Z), loop(Z), atol=1e-10)
    assert torch.allclose(grad_of(impl, Z), grad_of(loop, Z), atol=1e-6)


def test_reductions_and_alpha_scaling_relate_as_documented():
    Z = fixed_logits(seed=3)
    K = Z.shape[-1]
    batchmean = self_distill_loss(Z, kl_reduction="batchmean")
    assert torch.allclose(self_distill_loss(Z, kl_reduction="mean"), batchmean / K, atol=1e-14)
    assert torch.allclose(self_distill_loss(Z, kl_reduction="sum"), batchmean * Z.shape[1], atol=1e-12)
    assert torch.allclose(self_distill_loss(Z, scale_by_alpha_sq=True), 4 * batchmean, atol=1e-14)


# ---------------------------------------------------------------- which timesteps enter

# Z[t, b] = s_t · v_b: a larger s_t makes every row sharper, hence more confident.
# Confidence ranking (decreasing): 1, 3, 4, 0, 2 -> strong = 1, weak = 2.
SHARPNESS = [1.0, 3.0, 0.5, 2.0, 1.5]
RANKED = [1, 3, 4, 0, 2]
STRONG, WEAK = 1, 2
OTHERS_OF = {t: [u for u in range(5) if u != t] for t in range(5)}
# (teacher steps, student steps) of each KL; for ensemble_teacher the teacher is the mean of the steps listed.
EXPECTED = {
    ("pair", "s2w"): [([STRONG], WEAK)],
    ("pair", "w2s"): [([WEAK], STRONG)],
    ("ensemble_teacher", "s2w"): [(OTHERS_OF[WEAK], WEAK)],
    ("ensemble_teacher", "w2s"): [(OTHERS_OF[STRONG], STRONG)],
    ("ensemble_student", "s2w"): [([STRONG], t) for t in OTHERS_OF[STRONG]],
    ("ensemble_student", "w2s"): [([WEAK], t) for t in OTHERS_OF[WEAK]],
    ("simultaneous", "s2w"): [([STRONG], WEAK), ([WEAK], STRONG)],
    ("simultaneous", "w2s"): [([STRONG], WEAK), ([WEAK], STRONG)],
    ("cascade", "s2w"): [([i], j) for i, j in itertools.pairwise(RANKED)],
    ("cascade", "w2s"): [([j], i) for i, j in itertools.pairwise(RANKED)],
}


def hand_made_logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    v = torch.randn(4, 6, generator=g, dtype=torch.float64)
    return torch.stack([s * v for s in SHARPNESS])


def test_the_hand_made_example_has_the_intended_confidence_ranking():
    c = step_confidence(hand_made_logits())
    assert torch.sort(c, descending=True).indices.tolist() == RANKED


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "no_detach"])
@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
def test_picks_exactly_the_timesteps_the_spec_names(variant, direction, detach):
    """Value: the KLs of the listed steps (torch's kl_div); gradient: only where those steps learn."""
    Z = hand_made_logits()
    pairs = EXPECTED[(variant, direction)]
    kls = []
    for teachers, student in pairs:
        target = Z[teachers].mean(0)
        target = target.detach() if detach else target
        kls.append(
            F.kl_div(
                F.log_softmax(Z[student] / 2, -1),
                F.log_softmax(target / 2, -1),
                reduction="batchmean",
                log_target=True,
            )
        )
    expected = sum(kls) if variant == "simultaneous" else sum(kls) / len(kls)
    Zg = Z.clone().requires_grad_(True)
    loss = self_distill_loss(Zg, direction, variant, detach_teacher=detach)
    assert torch.allclose(loss, expected, atol=1e-12)

    (grad,) = torch.autograd.grad(loss, Zg)
    reached = {t for t in range(5) if grad[t].abs().max() > 0}
    students = {s for _, s in pairs}
    teachers = {t for ts, _ in pairs for t in ts}
    assert reached == (students if detach else students | teachers)


@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
def test_detach_teacher_decides_whether_the_teaching_step_gets_gradient(variant, direction):
    """The step that only teaches (never a student) gets gradient exactly when detach_teacher is false."""
    pairs = EXPECTED[(variant, direction)]
    only_teaching = {t for ts, _ in pairs for t in ts} - {s for _, s in pairs}
    if variant == "simultaneous":
        assert not only_teaching  # both extremes are students there
        return
    Z = hand_made_logits()
    for detach in (True, False):
        grad = grad_of(lambda z, d=detach: self_distill_loss(z, direction, variant, detach_teacher=d), Z)
        for t in only_teaching:
            assert bool(grad[t].abs().max() > 0) is (not detach), (t, detach)


def test_ties_go_to_the_first_index():
    v = torch.randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    Z = torch.stack([2 * v, 0.5 * v, 2 * v, 0.5 * v, v])  # strong: 0 = 2; weak: 1 = 3
    assert [x.tolist() for x in teaching_pairs(Z, "s2w", "pair")] == [[0], [1]]
    assert [x.tolist() for x in teaching_pairs(Z, "w2s", "pair")] == [[1], [0]]
    teachers, students = teaching_pairs(Z, "s2w", "cascade")
    assert teachers.tolist() == [0, 2, 4, 1] and students.tolist() == [2, 4, 1, 3]
    assert torch.allclose(self_distill_loss(Z, variant="cascade"), sd_oracle(Z, variant="cascade"))


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
def test_labels_never_enter_the_sd_term(variant, direction):
    Z = fixed_logits(seed=7)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    distiller = SelfDistill(Fixed(Z), variant=variant, direction=direction)
    x = torch.zeros(len(y), 1)
    _, terms = distiller(x, y)
    _, permuted = distiller(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))])
    _, other = distiller(x, torch.full_like(y, 6))
    assert torch.equal(terms["sd"], permuted["sd"]) and torch.equal(terms["sd"], other["sd"])
    assert not torch.equal(terms["ce"], other["ce"])
    assert "labels" not in inspect.signature(self_distill_loss).parameters


@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
def test_one_timestep_gives_exactly_zero(variant, direction):
    Z = fixed_logits(T=1)
    y = torch.zeros(Z.shape[1], dtype=torch.long)
    _, terms = SelfDistill(Fixed(Z), variant=variant, direction=direction)(torch.zeros(len(y), 1), y)
    assert terms["sd"].item() == 0.0 and torch.isfinite(sum(terms.values()))


def test_identical_timesteps_give_zero():
    same = fixed_logits(T=1).detach().expand(4, -1, -1)
    for variant, direction in GRID:
        assert abs(self_distill_loss(same, direction, variant).item()) < 1e-12


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
def test_finite_on_extreme_logits(variant, direction, scale, detach):
    g = torch.Generator().manual_seed(11)
    Z = scale * torch.randn(4, 6, 5, generator=g)
    Z[0] = scale * torch.sign(Z[0])  # one saturated step, the others spread
    Z.requires_grad_(True)
    loss = self_distill_loss(Z, direction, variant, detach_teacher=detach)
    (grad,) = torch.autograd.grad(loss, Z)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


# ---------------------------------------------------------------- the distiller


def test_terms_are_the_hard_loss_and_the_weighted_sd():
    Z = fixed_logits(seed=8)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    x = torch.zeros(len(y), 1)
    logits, terms = SelfDistill(Fixed(Z), lam=0.7, variant="cascade", direction="w2s")(x, y)
    assert set(terms) == {"ce", "sd"} and logits.shape == Z.shape
    assert torch.allclose(terms["ce"], mean_ce(Z, y))
    assert torch.allclose(terms["sd"], 0.7 * sd_oracle(Z, "w2s", "cascade"), atol=1e-10)
    _, tet_terms = SelfDistill(Fixed(Z), hard_loss=tet_ce)(x, y)
    assert torch.allclose(tet_terms["ce"], tet_ce(Z, y))


def test_no_teacher_is_kept_even_when_one_is_passed():
    Z = fixed_logits()
    assert SelfDistill.requires_teacher is False
    assert SelfDistill(Fixed(Z), Fixed(Z[0])).teacher is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lam", -0.1),
        ("alpha_s", 0.0),
        ("direction", "both"),
        ("variant", "ensemble"),
        ("kl_reduction", "none"),
        ("detach_teacher", "yes"),
        ("scale_by_alpha_sq", 1),
    ],
)
def test_arguments_are_validated(name, value):
    with pytest.raises(InvalidArgument, match=name) as info:
        SelfDistill(Fixed(fixed_logits()), **{name: value})
    assert info.value.name == name


def test_config_defaults():
    cfg = make_cfg(Path("/nonexistent"), ["distiller=self_distill"]).distiller
    assert cfg.hard_loss._target_.endswith("hard_losses.mean_ce")
    assert (cfg.lam, cfg.alpha_s, cfg.direction, cfg.variant) == (1.0, 2.0, "s2w", "pair")
    assert (cfg.detach_teacher, cfg.kl_reduction, cfg.scale_by_alpha_sq) == (True, "batchmean", False)


def test_smoke_run_builds_and_trains_no_teacher(tmp_path):
    summary = train(make_cfg(tmp_path, [*SMOKE, "distiller=self_distill", "tracking=none"]))
    assert summary["teacher_test_acc"] is None
    assert 0 <= summary["test_acc"] <= 100 and len(summary["per_timestep_test_acc"]) == 4
    assert not (tmp_path / ".cache" / "teachers").exists()


def test_smoke_run_of_another_variant(shared_root, tmp_path):
    overrides = ["distiller.variant=cascade", "distiller.direction=w2s", "distiller.detach_teacher=false"]
    summary = train(
        make_cfg(
            shared_root,
            [*SMOKE, "distiller=self_distill", *overrides, "tracking=none"],
            output=tmp_path,
        )
    )
    assert summary["teacher_test_acc"] is None and 0 <= summary["test_acc"] <= 100
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("variant", "direction"), GRID, ids=GRID_IDS)
def test_does_not_synchronise_the_host(variant, direction):
    Z = fixed_logits(T=4, B=32, K=10).detach().cuda().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        self_distill_loss(Z, direction, variant, detach_teacher=False).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
