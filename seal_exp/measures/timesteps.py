"""Accuracy of a student trained at T when run at other numbers of timesteps T' (Strong2Weak /
Weak2Strong's low-latency table): the same weights in a network built fresh for T', so nothing of the
T-step run (membranes, a T-long expansion inside a zoo network) carries over."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.models import build_student
from seal_exp.training.evaluate import evaluate


def with_timesteps(cfg: DictConfig, T: int) -> DictConfig:
    """``cfg`` with ``neuron.T = T``; what is interpolated from it follows (an event dataset's frames)."""
    changed = cfg.copy()
    OmegaConf.set_struct(changed, False)
    changed.neuron.T = int(T)
    return changed


def student_at(architecture: DictConfig, state: dict[str, Any], T: int) -> nn.Module:
    """The network of ``architecture`` (``student``, ``neuron``, ``dataset``) built for ``T`` timesteps
    with the trained weights ``state``, in eval mode."""
    net = build_student(with_timesteps(architecture, T))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"eval.timesteps: this {architecture.student._target_.rsplit('.', 1)[-1]} holds weights that "
            f"depend on T, so it cannot run at T'={T} ({first}); evaluate only at the trained T"
        ) from exc
    return net.eval()


def accuracy_at_timesteps(
    student: Callable[[int], nn.Module],
    loader: Callable[[int], Iterable[Any]],
    timesteps: Sequence[int],
    device: torch.device,
    limit: int | None = None,
) -> dict[int, float]:
    """Test accuracy (%) of ``student(T')`` on ``loader(T')`` for each T': a fresh network per T'."""
    accuracy = {}
    for T in timesteps:
        net = student(T).to(device)
        accuracy[int(T)] = evaluate(net, loader(T), device, limit).acc
    return accuracy
