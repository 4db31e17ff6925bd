"""Spiking neurons as the papers define them, on top of spikingjelly 2.0.0's multi-step kernels."""

from __future__ import annotations

from collections.abc import Callable

import torch
from spikingjelly.activation_based import base, functional, neuron, surrogate

from seal_exp.config import require


class LIF(neuron.LIFNode):
    """The reference LIF: ``H = decay·V + X``, spike when ``H ≥ v_threshold``, then reset.

    Configured by the decay factor the papers quote; spikingjelly's ``tau`` is derived from it
    (``decay_input=False``, ``tau = 1/(1-decay)``). Always multi-step and time-major ``[T, B, ...]``.
    Each instance builds its own surrogate, so nothing learnable is ever shared between layers.
    """

    def __init__(
        self,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        reset: str = "hard",
        detach_reset: bool = False,
        surrogate: Callable[[], surrogate.SurrogateFunctionBase] = surrogate.Sigmoid,
    ) -> None:
        require(0.0 < decay < 1.0, "decay", decay, "the membrane decay must lie strictly between 0 and 1")
        require(v_threshold > 0, "v_threshold", v_threshold, "the firing threshold must be > 0")
        require(reset in ("hard", "soft"), "reset", reset, "use 'hard' (to 0) or 'soft' (subtract threshold)")
        super().__init__(
            tau=1.0 / (1.0 - float(decay)),
            decay_input=False,
            v_threshold=float(v_threshold),
            v_reset=0.0 if reset == "hard" else None,
            surrogate_function=surrogate(),
            detach_reset=bool(detach_reset),
            step_mode="m",
        )
        self.decay = float(decay)


def reset_spiking_state(model: torch.nn.Module) -> None:
    """Zero every membrane in ``model``.

    Only spikingjelly memory modules are touched: ``functional.reset_net`` calls ``reset()`` on any
    module that has one, which breaks on non-spiking modules such as timm heads.
    """
    for module in model.modules():
        if isinstance(module, base.MemoryModule):
            module.reset()


def kernel_in_use(model: torch.nn.Module, device: torch.device) -> str:
    """The spikingjelly implementation its LIF layers run on ``device`` (recorded with every run)."""
    if not any(isinstance(m, neuron.LIFNode) for m in model.modules()):
        return "none"
    return str(functional.neuron_implementation("lif", device)["implementation"])
