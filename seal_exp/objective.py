"""What the training loop trains: the contract between a method (or the teacher's cross-entropy) and
the loop, which knows no method.

An objective maps a batch to ``(logits, {term: loss})``; the loop minimises the sum of the terms and
logs each one. The hooks below have no-op defaults, so an objective declares only what it needs: a
schedule over training (``start_epoch``) or state that ``last.pt`` must carry beyond the model's
weights (``resumable_state`` / ``load_resumable_state``).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn


class Objective(nn.Module, abc.ABC):
    """A module whose forward returns ``(logits, {term: loss})`` for a batch ``(x, y)``."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits (``[T,B,K]`` spiking, ``[B,K]`` ANN) and the weighted loss terms to minimise."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before training epoch ``epoch`` (1-based) of ``epochs``."""

    def resumable_state(self) -> Any:
        """What ``last.pt`` must hold besides the model's weights (None: nothing)."""
        return None

    def load_resumable_state(self, state: Any) -> None:
        """Restore what :meth:`resumable_state` returned."""
