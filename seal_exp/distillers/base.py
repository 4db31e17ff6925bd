"""The contract between a distiller and the engine.

A distiller owns the student, an optional frozen ANN teacher and its loss. The engine calls
``distiller(x, y)``, sums the returned terms, steps the optimiser over ``learnable_modules()`` and
logs every term; it knows nothing about any method.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from seal_exp.distillers.hard_losses import tet_ce

HardLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Distiller(nn.Module, abc.ABC):
    """Student + frozen teacher + loss, returning ``(student_logits [T,B,K], {term: weighted loss})``."""

    requires_teacher: ClassVar[bool] = True

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None = None, hard_loss: HardLoss = tet_ce
    ) -> None:
        super().__init__()
        if self.requires_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} distils from a teacher; pass one")
        self.student = student
        self.teacher = teacher if self.requires_teacher else None
        if self.teacher is not None:  # never in the optimiser; its logits are computed without grad
            self.teacher.eval()
        self.hard_loss = hard_loss

    def train(self, mode: bool = True) -> Distiller:
        """Train the student; the teacher stays in eval mode (its BatchNorm statistics are fixed)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def learnable_modules(self) -> list[nn.Module]:
        """What the optimiser updates: the student, plus any projector a method adds."""
        return [self.student]

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher(x)

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student logits ``[T, B, K]`` and the loss terms, already weighted, whose sum is minimised."""
