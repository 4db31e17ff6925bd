"""The spiking student, its LIF neuron and the ANN teacher, against the reference semantics."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from spikingjelly.activation_based import surrogate

from seal_exp.config import ConfigError, InvalidArgument
from seal_exp.models import build_student, build_teacher, neuron_factory
from seal_exp.models.neurons import LIF, reset_spiking_state
from seal_exp.training.optim import sgd
from tests.conftest import make_cfg


def lif_oracle(
    x: torch.Tensor, decay: float, hard: bool, detach_reset: bool, alpha: float = 4.0
) -> torch.Tensor:
    """H = d·V + X; S = Θ(H − 1) with a sigmoid surrogate; hard reset V = H(1 − S), soft V = H − S."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = decay * v + x[t]
        sg = torch.sigmoid(alpha * (h - 1.0))
        spike = (h >= 1.0).to(h.dtype) + (sg - sg.detach())
        s_reset = spike.detach() if detach_reset else spike
        v = h * (1 - s_reset) if hard else h - s_reset
        out.append(spike)
    return torch.stack(out)


@pytest.mark.parametrize("decay", [0.5, 0.2])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_lif_matches_the_reference_recurrence(decay, reset, detach_reset):
    g = torch.Generator().manual_seed(0)
    x = (1.5 * torch.randn(6, 4, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(6, 4, 7, generator=g, dtype=torch.float64)
    node = LIF(
        decay=decay,
        reset=reset,
        detach_reset=detach_reset,
        surrogate=functools.partial(surrogate.Sigmoid, alpha=4.0),
    )
    spikes = node(x)
    expected = lif_oracle(x, decay, reset == "hard", detach_reset)
    assert torch.equal(spikes.detach(), expected.detach())
    assert 0 < spikes.detach().mean() < 1
    (g_impl,) = torch.autograd.grad((spikes * w).sum(), x)
    (g_ref,) = torch.autograd.grad((expected * w).sum(), x)
    assert torch.allclose(g_impl, g_ref, atol=1e-12)


# Surrogate derivatives dS/dH at u = H − V_th, written from their definitions (parameter p: alpha,
# alpha, the triangle's half-width gamma, the rectangle's width).
SURROGATE_GRADIENTS = {
    "sigmoid": (2.5, lambda u, a: a * torch.sigmoid(a * u) * (1 - torch.sigmoid(a * u))),
    "atan": (2.0, lambda u, a: a / (2 * (1 + (math.pi / 2 * a * u) ** 2))),
    "triangle": (0.7, lambda u, g: torch.clamp(g - u.abs(), min=0) / g**2),
    "rect": (1.6, lambda u, w: (u.abs() < w / 2).to(u.dtype) / w),
}
PARAMETER = {"sigmoid": "alpha", "atan": "alpha", "triangle": "gamma", "rect": "width"}


def neuron_oracle(x, decay, v_th, hard, detach_reset, surrogate_grad):
    """Loop over t: H = d·V + X; S = Θ(H − V_th) with dS/dH = surrogate_grad(H − V_th);
    hard reset V = H·(1 − S), soft V = H − S·V_th (S detached in the reset when asked)."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = decay * v + x[t]
        u = h - v_th
        straight = u * surrogate_grad(u).detach()  # value-free carrier of the surrogate gradient
        spike = (u >= 0).to(h.dtype) + (straight - straight.detach())
        s_reset = spike.detach() if detach_reset else spike
        v = h * (1 - s_reset) if hard else h - s_reset * v_th
        out.append(spike)
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
@pytest.mark.parametrize("surrogate_name", sorted(SURROGATE_GRADIENTS))
@pytest.mark.parametrize(("reset", "detach_reset"), [("hard", False), ("hard", True), ("soft", False)])
def test_every_neuron_and_surrogate_follows_its_recurrence(
    tmp_path, kind, surrogate_name, reset, detach_reset
):
    p, grad_fn = SURROGATE_GRADIENTS[surrogate_name]
    overrides = [
        f"neuron={kind}",
        f"neuron/surrogate={surrogate_name}",
        f"neuron.surrogate.{PARAMETER[surrogate_name]}={p}",
        f"neuron.reset={reset}",
        f"neuron.detach_reset={str(detach_reset).lower()}",
        "neuron.v_threshold=0.8",
    ]
    if kind != "if":
        overrides.append("neuron.decay=0.3")
    node = neuron_factory(make_cfg(tmp_path, overrides))().to(torch.float64)
    g = torch.Generator().manual_seed(1)
    x = (1.2 * torch.randn(5, 3, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    weights = torch.randn(5, 3, 8, generator=g, dtype=torch.float64)
    if kind == "plif":  # the oracle's decay is a function of the same learnable w
        w = node.w.detach().clone().requires_grad_(True)
        decay = 1 - torch.sigmoid(w)
        assert torch.allclose(decay, torch.tensor(0.3, dtype=torch.float64))
    else:
        decay = {"lif": 0.3, "if": 1.0}[kind]
    expected = neuron_oracle(x, decay, 0.8, reset == "hard", detach_reset, lambda u: grad_fn(u, p))
    spikes = node(x)
    assert torch.equal(spikes.detach(), expected.detach())
    assert 0 < spikes.detach().mean() < 1
    inputs = (x, node.w) if kind == "plif" else (x,)
    grads = torch.autograd.grad((spikes * weights).sum(), inputs)
    ref_inputs = (x, w) if kind == "plif" else (x,)
    ref_grads = torch.autograd.grad((expected * weights).sum(), ref_inputs)
    assert grads[0].abs().sum() > 0
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-12), (got - want).abs().max()


def test_lif_refuses_impossible_settings():
    with pytest.raises(InvalidArgument, match="decay"):
        LIF(decay=1.0)
    with pytest.raises(InvalidArgument, match="reset"):
        LIF(reset="sideways")


def test_each_layer_gets_its_own_neuron_and_surrogate(tmp_path):
    student = build_student(make_cfg(tmp_path))
    nodes = [m for m in student.modules() if isinstance(m, LIF)]
    assert len(nodes) == 3
    assert len({id(n.surrogate_function) for n in nodes}) == len(nodes)
    assert all(n.surrogate_function.alpha == 4.0 and n.decay == 0.5 and n.v_reset == 0.0 for n in nodes)
    assert all(not n.detach_reset and n.step_mode == "m" for n in nodes)


def test_student_is_time_major_and_resets_between_batches(tmp_path):
    cfg = make_cfg(tmp_path, ["neuron.T=3"])
    student = build_student(cfg)
    x = torch.randn(5, 1, 28, 28)
    out1 = student(x)
    assert out1.shape == (3, 5, 10)
    out_stale = student(x)  # membranes still charged from the first batch
    reset_spiking_state(student)
    out2 = student(x)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out_stale)
    out1.sum().backward()
    assert all(p.grad is not None for p in student.parameters())


def test_student_accepts_event_frames(tmp_path):
    student = build_student(make_cfg(tmp_path, ["neuron.T=2"]))
    assert student(torch.rand(2, 3, 1, 28, 28)).shape == (2, 3, 10)


def test_teacher_is_an_ann_with_the_dataset_shape(tmp_path):
    teacher = build_teacher(make_cfg(tmp_path, ["dataset=digits"]))
    assert teacher(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert teacher(torch.randn(3, 4, 1, 8, 8)).shape == (4, 10)  # event frames: their time-mean


def test_neuron_T_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"neuron\.T=0"):
        neuron_factory(make_cfg(tmp_path, ["neuron.T=0"]))


def test_weight_decay_only_on_conv_and_linear_weights(tmp_path):
    student = build_student(make_cfg(tmp_path))
    opt = sgd([student], lr=0.1, weight_decay=5e-4)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in student.named_parameters():
        is_weight = name.endswith("weight") and p.dim() > 1
        assert (id(p) in decayed) == is_weight, name
    everything = sgd([student], lr=0.1, decay_all_params=True)
    assert all(g["weight_decay"] == 5e-4 for g in everything.param_groups)
    assert opt.param_groups[0]["momentum"] == 0.9 and not opt.param_groups[0]["nesterov"]
