"""What a spiking student costs per inference, and what its ANN teacher costs on the same samples.

Everything is counted by spikingjelly 2.0.0's own tools during one ordinary forward pass per batch:
:class:`~spikingjelly.activation_based.monitor.OutputMonitor` hooks every spiking neuron
(:class:`~spikingjelly.activation_based.neuron.BaseNode`) and sums its spikes per timestep, and the
op counters of ``spikingjelly.activation_based.op_counter`` count the aten operations of the same pass:

* **MACs** (``MACCounter``): matrix products and convolutions where neither operand is binary, i.e. the
  real-valued parts of a spiking network (its first layer on the analog image, a head on pooled values);
* **SynOps** (``SynOpCounter``): spike-driven products and convolutions, a binary input times real weights
  counting ``nnz(input) · fan-out`` (a convolution's fan-out taken per spike, fewer at the borders).

Conventions:

* **BatchNorm is folded** into the preceding conv/linear layer at inference, so every BatchNorm module
  (any subclass of ``torch.nn.modules.batchnorm._BatchNorm``) is ignored by all counters.
* The **headline energy** is the SNN papers' regime, ``E_MAC · MACs + E_AC · SynOps`` with the 45 nm
  32-bit float costs of Horowitz (2014), E_MAC = 4.6 pJ and E_AC = 0.9 pJ (configurable:
  :class:`EnergyRegime`), reported per sample (one inference over all T timesteps) in µJ.
* ``energy_simple_uj`` is spikingjelly's fuller ``SimpleEnergyProfiler`` estimate on the same pass: MACs,
  every accumulate (SynOps, neuron-state updates, residual adds, pooling sums) and the logical memory
  traffic of parameters and neuron states; ``None`` where the profiler fails on a network (logged).

All counts are per forward call over the whole batch; they are summed over the batches and divided by
the number of samples. Spike counts stay on the device until the end (one host read per measurement);
the monitors' sums run outside the counters, so they never add to the counted ACs.

Caveats, from spikingjelly's rules: "binary" is decided per tensor, so a real-valued tensor that happens to
be all zeros (a silent last stage pooled to zeros) costs no MACs; and the neuron-state ACs of
``energy_simple_uj`` are seen only where the neurons run as aten ops (the CPU reference; a fused CUDA
kernel may hide them), so compare ``energy_simple_uj`` only between measurements on the same device.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.monitor import OutputMonitor
from spikingjelly.activation_based.op_counter import (
    DispatchCounterMode,
    MACCounter,
    SimpleEnergyConfig,
    SimpleEnergyCostConfig,
    SimpleEnergyProfiler,
    SynOpCounter,
)
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from seal_exp.models.neurons import reset_spiking_state

log = logging.getLogger(__name__)

E_MAC_PJ, E_AC_PJ = 4.6, 0.9

# Folded into the preceding layer at inference: no operation of theirs is counted.
FOLDED: list[type[nn.Module]] = [_BatchNorm]

PJ_TO_UJ = 1e-6


@dataclass(frozen=True)
class EnergyRegime:
    """Energy per operation, pJ: a multiply-accumulate (real × real) and an accumulate (a spike's synapse)."""

    e_mac_pj: float = E_MAC_PJ
    e_ac_pj: float = E_AC_PJ

    def __post_init__(self) -> None:
        for name in ("e_mac_pj", "e_ac_pj"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite energy >= 0 in pJ, got {value!r}")

    def describe(self) -> str:
        """The regime in words, stored with every measurement so that numbers are never compared blind."""
        source = (
            " (45 nm fp32, Horowitz 2014)" if (self.e_mac_pj, self.e_ac_pj) == (E_MAC_PJ, E_AC_PJ) else ""
        )
        return (
            f"E_MAC {self.e_mac_pj:g} pJ × MACs + E_AC {self.e_ac_pj:g} pJ × SynOps{source}; BatchNorm folded"
        )

    def energy_uj(self, macs: float, synops: float) -> float:
        return (self.e_mac_pj * macs + self.e_ac_pj * synops) * PJ_TO_UJ


DEFAULT_REGIME = EnergyRegime()


@dataclass(frozen=True)
class LayerActivity:
    """One spiking layer (neuron module) of the network."""

    name: str  # module path in the network, e.g. "features.2"
    neurons: int  # neurons per sample per timestep
    rate: float  # spikes / (neurons · T · samples)
    rate_per_timestep: list[float]


@dataclass(frozen=True)
class Activity:
    """A spiking network on a fixed set of samples; ``synops``, ``macs`` and the energies are per sample."""

    samples: int
    T: int
    firing_rate: float  # all spikes / all neuron-timesteps (layers weighted by their neuron counts)
    firing_rate_per_timestep: list[float]
    layers: list[LayerActivity]
    synops: float
    macs: float
    energy_uj: float  # E_MAC·macs + E_AC·synops
    energy_simple_uj: float | None
    regime: str

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics (for MLflow): totals, rate per timestep (``_t1``…) and per layer (``/<name>``)."""
        out = {
            "firing_rate": self.firing_rate,
            "synops": self.synops,
            "macs": self.macs,
            "energy_uj": self.energy_uj,
        }
        if self.energy_simple_uj is not None:
            out["energy_simple_uj"] = self.energy_simple_uj
        out |= {f"firing_rate_t{t}": r for t, r in enumerate(self.firing_rate_per_timestep, start=1)}
        out |= {f"firing_rate/{layer.name}": layer.rate for layer in self.layers}
        return {prefix + key: float(value) for key, value in out.items()}

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class AnnCost:
    """The ANN teacher on the same samples; ``macs``, ``synops`` and the energies are per sample."""

    samples: int
    macs: float
    synops: float  # accumulate-only ops on binary inputs (e.g. binary event frames); usually 0
    energy_uj: float
    energy_simple_uj: float | None
    regime: str

    def as_metrics(self, prefix: str = "teacher_") -> dict[str, float]:
        out = {"macs": self.macs, "synops": self.synops, "energy_uj": self.energy_uj}
        if self.energy_simple_uj is not None:
            out["energy_simple_uj"] = self.energy_simple_uj
        return {prefix + key: float(value) for key, value in out.items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def energy_ratio(teacher: AnnCost, student: Activity) -> float:
    """Teacher energy / student energy: how many times less the student spends (``inf`` if it spends 0)."""
    if student.energy_uj == 0:
        return math.inf if teacher.energy_uj > 0 else math.nan
    return teacher.energy_uj / student.energy_uj


# ---------------------------------------------------------------------------------------------------------
# Samples


def _batch_dim(x: Tensor, time_major: bool | None) -> int:
    if time_major is None:
        return 1 if x.dim() == 5 else 0
    return 1 if time_major else 0


def _first_samples(
    batches: Iterable[Tensor], samples: int, time_major: bool | None
) -> Iterator[tuple[Tensor, int]]:
    """``(x, b)``: the batches cut to the first ``samples`` samples; no batch is drawn beyond them."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    left = samples
    for x in batches:
        if not isinstance(x, Tensor):
            raise TypeError(f"batches must yield input tensors, got {type(x).__name__}")
        dim = _batch_dim(x, time_major)
        if x.dim() <= dim:
            raise ValueError(f"input of shape {tuple(x.shape)} has no batch dimension {dim}")
        b = min(x.shape[dim], left)
        if b == 0:
            continue
        yield x.narrow(dim, 0, b), b
        left -= b
        if left == 0:
            return


# ---------------------------------------------------------------------------------------------------------
# Counting


@contextlib.contextmanager
def _evaluating(net: nn.Module) -> Iterator[None]:
    """``net`` in eval mode, every module's own train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _uncounted() -> contextlib.AbstractContextManager[Any]:
    """Run ops past the op counters' dispatch mode (as spikingjelly's own counting rules do): the
    monitors' spike sums are measurement, not part of the network."""
    return torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.Python))


