"""Spiking neurons as the papers define them, on top of spikingjelly 2.0.0's multi-step kernels.

Every neuron is multi-step and time-major (``[T, B, ...]``), takes a hard or soft ``reset`` and a
surrogate *constructor*, so that each layer builds its own surrogate and nothing learnable is ever
shared between layers. The charge never scales its input (``decay_input=False``): ``H = d·V + X``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from spikingjelly.activation_based import base, functional, neuron, surrogate

from seal_exp.config import require, require_finite

SurrogateFactory = Callable[[], surrogate.SurrogateFunctionBase]

RESETS = ("hard", "soft")


def _reset_value(reset: str) -> float | None:
    require(reset in RESETS, "reset", reset, "use 'hard' (to 0) or 'soft' (subtract the threshold)")
    return 0.0 if reset == "hard" else None


def _check_common(v_threshold: float) -> None:
    require_finite(v_threshold=v_threshold)
    require(v_threshold > 0, "v_threshold", v_threshold, "the firing threshold must be > 0")


def _surrogate(factory: SurrogateFactory) -> surrogate.SurrogateFunctionBase:
    """The layer's surrogate, its sharpness checked: spikingjelly's take any ``alpha``, and one <= 0 flips
    or zeroes every gradient through the spikes, so the network trains the wrong way or not at all."""
    function = factory()
    alpha = getattr(function, "alpha", None)
    if alpha is not None:
        require_finite(**{"surrogate.alpha": alpha})
        require(
            alpha > 0,
            "surrogate.alpha",
            alpha,
            "the surrogate's sharpness must be > 0 (at or below 0 it zeroes or flips the spikes' gradients)",
        )
    return function


class Float32Membrane:
    """Neuron mixin: under bf16/fp16 autocast the input current is cast to float32, so the membrane,
    the threshold comparison and the reset are computed in float32 (spikes come out float32 and
    the next convolution casts them down again, exactly: they are 0 or 1)."""

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dtype in (torch.bfloat16, torch.float16):
            x_seq = x_seq.float()
        return super().multi_step_forward(x_seq)  # type: ignore[misc]

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return super().single_step_forward(x)  # type: ignore[misc]


class LIF(Float32Membrane, neuron.LIFNode):
    """The reference LIF: ``H = decay·V + X``, spike when ``H ≥ v_threshold``, then reset.

    Configured by the decay factor the papers quote; spikingjelly's ``tau`` is derived from it
    (``tau = 1/(1-decay)``).
    """

    def __init__(
        self,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        reset: str = "hard",
        detach_reset: bool = False,
        surrogate: SurrogateFactory = surrogate.Sigmoid,
    ) -> None:
        require(0.0 < decay < 1.0, "decay", decay, "the membrane decay must lie strictly between 0 and 1")
        _check_common(v_threshold)
        super().__init__(
            tau=1.0 / (1.0 - float(decay)),
            decay_input=False,
            v_threshold=float(v_threshold),
            v_reset=_reset_value(reset),
            surrogate_function=_surrogate(surrogate),
            detach_reset=bool(detach_reset),
            step_mode="m",
        )
        self.decay = float(decay)


class PLIF(Float32Membrane, neuron.ParametricLIFNode):
    """LIF with a learnable decay per layer (Fang et al., 2021): ``decay = 1 − sigmoid(w)``.

    ``decay`` is the initial value; each layer then learns its own.
    """

    def __init__(
        self,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        reset: str = "hard",
        detach_reset: bool = False,
        surrogate: SurrogateFactory = surrogate.Sigmoid,
    ) -> None:
        require(0.0 < decay < 1.0, "decay", decay, "the initial decay must lie strictly between 0 and 1")
        _check_common(v_threshold)
        super().__init__(
            init_tau=1.0 / (1.0 - float(decay)),
            decay_input=False,
            v_threshold=float(v_threshold),
            v_reset=_reset_value(reset),
            surrogate_function=_surrogate(surrogate),
            detach_reset=bool(detach_reset),
            step_mode="m",
        )

    @property
    def decay(self) -> torch.Tensor:
        """The current (learned) decay factor."""
        return 1.0 - self.w.sigmoid()


class IF(Float32Membrane, neuron.IFNode):
    """Integrate-and-fire, no leak: ``H = V + X``."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        reset: str = "hard",
        detach_reset: bool = False,
        surrogate: SurrogateFactory = surrogate.Sigmoid,
    ) -> None:
        _check_common(v_threshold)
        super().__init__(
            v_threshold=float(v_threshold),
            v_reset=_reset_value(reset),
            surrogate_function=_surrogate(surrogate),
            detach_reset=bool(detach_reset),
            step_mode="m",
        )


def rect(width: float = 1.0) -> surrogate.Rect:
    """Rectangular surrogate: gradient ``1/width`` on ``|H − V_th| < width/2``, 0 elsewhere."""
    require_finite(width=width)
    require(width > 0, "width", width, "the window width must be > 0")
    return surrogate.Rect(alpha=1.0 / float(width))


def triangle(gamma: float = 1.0) -> surrogate.PiecewiseQuadratic:
    """Triangular surrogate: gradient ``max(0, γ − |H − V_th|) / γ²`` (area 1, half-width γ)."""
    require_finite(gamma=gamma)
    require(gamma > 0, "gamma", gamma, "the half-width must be > 0")
    return surrogate.PiecewiseQuadratic(alpha=1.0 / float(gamma))


def reset_spiking_state(model: torch.nn.Module) -> None:
    """Zero every membrane in ``model``.

    Only spikingjelly memory modules are touched: ``functional.reset_net`` calls ``reset()`` on any
    module that has one, which breaks on non-spiking modules such as timm heads.
    """
    for module in model.modules():
        if isinstance(module, base.MemoryModule):
            module.reset()


# spikingjelly's kernel registry names, most specific class first (PLIF is not an LIF subclass).
_KERNEL_NAMES: tuple[tuple[type, str], ...] = (
    (neuron.ParametricLIFNode, "plif"),
    (neuron.LIFNode, "lif"),
    (neuron.IFNode, "if"),
)


def kernel_in_use(model: torch.nn.Module, device: torch.device) -> str:
    """The spikingjelly implementation its neurons run on ``device`` (recorded with every run).

    ``"none"`` for a network without neurons (an ANN); ``"lif=torch-reference"`` style otherwise,
    one entry per neuron type present.
    """
    present: list[str] = []
    for module in model.modules():
        for cls, name in _KERNEL_NAMES:
            if isinstance(module, cls):
                if name not in present:
                    present.append(name)
                break
    if not present:
        return "none"
    return ",".join(
        f"{name}={functional.neuron_implementation(name, device)['implementation']}" for name in present
    )
