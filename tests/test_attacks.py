"""FGSM and PGD against closed forms written here (a linear model's CE gradient by hand), their bounds, their
seeding, how often they reset a spiking network's state, and which samples they count: only those right both
clean and attacked, so robust accuracy never exceeds clean accuracy."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seal_exp.measures.attacks import (
    ATTACKS,
    PixelSpace,
    Robustness,
    fgsm,
    pgd,
    prediction_logits,
    robust_accuracy,
)
from seal_exp.models.neurons import LIF, reset_spiking_state
from seal_exp.models.spiking_cnn import SpikingConvNet

SPACE = PixelSpace(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))  # CIFAR-10's
C, H, W = 3, 2, 2
D = C * H * W
K = 4


def linear(weight: Tensor, bias: Tensor):
    """f(x_norm) = x_norm.flatten(1) @ W.T + b."""
    return lambda x_norm: x_norm.flatten(1) @ weight.T + bias


def linear_params(seed: int, k: int = K) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, D, generator=g, dtype=torch.float64), torch.randn(
        k, generator=g, dtype=torch.float64
    )


def pixels(batch: int, seed: int) -> Tensor:
    """Pixels mostly inside (0.2, 0.8) plus a few on or next to the borders, so clamping is exercised."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(batch, C, H, W, generator=g, dtype=torch.float64)
    x[0, 0] = 0.0
    x[1, 1] = 1.0
    x[2, 2, 0] = 0.01
    x[3, 0, 1] = 0.995
    return x


def per_channel(values: tuple[float, ...]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, C, 1, 1)


