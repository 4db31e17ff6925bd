"""The fast-path switches of a run: compilation, bf16 autocast and channels-last memory.

Each switch changes how the networks run, never what they compute beyond float rounding, and each
can be turned off to measure its effect (``python -m seal_exp.bench step --compare``) or check its
numerics (``tests/test_speed.py``). They are applied to the built networks in place, before any
optimiser holds their parameters: the module tree and ``state_dict`` keys stay the same, so
checkpoints and the teacher cache do not depend on them.

- ``trainer.precision=bf16``: the networks' forward passes run under ``torch.autocast`` (bf16) and
  return float32, so every loss is computed in float32; spiking neurons cast their input to float32,
  so the membrane, the threshold comparison and the reset stay in float32 (:mod:`seal_exp.models.neurons`).
- ``trainer.channels_last``: convolution weights (and so activations) in NHWC order.
- ``trainer.compile=neurons``: ``torch.compile`` of each spiking neuron, whose per-timestep loop is
  where eager spikingjelly spends its time. (Compiling whole networks was measured several times
  slower per step on the CPU than eager, so it is not offered.)
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from spikingjelly.activation_based import base
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
COMPILE_TARGETS = ("none", "neurons")
REDUCED = (torch.bfloat16, torch.float16)


def full_precision(out: Any) -> Any:
    """``out`` with every bf16/fp16 tensor cast to float32 (tensors, tuples, lists and dicts)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype in REDUCED else out
    if isinstance(out, tuple):
        return tuple(full_precision(o) for o in out)
    if isinstance(out, list):
        return [full_precision(o) for o in out]
    if isinstance(out, dict):
        return {k: full_precision(v) for k, v in out.items()}
    return out


def run_under_autocast(net: nn.Module, device_type: str, dtype: torch.dtype) -> nn.Module:
    """Make ``net``'s forward run under autocast and hand back float32 outputs (in place).

    Hooks that capture stage outputs (feature distillers) see reduced-precision tensors; the
    feature interface casts them back (``FeatureTaps.forward_with_features``).
    """
    forward = net.forward

    @functools.wraps(forward)
    def forward_in_reduced_precision(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            return full_precision(forward(*args, **kwargs))

    net.forward = forward_in_reduced_precision  # type: ignore[method-assign]
    return net


def compile_neurons(net: nn.Module, mode: str) -> None:
    """``torch.compile`` every spiking neuron of ``net`` in place (module tree and weights unchanged)."""
    for module in net.modules():
        if isinstance(module, base.MemoryModule):
            module.compile(mode=mode)


def accelerate(
    networks: list[nn.Module],
    device: torch.device,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    compile_target: str = "none",
    compile_mode: str = "default",
) -> None:
    """Apply the switches to ``networks`` (student, teacher), in place."""
    dtype = PRECISIONS[precision]
    if compile_target != "none":
        # one compiled graph per neuron and input shape: keep them all instead of
        # falling back to eager after torch's default of 8
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    for net in networks:
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if dtype is not None:
            run_under_autocast(net, device.type, dtype)
        if compile_target == "neurons":
            compile_neurons(net, compile_mode)


def describe(precision: str, channels_last: bool, compile_target: str, compile_mode: str) -> str:
    """One line for logs, MLflow tags and the benchmark table."""
    compiled = "no compile" if compile_target == "none" else f"compile {compile_target} ({compile_mode})"
    return f"{precision}, {'channels_last' if channels_last else 'NCHW'}, {compiled}"
