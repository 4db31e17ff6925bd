"""Firing rates, SynOps, MACs and energy against oracles written from the networks' construction.

Every golden value is computed here by hand (loops over spikes, kernel offsets and shapes), never by the
code under test: an IF neuron with a constant current ``c`` charges ``v += c`` and fires (then resets to 0)
when ``v >= 1``; a binary input to a synaptic layer costs one accumulate per spike and target, a
real-valued one a multiply-accumulate per weight use.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.op_counter import (
    DispatchCounterMode,
    MACCounter,
    SimpleEnergyConfig,
    SimpleEnergyProfiler,
    estimate_simple_energy,
)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from seal_exp.measures.activity import (
    Activity,
    AnnCost,
    EnergyRegime,
    LayerActivity,
    energy_ratio,
    measure_ann,
    measure_spiking,
)
from seal_exp.models.neurons import LIF
from seal_exp.models.spiking_cnn import SpikingConvNet

E_MAC, E_AC = 4.6, 0.9
T, B = 4, 3

# Input currents per (t, b, neuron) of the first spiking layer: 1.2 fires every step, 0.6 at t = 2, 4,
# 0.4 at t = 3 (and leaves 0.4 behind), 0 never; the last sample changes its current over time.
CURRENTS = [
    [[1.2, 0.6, 0.0], [0.0, 0.4, 1.2], [0.6, 0.6, 0.4]],
    [[1.2, 0.6, 0.0], [0.0, 0.4, 1.2], [1.2, 0.0, 0.4]],
    [[1.2, 0.6, 0.0], [0.0, 0.4, 1.2], [0.0, 1.2, 0.4]],
    [[1.2, 0.6, 0.0], [0.0, 0.4, 1.2], [0.6, 0.0, 0.4]],
]
GAIN = 2.0  # W1 = GAIN on the diagonal (not a 0/1 matrix: the first layer is real × real)
W2 = [[0.5, -1.5, 2.0], [3.0, 0.25, -0.5]]  # real-valued read-out of the spikes


def if_spikes(currents: list[list[float]], threshold: float = 1.0) -> list[list[int]]:
    """IF with hard reset to 0, from the definition: ``currents[t][i]`` → ``spikes[t][i]``."""
    v = [0.0] * len(currents[0])
    out = []
    for row in currents:
        spikes = []
        for i, c in enumerate(row):
            v[i] += c
            fired = v[i] >= threshold
            spikes.append(int(fired))
            if fired:
                v[i] = 0.0
        out.append(spikes)
    return out


def linear_net(bn: bool = False) -> nn.Sequential:
    """Linear(4→3) → [BN] → IF → Linear(3→2) → [BN], multi-step; input column 3 is ignored by W1."""
    fc1 = layer.Linear(4, 3, bias=False, step_mode="m")
    fc2 = layer.Linear(3, 2, bias=False, step_mode="m")
    with torch.no_grad():
        fc1.weight.zero_()
        for j in range(3):
            fc1.weight[j, j] = GAIN
        fc2.weight.copy_(torch.tensor(W2))
    modules: list[nn.Module] = [fc1]
    if bn:
        modules.append(identity_bn(3))
    modules += [neuron.IFNode(v_threshold=1.0, step_mode="m"), fc2]
    if bn:
        modules.append(identity_bn(2))
    return nn.Sequential(*modules)


def identity_bn(n: int) -> nn.Module:
    bn = layer.BatchNorm1d(n, eps=0.0, step_mode="m")  # running mean 0, var 1, weight 1, bias 0: identity
    return bn.eval()


def linear_input(currents: list = CURRENTS) -> torch.Tensor:
    """``[T, B, 4]`` giving ``currents`` through W1 (column 3 gets a value W1 ignores)."""
    x = torch.zeros(len(currents), len(currents[0]), 4)
    for t, per_sample in enumerate(currents):
        for b, row in enumerate(per_sample):
            for j, c in enumerate(row):
                x[t, b, j] = c / GAIN
            x[t, b, 3] = 0.7
    return x


def per_sample_spikes(currents: list) -> list[list[list[int]]]:
    """``[b][t][i]`` spikes of the IF layer fed ``currents[t][b][i]``."""
    return [if_spikes([currents[t][b] for t in range(len(currents))]) for b in range(len(currents[0]))]


def test_linear_network_counts_rates_and_energy():
    spikes = per_sample_spikes(CURRENTS)
    total = sum(s for sample in spikes for row in sample for s in row)
    synops = total * 2  # each spike reaches the 2 outputs of fc2
    macs = T * B * 4 * 3  # fc1 on the analog input, every timestep; fc2 sees only spikes
    per_t = [sum(spikes[b][t][i] for b in range(B) for i in range(3)) / (3 * B) for t in range(T)]

    net = linear_net()
    x = linear_input()
    a = measure_spiking(net, [x], samples=B, time_major=True)

    assert (a.samples, a.T) == (B, T)
    assert a.macs == macs / B
    assert a.synops == synops / B
    assert a.firing_rate == pytest.approx(total / (3 * T * B), abs=1e-15)
    assert a.firing_rate_per_timestep == pytest.approx(per_t, abs=1e-15)
    assert a.layers == [LayerActivity("1", 3, a.firing_rate, a.firing_rate_per_timestep)]
    assert a.energy_uj == pytest.approx((E_MAC * macs + E_AC * synops) / B * 1e-6, rel=1e-12)
    assert "4.6" in a.regime and "0.9" in a.regime and "BatchNorm folded" in a.regime
    # The fuller estimate is spikingjelly's own, unchanged by the spike monitors running in the same pass.
    functional.reset_net(net)
    reference = estimate_simple_energy(net, x, config=SimpleEnergyConfig(extra_ignore_modules=[_BatchNorm]))
    assert a.energy_simple_uj == pytest.approx(reference.energy_total_pj / B * 1e-6, rel=1e-12)
    assert a.energy_simple_uj > a.energy_uj
    assert reference.model_info.model_id in a.regime


def conv_oracle_synops(spike_positions: list[tuple[int, int]], size: int, stride: int, c_out: int) -> int:
    """3×3 conv, padding 1: each spike costs c_out per output position whose receptive field holds it."""
    out_size = (size + 2 - 3) // stride + 1
    synops = 0
    for y, x in spike_positions:
        for oy in range(out_size):
            for ox in range(out_size):
                for dy in range(3):
                    for dx in range(3):
                        if oy * stride + dy - 1 == y and ox * stride + dx - 1 == x:
                            synops += c_out
    return synops


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_synops_count_the_receptive_fields_a_spike_reaches(stride):
    size, c_out = 5, 2
    # (y, x) → current: corners and edges (fewer than 9 targets) and the interior.
    pixels = {(0, 0): 1.2, (0, 2): 0.6, (4, 4): 1.2, (2, 2): 0.6, (1, 3): 1.2, (3, 0): 0.4}
    frames = torch.zeros(T, 2, 1, size, size)
    frames[:, 0, 0, 0, 0] = 0.3  # a current that never reaches the threshold (and keeps the input analog)
    for (y, x), c in pixels.items():
        frames[:, 1, 0, y, x] = c
    frames[:, 0, 0, 4, 0] = 1.2
    positions = []  # every spike, over t and samples
    for b in range(2):
        for y in range(size):
            for x in range(size):
                fired = if_spikes([[float(frames[t, b, 0, y, x])] for t in range(T)])
                positions += [(y, x)] * sum(s[0] for s in fired)
    synops = conv_oracle_synops(positions, size, stride, c_out)

    conv = layer.Conv2d(1, c_out, 3, stride=stride, padding=1, bias=False, step_mode="m")
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-1.3, 1.7, conv.weight.numel()).reshape(conv.weight.shape))
    net = nn.Sequential(neuron.IFNode(v_threshold=1.0, step_mode="m"), conv)
    a = measure_spiking(net, [frames], samples=2)  # 5-d input: time-major by default

    assert a.T == T and a.samples == 2
    assert a.synops == synops / 2
    assert a.macs == 0
    assert a.layers[0].neurons == size * size
    assert a.firing_rate == pytest.approx(len(positions) / (size * size * T * 2), abs=1e-15)
    assert a.energy_uj == pytest.approx(E_AC * synops / 2 * 1e-6, rel=1e-12)


def test_batch_norm_is_folded_away():
    x = linear_input()
    plain = measure_spiking(linear_net(), [x], samples=B, time_major=True)
    with_bn = measure_spiking(linear_net(bn=True), [x], samples=B, time_major=True)
    assert (with_bn.macs, with_bn.synops, with_bn.energy_uj) == (plain.macs, plain.synops, plain.energy_uj)
    assert with_bn.firing_rate_per_timestep == plain.firing_rate_per_timestep
    # Without the convention BN would count: spikingjelly's MACCounter sees its affine map.
    net = linear_net(bn=True)
    counter = MACCounter()
    with torch.no_grad(), DispatchCounterMode([counter]):
        net(x)
    assert counter.get_total() > plain.macs * B


def two_layer_net() -> nn.Sequential:
    """fc1 → sn1 → block(fc2 → sn2): dyadic weights, so the second layer's currents are exact."""
    net = linear_net()
    fc2 = layer.Linear(3, 2, bias=False, step_mode="m")
    with torch.no_grad():
        fc2.weight.copy_(torch.tensor([[0.75, 0.5, 0.25], [0.5, 0.0, 0.625]]))
    block = nn.Sequential(fc2, neuron.IFNode(v_threshold=1.0, step_mode="m"))
    return nn.Sequential(OrderedDict(fc1=net[0], sn1=net[1], block=block))