def closed_form_fgsm(
    weight: Tensor, bias: Tensor, x_pix: Tensor, y: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """x_adv and the unclamped step, by hand: with z = n(x) W^T + b and n(x) = (x - mean) / std, the gradient
    of the batch-mean CE is (softmax(z) - onehot(y)) W / B, divided by std per channel (chain rule through n).
    The 1/B does not change the sign."""
    mean, std = per_channel(SPACE.mean), per_channel(SPACE.std)
    x_norm = (x_pix - mean) / std
    z = x_norm.flatten(1) @ weight.T + bias
    g_norm = (torch.softmax(z, dim=1) - F.one_hot(y, weight.shape[0]).double()) @ weight / len(y)
    g_pix = g_norm.view_as(x_pix) / std
    stepped = x_pix + eps * torch.sign(g_pix)
    return stepped.clamp(0, 1), stepped


# ---------------------------------------------------------------- pixel space and predictions


def test_pixel_space_normalises_per_channel_and_back():
    x = pixels(5, seed=1)
    expected = torch.stack([(x[:, c] - SPACE.mean[c]) / SPACE.std[c] for c in range(C)], dim=1)
    torch.testing.assert_close(SPACE.normalise(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(SPACE.to_pixels(expected), x, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="channels"):
        SPACE.normalise(torch.zeros(2, 1, H, W))
    with pytest.raises(ValueError, match="std"):
        PixelSpace(mean=(0.5, 0.5), std=(0.5,))
    with pytest.raises(ValueError, match="std"):
        PixelSpace(mean=(0.5,), std=(0.0,))


def test_prediction_logits_average_timesteps_and_pass_ann_logits():
    z = torch.randn(3, 2, K)
    torch.testing.assert_close(prediction_logits(z), (z[0] + z[1] + z[2]) / 3)
    ann = z[0]
    assert prediction_logits(ann) is ann
    with pytest.raises(ValueError, match=r"\[T, B, K\]"):
        prediction_logits(torch.zeros(K))


# ---------------------------------------------------------------- FGSM against its closed form


def test_fgsm_on_a_linear_model_equals_its_closed_form():
    weight, bias = linear_params(seed=2)
    x = pixels(8, seed=3)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    for eps in (0.03, 0.1):
        expected, stepped = closed_form_fgsm(weight, bias, x, y, eps)
        assert ((stepped < 0) | (stepped > 1)).any(), "the data should make the clamp matter"
        got = fgsm(linear(weight, bias), SPACE, x, y, eps)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        assert not got.requires_grad


def test_fgsm_on_per_timestep_logits_uses_their_time_mean():
    """[T, B, K] from a different linear map per timestep: the attack follows the mean of the T logits,
    i.e. the linear model with the mean weights, and no single timestep's."""
    T = 3
    params = [linear_params(seed=10 + t) for t in range(T)]
    scales = (0.5, 1.0, 2.5)

    def spiking(x_norm: Tensor) -> Tensor:
        return torch.stack([s * linear(w, b)(x_norm) for s, (w, b) in zip(scales, params, strict=True)])

    mean_w = sum(s * w for s, (w, _) in zip(scales, params, strict=True)) / T
    mean_b = sum(s * b for s, (_, b) in zip(scales, params, strict=True)) / T
    x = pixels(6, seed=4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    expected, _ = closed_form_fgsm(mean_w, mean_b, x, y, 0.05)
    torch.testing.assert_close(fgsm(spiking, SPACE, x, y, 0.05), expected, rtol=0, atol=1e-12)
    last_only, _ = closed_form_fgsm(scales[-1] * params[-1][0], scales[-1] * params[-1][1], x, y, 0.05)
    assert not torch.equal(expected, last_only), "the check would not tell the mean from the last timestep"


# ---------------------------------------------------------------- PGD: bounds and seeding


def mlp(seed: int, k: int = K) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, k)).double().eval()


def test_pgd_stays_in_the_eps_ball_and_in_pixel_range():
    model = mlp(seed=5)
    x = pixels(16, seed=6)
    y = torch.arange(16) % K
    for eps in (0.01, 0.03, 0.2, 1.0):
        x_adv = pgd(model, SPACE, x, y, eps, steps=7, step_size=eps / 2, seed=0)
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert not x_adv.requires_grad


def test_pgd_on_a_two_class_linear_model_lands_on_fgsm_vertex():
    """With two classes the CE gradient of a linear model is (p_1 - [y = 1]) (W_1 - W_0) / B through n(x): its
    sign never changes, so the L∞ optimum is FGSM's vertex (closed form), and PGD reaches it from any random
    start, its 2.5·eps of travel covering the 2·eps from the far side of the ball."""
    weight, bias = linear_params(seed=20, k=2)
    weight, bias = weight / 4, bias / 4  # keep softmax off 0 and 1, where the gradient would vanish
    x = pixels(8, seed=21)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    for eps, seed in ((0.03, 0), (0.1, 1), (0.3, 2)):
        expected, _ = closed_form_fgsm(weight, bias, x, y, eps)
        got = pgd(linear(weight, bias), SPACE, x, y, eps, steps=10, step_size=2.5 * eps / 10, seed=seed)
        assert torch.equal(got, expected)


def test_pgd_is_fixed_by_its_seed():
    model = mlp(seed=7)
    x = pixels(8, seed=8)
    y = torch.arange(8) % K

    def run(seed: int, step_size: float) -> Tensor:
        return pgd(model, SPACE, x, y, 0.1, steps=3, step_size=step_size, seed=seed)

    assert torch.equal(run(0, 0.025), run(0, 0.025))
    assert not torch.equal(run(0, 0.025), run(1, 0.025))
    # A negligible step leaves the random start visible: uniform inside the ball, not on its corners.
    start0, start1 = run(0, 1e-9) - x, run(1, 1e-9) - x
    assert not torch.allclose(start0, start1)
    inside = x[(x > 0.2) & (x < 0.8)]
    assert inside.numel() > 0
    offsets = start0[(x > 0.2) & (x < 0.8)]
    assert offsets.abs().max() <= 0.1 + 1e-6
    assert (offsets.abs() < 0.09).float().mean() > 0.5
    assert (offsets > 0).any() and (offsets < 0).any()


# ---------------------------------------------------------------- robust accuracy on a trained model


def blobs(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Three classes of 1-channel 2x2 pixel images: class c has pixel c near 0.7, the others near 0.3."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.full((n, 4), 0.3, dtype=torch.float64)
    x[torch.arange(n), y] = 0.7
    x = x + 0.05 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x.view(n, 1, 2, 2).clamp(0, 1), y


GREY = PixelSpace(mean=(0.45,), std=(0.22,))


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A small MLP fitted on normalised blobs in a few hundred full-batch steps (float64, so the numbers are
    the same on any CPU)."""
    x, y = blobs(300, seed=11)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x_norm = GREY.normalise(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only lose time to threads, several-fold on a busy machine
    try:
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(model(x_norm), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    return model.eval()


def batches_of(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_trained_model(trained):
    """Not a theorem sample by sample (PGD ascends the loss from a random start and can end in another local
    maximum than FGSM's single step), but on this seed PGD wins by many samples where the attacks bite."""
    x, y = blobs(150, seed=13)
    loader = batches_of(GREY.normalise(x), y, 50)
    epsilons = [0.05, 0.1, 0.2]
    with torch.no_grad():  # as an evaluation loop would call it: the attacks turn gradients back on
        one = robust_accuracy(trained, loader, GREY, "fgsm", epsilons, samples=150)
        multi = robust_accuracy(trained, loader, GREY, "pgd", epsilons, samples=150, steps=10, seed=1)
    assert one.clean_acc == multi.clean_acc >= 95
    for eps in epsilons:
        assert multi.acc[eps] <= one.acc[eps] <= one.clean_acc
    assert one.acc[0.2] < one.clean_acc - 30, "a budget half the class contrast should hurt"
    assert multi.acc[0.2] < one.acc[0.2] - 5, "ten steps should find more than one"
    assert multi.step_size == {eps: 2.5 * eps / 10 for eps in epsilons}
    assert (multi.steps, one.steps, one.step_size) == (10, None, None)
    assert all(p.grad is None for p in trained.parameters()), "the attack must not touch parameter gradients"


def test_each_eps_is_seeded_on_its_own(trained):
    """A negligible step leaves the accuracy at the random start's, which depends on the seed; asking for
    another ε first must not change what ε = 0.3 draws."""
    x, y = blobs(150, seed=14)
    loader = batches_of(GREY.normalise(x), y, 50)

    def attack(epsilons: list[float], seed: int = 0) -> Robustness:
        return robust_accuracy(
            trained, loader, GREY, "pgd", epsilons, samples=150, steps=1, step_size=1e-6, seed=seed
        )

    assert len({attack([0.3], seed).acc[0.3] for seed in range(4)}) > 1, "the check would see no seed"
    alone, after_one, after_two = attack([0.3]), attack([0.1, 0.3]), attack([0.1, 0.2, 0.3])
    assert alone.acc[0.3] == after_one.acc[0.3] == after_two.acc[0.3]
    assert after_two.step_size == {0.1: 1e-6, 0.2: 1e-6, 0.3: 1e-6}


# ---------------------------------------------------------------- state resets, sample counts, arguments


class Stateful(nn.Module):
    """A linear model that, like a spiking network, refuses to run again before its state is reset."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, K).double()
        self.dirty = False
        self.forwards = self.resets = 0

    def forward(self, x_norm: Tensor) -> Tensor:
        assert not self.dirty, "forward before reset"
        self.dirty = True
        self.forwards += 1
        return self.fc(x_norm.flatten(1)).unsqueeze(0).expand(4, -1, -1)  # [T, B, K]

    def reset(self) -> None:
        self.dirty = False
        self.resets += 1


@pytest.mark.parametrize(("attack", "per_eps_and_batch"), [("fgsm", 2), ("pgd", 3 + 1)])
def test_reset_follows_every_forward(attack, per_eps_and_batch):
    """1 clean forward per batch, then per ε and batch: fgsm 1 gradient + 1 scoring, pgd steps + 1."""
    torch.manual_seed(15)
    model = Stateful().eval()
    x = pixels(10, seed=16)
    loader = batches_of(SPACE.normalise(x), torch.arange(10) % K, 4)  # batches of 4, 4, 2
    epsilons = [0.05, 0.1]
    robust_accuracy(model, loader, SPACE, attack, epsilons, samples=10, steps=3, reset=model.reset)
    expected = 3 * (1 + len(epsilons) * per_eps_and_batch)
    assert model.forwards == model.resets == expected
    assert not model.dirty


class Constant(nn.Module):
    """Always predicts class 0 (its input gradient is zero, so attacks leave the input as it is); records the
    batch sizes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x_norm: Tensor) -> Tensor:
        self.sizes.append(len(x_norm))
        return torch.tensor([1.0, 0.0], dtype=x_norm.dtype) + 0 * x_norm.flatten(1)[:, :1]


def test_only_the_first_samples_are_counted():
    """Labels 0,0,0,0 | 0,1,1,1 | 1,1: the first 6 hold 5 of class 0, so 5/6 is right only if exactly the
    first 6 are counted (4 would give 4/4, 8 would give 5/8)."""
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    x = SPACE.normalise(pixels(10, seed=17))
    model = Constant()
    result = robust_accuracy(model, iter(batches_of(x, y, 4)), SPACE, "fgsm", [0.1, 0.2], samples=6)
    assert result.samples == 6
    assert result.clean_acc == pytest.approx(500 / 6)
    assert result.acc == {0.1: pytest.approx(500 / 6), 0.2: pytest.approx(500 / 6)}
    # clean: 4, 2; then per ε and batch a gradient and a scoring forward: 4, 4, 2, 2
    assert model.sizes == [4, 2] + [4, 4, 2, 2] * 2, "a one-pass iterator must serve every ε the same samples"
    short = robust_accuracy(Constant(), batches_of(x, y, 4), SPACE, "fgsm", [0.1], samples=50)
    assert short.samples == 10


def test_a_spikingjelly_network_is_attacked_through_its_surrogate_gradients():
    """The project's spiking CNN ([T, B, K] out, membranes kept between calls) with its own reset: the
    surrogate gradient moves the pixels, the parameters' gradients stay untouched, and resetting after each
    forward makes a second evaluation repeat the first."""
    torch.manual_seed(22)
    net = SpikingConvNet(in_channels=C, num_classes=K, T=3, channels=[8], neuron=LIF).eval()
    x = torch.rand(10, C, 4, 4, generator=torch.Generator().manual_seed(23))
    y = torch.arange(10) % K
    loader = batches_of(SPACE.normalise(x), y, 4)
    reset = partial(reset_spiking_state, net)
    x_adv = fgsm(net, SPACE, x, y, 0.05, reset=reset)
    assert (x_adv != x).float().mean() > 0.5, "the surrogate gradient should reach most pixels"
    first = robust_accuracy(net, loader, SPACE, "pgd", [0.05, 0.2], samples=10, steps=2, reset=reset)
    again = robust_accuracy(net, loader, SPACE, "pgd", [0.05, 0.2], samples=10, steps=2, reset=reset)
    assert first == again
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attack": "cw"}, "attack='cw'.*fgsm, pgd"),
        ({"epsilons": [0.0]}, "eps=0.0"),
        ({"epsilons": [0.03, 1.5]}, "eps=1.5"),
        ({"steps": 0}, "steps=0"),
        ({"samples": 0}, "samples=0"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, match):
    args = {"attack": "pgd", "epsilons": [0.03], "samples": 4, "steps": 2} | kwargs
    loader = batches_of(SPACE.normalise(pixels(4, seed=18)), torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=match):
        robust_accuracy(Constant(), loader, SPACE, **args)
    assert set(ATTACKS) == {"fgsm", "pgd"}


def test_direct_attacks_refuse_bad_budgets():
    x, y = pixels(4, seed=19), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        fgsm(Constant(), SPACE, x, y, 0)
    with pytest.raises(ValueError, match="steps"):
        pgd(Constant(), SPACE, x, y, 0.1, steps=0, step_size=0.01)
    with pytest.raises(ValueError, match="step_size"):
        pgd(Constant(), SPACE, x, y, 0.1, steps=1, step_size=0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fgsm(Constant(), SPACE, x, y, 0.1)


def test_results_name_their_metrics_after_their_attack_and_serialise():
    """Each attack's clean accuracy is named after it, so FGSM on 500 samples and PGD on 200 logged into one
    run never share a clean accuracy."""
    result = Robustness(
        attack="pgd", samples=6, clean_acc=90.0, acc={0.01: 80.0, 8 / 255: 50.0}, steps=10,
        step_size={0.01: 0.0025, 8 / 255: 2.5 * 8 / 255 / 10},
    )  # fmt: skip
    assert result.figures() == {
        "robust_acc_pgd_clean": 90.0,
        "robust_acc_pgd_eps0.01": 80.0,
        "robust_acc_pgd_eps0.0313725": 50.0,
    }
    assert result.as_metrics() == result.figures() | {"robust_samples_pgd": 6.0}
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert as_dict["acc"] == {"0.01": 80.0, "0.0313725": 50.0}
    assert as_dict["step_size"]["0.01"] == 0.0025
    assert (as_dict["attack"], as_dict["samples"], as_dict["steps"]) == ("pgd", 6, 10)
    back = Robustness.from_dict(as_dict)
    assert back.acc == {0.01: 80.0, float("0.0313725"): 50.0} and back.step_size[0.01] == 0.0025
    assert (back.attack, back.samples, back.clean_acc, back.steps) == ("pgd", 6, 90.0, 10)
    plain = Robustness(attack="fgsm", samples=4, clean_acc=75.0, acc={0.03: 70.0}, steps=None, step_size=None)
    assert plain.as_dict()["step_size"] is None
    assert Robustness.from_dict(plain.as_dict()) == plain
    assert plain.as_metrics() == {
        "robust_acc_fgsm_clean": 75.0,
        "robust_acc_fgsm_eps0.03": 70.0,
        "robust_samples_fgsm": 4.0,
    }


# ---------------------------------------------------------------- a sample wrong when clean is never robust


class Chirp(nn.Module):
    """Two classes on one pixel x: logits [0, sin(40 x²)], class 1 where the sine is positive. The sine's
    crests come closer as x grows, so one ε-step that climbs the loss carries some samples over a crest:
    samples it gets wrong when clean into their own class, as PGD's random start can too."""

    def forward(self, x_norm: Tensor) -> Tensor:
        wave = torch.sin(40 * GREY.to_pixels(x_norm).flatten(1)[:, 0] ** 2)
        return torch.stack([torch.zeros_like(wave), wave], dim=1)


def chirp_right(x: Tensor, y: Tensor) -> Tensor:
    """Whether the chirp classifies pixels x as y, by its formula."""
    return (torch.sin(40 * x.flatten() ** 2) > 0) == (y == 1)


def chirp_fgsm(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """FGSM on the chirp by hand: with d = sin(40 x²), CE is softplus(-d) for class 1 and softplus(d) for
    class 0, so its gradient has the sign of -d'(x) resp. d'(x), d'(x) = 80 x cos(40 x²)."""
    slope = torch.sign(80 * x * torch.cos(40 * x**2))
    direction = torch.where((y == 1).view(-1, 1, 1, 1), -slope, slope)
    return (x + eps * direction).clamp(0, 1)


def test_a_sample_wrong_when_clean_is_not_counted_when_the_attack_lands_it_on_its_class():
    """Nine pixels, two of each kind the attack can make: right clean and attacked (0.125, 0.165), right
    then wrong (0.255, 0.305), wrong both (0.095, 0.145), and three wrong when clean that FGSM's step
    carries into their class (0.525, 0.605, 0.655). Counting the attacked input alone gives 5/9, more than
    the 4/9 clean; a robust sample must be right both ways: 2/9."""
    x = torch.tensor([0.125, 0.165, 0.255, 0.305, 0.095, 0.145, 0.525, 0.605, 0.655], dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0, 1])
    x = x.view(-1, 1, 1, 1)
    eps = 0.05
    clean, attacked = chirp_right(x, y), chirp_right(chirp_fgsm(x, y, eps), y)
    assert clean.tolist() == [True] * 4 + [False] * 5
    assert attacked.tolist() == [True, True, False, False, False, False, True, True, True]
    assert torch.equal(fgsm(Chirp(), GREY, x, y, eps), chirp_fgsm(x, y, eps))  # the closed form is FGSM's
    result = robust_accuracy(Chirp(), batches_of(GREY.normalise(x), y, 4), GREY, "fgsm", [eps], samples=9)
    assert result.clean_acc == pytest.approx(100 * 4 / 9)
    assert result.acc[eps] == pytest.approx(100 * 2 / 9)  # not 5/9: three of the five were wrong clean
    assert result.acc[eps] <= result.clean_acc


def test_pgd_counts_a_sample_only_if_it_was_right_clean_too():
    """PGD with a negligible step stays where its random start put each sample: in the chirp's narrow
    waves that start lands many samples wrong when clean on their own class. Robust accuracy counts only
    those right both clean and at the start, whatever ε."""
    x = torch.linspace(0.3, 0.95, 40, dtype=torch.float64).view(-1, 1, 1, 1)
    y = torch.arange(40) % 2
    loader = batches_of(GREY.normalise(x), y, 40)  # one batch: the same random start as pgd() with the seed
    clean = chirp_right(x, y)
    for eps, seed in ((0.05, 0), (0.1, 3)):
        start = pgd(Chirp(), GREY, x, y, eps, steps=1, step_size=1e-9, seed=seed)
        at_start = chirp_right(start, y)
        assert (at_start & ~clean).sum() >= 3, "the random start should land some wrong samples right"
        result = robust_accuracy(
            Chirp(), loader, GREY, "pgd", [eps], samples=40, steps=1, step_size=1e-9, seed=seed
        )
        assert result.clean_acc == pytest.approx(100 * int(clean.sum()) / 40)
        assert result.acc[eps] == pytest.approx(100 * int((clean & at_start).sum()) / 40)
        assert result.acc[eps] <= result.clean_acc