class _Counting:
    """MACs, SynOps and the simple-energy estimate of the forward passes run through :meth:`run`.

    One counting pass per forward: spikingjelly's ``SimpleEnergyProfiler`` (whose MAC and SynOp counters
    give the headline figures) while it works; if it raises on this network, a warning, and the bare
    ``MACCounter`` and ``SynOpCounter`` from then on (the failed batch rerun once, after ``discard``).
    """

    def __init__(self, net: nn.Module, regime: EnergyRegime) -> None:
        self.macs = 0
        self.synops = 0
        self.simple_pj: float | None = 0.0
        self.profiler: SimpleEnergyProfiler | None = SimpleEnergyProfiler(
            config=SimpleEnergyConfig(
                cost_config=SimpleEnergyCostConfig(e_mac_pj=regime.e_mac_pj, e_ac_pj=regime.e_ac_pj),
                extra_ignore_modules=list(FOLDED),
            )
        )
        self.profiler.bind_model(net)
        self.model_id = "unavailable"
        self.memory_pj_per_byte = self.profiler.config.cost_config.e_memory_pj_per_byte

    def run(self, forward: Callable[[], object], discard: Callable[[], None]) -> None:
        if self.profiler is not None:
            try:
                with self.profiler:
                    forward()
                report = self.profiler.get_report()
            except Exception as exc:
                log.warning(
                    "spikingjelly's SimpleEnergyProfiler failed on this network (%s: %s); "
                    "energy_simple_uj is left out, MACs and SynOps are counted without it",
                    type(exc).__name__,
                    exc,
                )
                self.profiler, self.simple_pj = None, None
                discard()
            else:
                self.macs += report.counts["mac"]
                self.synops += report.counts["synop"]
                self.simple_pj = (self.simple_pj or 0.0) + report.energy_total_pj
                self.model_id = report.model_info.model_id
                return
        macs, synops = MACCounter(extra_ignore_modules=FOLDED), SynOpCounter(extra_ignore_modules=FOLDED)
        with DispatchCounterMode([macs, synops]):
            forward()
        self.macs += macs.get_total()
        self.synops += synops.get_total()

    def simple_uj(self, samples: int) -> float | None:
        return None if self.simple_pj is None else self.simple_pj / samples * PJ_TO_UJ

    def describe(self, regime: EnergyRegime) -> str:
        if self.simple_pj is None:
            simple = (
                "energy_simple_uj: unavailable (spikingjelly's SimpleEnergyProfiler failed on this network)"
            )
        else:
            simple = (
                f"energy_simple_uj: spikingjelly {self.model_id} (MACs + every AC incl. neuron-state updates "
                f"and residual adds + memory traffic at {self.memory_pj_per_byte:g} pJ/byte)"
            )
        return f"{regime.describe()}; {simple}"