def test_firing_rates_per_layer_and_timestep():
    w2 = [[0.75, 0.5, 0.25], [0.5, 0.0, 0.625]]
    s1 = per_sample_spikes(CURRENTS)  # [b][t][i]
    s2 = [
        if_spikes([[sum(w2[k][i] * s1[b][t][i] for i in range(3)) for k in range(2)] for t in range(T)])
        for b in range(B)
    ]
    n1 = [sum(s1[b][t][i] for b in range(B) for i in range(3)) for t in range(T)]
    n2 = [sum(s2[b][t][k] for b in range(B) for k in range(2)) for t in range(T)]
    assert sum(n2) > 0 and sum(n2) < 2 * T * B  # the oracle's second layer is neither silent nor saturated

    a = measure_spiking(two_layer_net(), [linear_input()], samples=B, time_major=True)

    assert [(layer.name, layer.neurons) for layer in a.layers] == [("sn1", 3), ("block.1", 2)]
    assert a.layers[0].rate_per_timestep == pytest.approx([n / (3 * B) for n in n1], abs=1e-15)
    assert a.layers[1].rate_per_timestep == pytest.approx([n / (2 * B) for n in n2], abs=1e-15)
    assert a.layers[1].rate == pytest.approx(sum(n2) / (2 * T * B), abs=1e-15)
    assert a.firing_rate == pytest.approx((sum(n1) + sum(n2)) / (5 * T * B), abs=1e-15)
    assert a.firing_rate_per_timestep == pytest.approx(
        [(p + q) / (5 * B) for p, q in zip(n1, n2, strict=True)], abs=1e-15
    )
    assert a.synops == sum(n1) * 2 / B  # spikes of sn1 reach fc2's 2 outputs; sn2's go nowhere
    metrics = a.as_metrics("student_")
    assert metrics["student_firing_rate/block.1"] == a.layers[1].rate
    assert [metrics[f"student_firing_rate_t{t}"] for t in range(1, T + 1)] == a.firing_rate_per_timestep
    assert {"student_synops", "student_macs", "student_energy_uj", "student_energy_simple_uj"} <= set(metrics)
    assert a.as_dict()["layers"][1] == {
        "name": "block.1",
        "neurons": 2,
        "rate": a.layers[1].rate,
        "rate_per_timestep": a.layers[1].rate_per_timestep,
    }


