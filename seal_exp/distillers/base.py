"""What every distiller shares, on top of the training loop's :class:`~seal_exp.objective.Objective`.

A distiller owns the student, an optional frozen ANN teacher and its loss. The loop calls
``distiller(x, y)``, sums the returned terms, steps the optimiser over ``learnable_modules()`` and
logs every term; it knows nothing about any method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from seal_exp.distillers.hard_losses import tet_ce
from seal_exp.objective import Objective

HardLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def last_stage(network: nn.Module) -> str:
    """The name of a network's last tappable stage (``feature_stages`` is ordered input → output)."""
    return list(network.feature_stages)[-1]


class Distiller(Objective):
    """Student + frozen teacher + loss, returning ``(student_logits [T,B,K], {term: weighted loss})``."""

    requires_teacher: ClassVar[bool] = True
    # whether the loss reads the teacher's stage outputs (not only its logits): such a distiller
    # cannot train from cached teacher logits (trainer.cache_teacher_logits)
    reads_teacher_features: ClassVar[bool] = False

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
        self.epoch, self.epochs = 1, 1
        self._given_teacher_logits: torch.Tensor | None = None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``teacher_logits``: the teacher's logits ``[B, K]`` for this batch, computed beforehand
        (``trainer.cache_teacher_logits``); :meth:`teacher_logits` then returns them instead of
        running the teacher."""
        if teacher_logits is None:
            return super().__call__(x, y)
        if self.reads_teacher_features:
            raise RuntimeError(f"{type(self).__name__} reads the teacher's features: it needs the teacher")
        self._given_teacher_logits = teacher_logits
        try:
            return super().__call__(x, y)
        finally:
            self._given_teacher_logits = None

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
        """The frozen teacher's logits, computed in inference mode (no autograd bookkeeping at all)."""
        if self._given_teacher_logits is not None:
            return self._given_teacher_logits
        assert self.teacher is not None
        with torch.inference_mode():
            logits = self.teacher(x)
        return logits.clone()  # an ordinary tensor again: losses may save it for their backward

    def student_with_features(
        self, x: torch.Tensor, stages: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student logits ``[T, B, K]`` and stage outputs ``[T, B, C, H, W]`` (default: its last stage)."""
        stages = list(stages) if stages is not None else [last_stage(self.student)]
        return self.student.forward_with_features(x, stages)

    def teacher_with_features(
        self, x: torch.Tensor, stages: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher logits ``[B, K]`` and stage outputs ``[B, C, H, W]`` (default: its last stage), no grad."""
        assert self.teacher is not None
        stages = list(stages) if stages is not None else [last_stage(self.teacher)]
        with torch.inference_mode():
            logits, features = self.teacher.forward_with_features(x, stages)
        return logits.clone(), {name: f.clone() for name, f in features.items()}

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before training epoch ``epoch`` (1-based) of ``epochs``.

        Methods with a schedule over training (TKS's ``a_e``) read ``self.epoch`` / ``self.epochs``.
        """
        self.epoch, self.epochs = epoch, epochs

    def seed_noise(self, seed: int) -> None:
        """Seed the generator of any random draw a loss makes (NLD's noise), from the run's seed."""
        self._noise_seed = int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The run's seeded generator on ``device`` (created on first use; one per device)."""
        if not hasattr(self, "_generators"):
            self.seed_noise(0)
        if device not in self._generators:
            gen = torch.Generator(device=device).manual_seed(self._noise_seed)
            saved = getattr(self, "_saved_noise", {}).pop(str(device), None)
            if saved is not None:  # a resumed run continues the noise stream where it stopped
                gen.set_state(saved)
            self._generators[device] = gen
        return self._generators[device]

    def resumable_state(self) -> dict:
        """What ``last.pt`` needs besides the student's weights: added modules and the noise streams."""
        generators = getattr(self, "_generators", {})
        return {
            "modules": [m.state_dict() for m in self.learnable_modules() if m is not self.student],
            "noise": {str(d): g.get_state() for d, g in generators.items()}
            | getattr(self, "_saved_noise", {}),
        }

    def load_resumable_state(self, state: dict) -> None:
        extra = [m for m in self.learnable_modules() if m is not self.student]
        if len(extra) != len(state["modules"]):
            raise ValueError(
                f"{type(self).__name__}: the checkpoint holds {len(state['modules'])} added module(s), "
                f"this distiller has {len(extra)}"
            )
        for module, module_state in zip(extra, state["modules"], strict=True):
            module.load_state_dict(module_state)
        self._generators = {}
        self._saved_noise = dict(state["noise"])