def _measured(
    net: nn.Module,
    batches: Iterable[Tensor],
    samples: int,
    regime: EnergyRegime,
    device: torch.device | str,
    time_major: bool | None,
    reset: Callable[[nn.Module], None] | None,
    on_batch: Callable[[int], None] | None = None,
    discard: Callable[[], None] | None = None,
) -> tuple[_Counting, int]:
    """Run ``net`` once per batch under the counters; ``on_batch(b)`` after each (monitor bookkeeping)."""
    counting = _Counting(net, regime)
    seen = 0

    def forget() -> None:
        if reset is not None:
            reset(net)
        if discard is not None:
            discard()

    with _evaluating(net), torch.no_grad():
        if reset is not None:
            reset(net)
        for x, b in _first_samples(batches, samples, time_major):
            x = x.to(device, non_blocking=True)
            counting.run(lambda x=x: net(x), forget)
            if reset is not None:
                reset(net)
            if on_batch is not None:
                on_batch(b)
            seen += b
    if seen == 0:
        raise ValueError("no samples to measure: the batches were empty")
    if seen < samples:
        log.debug("activity measured on %d samples (fewer than the %d asked for)", seen, samples)
    return counting, seen


@dataclass
class _Layer:
    spikes: Tensor | None = None  # [T] on the device
    neurons: int | None = None