def test_only_the_first_samples_are_used_and_no_batch_beyond_them():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(T, 12, 4, generator=g) * 0.8  # analog input, currents up to 1.6
    drawn = []

    def loader() -> Iterator[torch.Tensor]:
        for i in range(3):
            drawn.append(i)
            yield x[:, 4 * i : 4 * i + 4]

    cut = measure_spiking(linear_net(), loader(), samples=6, time_major=True)
    alone = measure_spiking(linear_net(), [x[:, :6]], samples=6, time_major=True)
    assert drawn == [0, 1]
    assert cut.samples == 6
    assert (cut.macs, cut.synops, cut.energy_uj) == (alone.macs, alone.synops, alone.energy_uj)
    assert cut.firing_rate_per_timestep == pytest.approx(alone.firing_rate_per_timestep, abs=1e-15)
    assert cut.synops > 0


def test_membranes_do_not_carry_over_between_batches():
    x = linear_input()  # the 0.4 currents leave charge behind after T steps
    once = measure_spiking(linear_net(), [x], samples=B, time_major=True)
    twice = measure_spiking(linear_net(), [x, x], samples=2 * B, time_major=True)
    assert (twice.synops, twice.macs, twice.firing_rate_per_timestep) == (
        once.synops,
        once.macs,
        once.firing_rate_per_timestep,
    )
    carried = measure_spiking(linear_net(), [x, x], samples=2 * B, time_major=True, reset=lambda net: None)
    assert carried.firing_rate_per_timestep != once.firing_rate_per_timestep


def test_modes_are_restored_and_bad_networks_are_refused():
    net = linear_net(bn=True)
    net.train()
    net[1].eval()  # a module the caller froze stays frozen
    measure_spiking(net, [linear_input()], samples=B, time_major=True)
    assert [m.training for m in net] == [True, False, True, True, True]

    with pytest.raises(ValueError, match="no spiking neurons"):
        measure_spiking(nn.Sequential(nn.Linear(4, 2)), [torch.rand(2, 4)], samples=2)
    single = linear_net()
    single[1].step_mode = "s"
    with pytest.raises(ValueError, match="single-step"):
        measure_spiking(single, [linear_input()], samples=B, time_major=True)
    with pytest.raises(ValueError, match="samples"):
        measure_spiking(linear_net(), [linear_input()], samples=0, time_major=True)


