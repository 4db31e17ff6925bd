"""The spiking student, its LIF neuron and the ANN teacher, against the reference semantics."""

from __future__ import annotations

import functools

import pytest
import torch
from spikingjelly.activation_based import surrogate

from seal_exp.config import ConfigError, InvalidArgument
from seal_exp.models import build_student, build_teacher, neuron_factory
from seal_exp.models.neurons import LIF, reset_spiking_state
from seal_exp.optim import sgd
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