def _spike_sums(out: Tensor) -> tuple[Tensor, int, int]:
    """Spikes per timestep of a time-major neuron output, its first dim and size (monitor record)."""
    if not isinstance(out, Tensor) or out.dim() < 2:
        raise ValueError(
            "a spiking neuron's output is not a time-major tensor [T, B, ...]: "
            f"got {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    with _uncounted():
        sums = out.detach().reshape(out.shape[0], -1).sum(dim=1, dtype=torch.float64)
    return sums, int(out.shape[0]), out.numel()


def measure_spiking(
    net: nn.Module,
    batches: Iterable[Tensor],
    *,
    samples: int,
    regime: EnergyRegime = DEFAULT_REGIME,
    device: torch.device | str = "cpu",
    reset: Callable[[nn.Module], None] | None = None,
    time_major: bool | None = None,
) -> Activity:
    """Firing rates (per layer and timestep), SynOps, MACs and energy of a multi-step spiking network.

    ``batches`` yields inputs (static ``[B, C, H, W]`` or event frames ``[T, B, C, H, W]``); only the first
    ``samples`` are used. ``time_major`` says where the batch dimension is: ``None`` → dim 1 for 5-d input,
    dim 0 otherwise; ``True`` → dim 1 (e.g. ``[T, B, N]``); ``False`` → dim 0. ``net`` must be on ``device``;
    it runs under ``no_grad`` in eval mode (each module's mode restored after), and ``reset(net)`` follows
    every forward so that no membrane carries over between batches (default: reset every spikingjelly
    memory module). T is read from the neurons' outputs, which must all be time-major ``[T, B, ...]``.
    """
    cells = [(name, m) for name, m in net.named_modules() if isinstance(m, neuron.BaseNode)]
    if not cells:
        raise ValueError(f"{type(net).__name__} has no spiking neurons (spikingjelly BaseNode modules)")
    single = [name for name, m in cells if getattr(m, "step_mode", "m") != "m"]
    if single:
        raise ValueError(
            f"neurons {', '.join(single)} run single-step; the activity is measured on multi-step networks "
            "whose neurons output time-major [T, B, ...] (spikingjelly functional.set_step_mode(net, 'm'))"
        )
    layers = {name: _Layer() for name, _ in cells}
    steps: list[int] = []

    with OutputMonitor(net, instance=neuron.BaseNode, function_on_output=_spike_sums) as monitor:

        def tally(b: int) -> None:
            for name, layer in layers.items():
                records = [monitor.records[i] for i in monitor.name_records_index[name]]
                if not records:
                    continue
                for _, t, _ in records:
                    if not steps:
                        steps.append(t)
                    elif t != steps[0]:
                        raise ValueError(
                            f"neuron {name} outputs {t} timesteps where another outputs {steps[0]}: "
                            "every neuron output must be time-major [T, B, ...]"
                        )
                size = sum(numel for *_, numel in records)
                if size % (steps[0] * b):
                    raise ValueError(
                        f"neuron {name} outputs {size} values for T={steps[0]} and {b} samples: "
                        "its output is not time-major [T, B, ...]"
                    )
                per_sample = size // (steps[0] * b)
                if layer.neurons is not None and layer.neurons != per_sample:
                    raise ValueError(
                        f"neuron {name} changes size between batches ({layer.neurons}, {per_sample})"
                    )
                layer.neurons = per_sample
                sums = records[0][0] if len(records) == 1 else torch.stack([r[0] for r in records]).sum(0)
                layer.spikes = sums if layer.spikes is None else layer.spikes + sums
            monitor.clear_recorded_data()

        counting, seen = _measured(
            net,
            batches,
            samples,
            regime,
            device,
            time_major,
            reset if reset is not None else reset_spiking_state,
            on_batch=tally,
            discard=monitor.clear_recorded_data,
        )

    active = {name: layer for name, layer in layers.items() if layer.spikes is not None}
    if not active:
        raise ValueError("no spiking neuron of the network ran in the forward pass")
    T = steps[0]
    spikes = torch.stack([layer.spikes for layer in active.values()]).cpu().tolist()  # one host read
    neurons = [layer.neurons or 0 for layer in active.values()]
    per_layer = [
        LayerActivity(
            name=name,
            neurons=n,
            rate=sum(row) / (n * T * seen) if n else 0.0,
            rate_per_timestep=[s / (n * seen) if n else 0.0 for s in row],
        )
        for (name, n, row) in zip(active, neurons, spikes, strict=True)
    ]
    total = sum(neurons)
    per_step = [sum(row[t] for row in spikes) / (total * seen) if total else 0.0 for t in range(T)]
    macs, synops = counting.macs / seen, counting.synops / seen
    return Activity(
        samples=seen,
        T=T,
        firing_rate=sum(map(sum, spikes)) / (total * T * seen) if total else 0.0,
        firing_rate_per_timestep=per_step,
        layers=per_layer,
        synops=synops,
        macs=macs,
        energy_uj=regime.energy_uj(macs, synops),
        energy_simple_uj=counting.simple_uj(seen),
        regime=counting.describe(regime),
    )


def measure_ann(
    net: nn.Module,
    batches: Iterable[Tensor],
    *,
    samples: int,
    regime: EnergyRegime = DEFAULT_REGIME,
    device: torch.device | str = "cpu",
    time_major: bool | None = None,
) -> AnnCost:
    """MACs (and any accumulate-only ops on binary input) and energy of an ANN on the first ``samples``.

    Same counters, conventions and input handling as :func:`measure_spiking` (BatchNorm folded, eval mode,
    ``no_grad``, ``net`` on ``device``).
    """
    counting, seen = _measured(net, batches, samples, regime, device, time_major, reset=None)
    macs, synops = counting.macs / seen, counting.synops / seen
    return AnnCost(
        samples=seen,
        macs=macs,
        synops=synops,
        energy_uj=regime.energy_uj(macs, synops),
        energy_simple_uj=counting.simple_uj(seen),
        regime=counting.describe(regime),
    )