def test_counts_survive_a_failing_simple_energy_profiler(monkeypatch, caplog):
    x = linear_input()
    once = measure_spiking(linear_net(), [x], samples=B, time_major=True)
    real = SimpleEnergyProfiler.get_report
    calls = []

    def fails_on_the_second_batch(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("memory counter broke")
        return real(self)

    monkeypatch.setattr(SimpleEnergyProfiler, "get_report", fails_on_the_second_batch)
    with caplog.at_level(logging.WARNING, logger="seal_exp.measures.activity"):
        a = measure_spiking(linear_net(), [x, x, x], samples=3 * B, time_major=True)
    assert len(calls) == 2  # given up after the failure: the failed batch and the third run without it
    assert "RuntimeError: memory counter broke" in caplog.text
    assert a.energy_simple_uj is None and "unavailable" in a.regime
    assert (a.macs, a.synops, a.firing_rate_per_timestep) == (
        once.macs,
        once.synops,
        once.firing_rate_per_timestep,
    )


def test_ann_macs_and_energy():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    conv = 1 * 3 * 3 * 4 * 6 * 6  # c_in·k·k·c_out·H_out·W_out
    fc = 4 * 6 * 6 * 5
    cost = measure_ann(net, [x[:3], x[3:]], samples=5)
    assert cost.samples == 5
    assert cost.macs == conv + fc
    assert cost.synops == 0
    assert cost.energy_uj == pytest.approx(E_MAC * (conv + fc) * 1e-6, rel=1e-12)
    assert cost.energy_simple_uj is not None and cost.energy_simple_uj > cost.energy_uj
    assert set(cost.as_metrics()) == {
        "teacher_macs",
        "teacher_synops",
        "teacher_energy_uj",
        "teacher_energy_simple_uj",
    }
    cheap = measure_ann(net, [x], samples=5, regime=EnergyRegime(e_mac_pj=1.0, e_ac_pj=0.5))
    assert cheap.energy_uj == pytest.approx((conv + fc) * 1e-6, rel=1e-12)
    assert "E_MAC 1 pJ" in cheap.regime


def test_energy_ratio():
    teacher = AnnCost(samples=1, macs=1e6, synops=0, energy_uj=4.6, energy_simple_uj=None, regime="r")
    student = Activity(
        samples=1,
        T=1,
        firing_rate=0.1,
        firing_rate_per_timestep=[0.1],
        layers=[],
        synops=1e5,
        macs=1e5,
        energy_uj=0.55,
        energy_simple_uj=None,
        regime="r",
    )
    assert energy_ratio(teacher, student) == pytest.approx(4.6 / 0.55)
    assert "energy_simple_uj" not in student.as_metrics()


def test_the_spiking_cnn_student():
    torch.manual_seed(0)
    channels, size, classes, batch = [32, 64, 128], 28, 10, 6
    net = SpikingConvNet(1, classes, T, channels, functools.partial(LIF, decay=0.5, v_threshold=1.0))
    with torch.no_grad():  # strong BatchNorm gains, so that spikes reach the last stage
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(4.0)
    x = torch.rand(batch, 1, size, size)
    a = measure_spiking(net, [x], samples=batch)

    cells = [name for name, m in net.named_modules() if isinstance(m, neuron.BaseNode)]
    assert [layer.name for layer in a.layers] == cells and len(cells) == len(channels)
    widths = [size // 2**i for i in range(len(channels))]
    assert [layer.neurons for layer in a.layers] == [c * w * w for c, w in zip(channels, widths, strict=True)]
    for rate in [a.firing_rate, *a.firing_rate_per_timestep] + [
        r for lay in a.layers for r in lay.rate_per_timestep
    ]:
        assert 0.0 <= rate <= 1.0
    assert all(layer.rate > 0 for layer in a.layers)
    # MACs: the stem conv once per image (computed once and broadcast over T), the head on pooled
    # (non-binary) spike averages at every timestep; everything else is spike-driven.
    stem = 1 * 3 * 3 * channels[0] * size * size
    head = T * channels[-1] * classes
    assert a.macs == stem + head
    assert a.synops > 0
    assert a.energy_uj == pytest.approx((E_MAC * a.macs + E_AC * a.synops) * 1e-6, rel=1e-12)
    assert a.energy_simple_uj is not None and a.energy_simple_uj > a.energy_uj
    assert math.isfinite(a.energy_uj)
