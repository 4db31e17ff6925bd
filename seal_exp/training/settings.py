"""How long a model trains and on how much data (the student's trainer, the teacher's recipe), and where
and how the student's run goes (device, loaders, checkpoints, fast paths): built from ``conf/trainer``
and ``teacher.recipe``, checked when built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seal_exp.config import invalid, require, require_finite
from seal_exp.models.speed import COMPILE_TARGETS, PRECISIONS


def _is_count(value: object) -> bool:
    """An integer >= 1 (not a bool, not a float: a batch of 1.5 fails only once the loader is built)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class LoopSettings:
    """How long a model trains and on how much data: the student's trainer and the teacher's recipe."""

    epochs: int
    batch_size: int
    eval_batch_size: int = 256
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.epochs, int) and self.epochs >= 0,
            "epochs",
            self.epochs,
            "use an integer >= 1 (0 only for a teacher whose pretrained weights are used as they are)",
        )
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            require(_is_count(value), name, value, "use an integer >= 1")
        for name in ("limit_train_batches", "limit_eval_batches"):
            value = getattr(self, name)
            require(value is None or _is_count(value), name, value, "use null for no limit, or a count >= 1")


@dataclass(frozen=True)
class TrainerSettings(LoopSettings):
    """The student's loop plus where and how it runs."""

    device: str = "auto"
    num_workers: int | str = "auto"
    pin_memory: bool | str = "auto"
    persistent_workers: bool = True
    test_every_epoch: bool = True
    progress: bool = True
    progress_every: int = 20
    figures: bool = True
    checkpoint_every_steps: int | None = None
    sync_batchnorm: bool = False
    dist_backend: str = "auto"
    dist_timeout_min: float = 30.0
    precision: str = "fp32"
    channels_last: bool = True
    compile: str = "none"
    compile_mode: str = "default"
    cache_teacher_logits: bool | str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.cache_teacher_logits in ("auto", True, False),
            "cache_teacher_logits",
            self.cache_teacher_logits,
            "use auto (when augmentation is off and the distiller reads only the teacher's logits), "
            "true or false",
        )
        require(
            self.dist_backend in ("auto", "nccl", "gloo"),
            "dist_backend",
            self.dist_backend,
            "use auto (nccl on GPUs, gloo on CPUs), nccl or gloo",
        )
        require_finite(dist_timeout_min=self.dist_timeout_min)
        require(self.dist_timeout_min > 0, "dist_timeout_min", self.dist_timeout_min, "must be > 0 minutes")
        require(
            self.precision in PRECISIONS,
            "precision",
            self.precision,
            f"use one of {', '.join(PRECISIONS)} (bf16: autocast with float32 losses and membranes)",
        )
        require(
            self.compile in COMPILE_TARGETS,
            "compile",
            self.compile,
            f"use one of {', '.join(COMPILE_TARGETS)}",
        )
        require(
            self.compile_mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
            "compile_mode",
            self.compile_mode,
            "use a torch.compile mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs",
        )
        self._check_where_it_runs()

    def _check_where_it_runs(self) -> None:
        """Device, loaders, checkpoints and display (the first part checked how it computes)."""
        require(
            self.checkpoint_every_steps is None
            or (isinstance(self.checkpoint_every_steps, int) and self.checkpoint_every_steps >= 1),
            "checkpoint_every_steps",
            self.checkpoint_every_steps,
            "use null (last.pt at every epoch's end only) or a step count >= 1",
        )
        require(self.epochs >= 1, "epochs", self.epochs, "train the student for at least one epoch")
        require(
            isinstance(self.device, str)
            and (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")),
            "device",
            self.device,
            "use auto, cpu, cuda or cuda:N",
        )
        require(
            self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0),
            "num_workers",
            self.num_workers,
            "use auto (0 for in-memory data, else up to 8) or an integer >= 0",
        )
        require(
            self.pin_memory == "auto" or isinstance(self.pin_memory, bool),
            "pin_memory",
            self.pin_memory,
            "use auto (pinned when CUDA is present), true or false",
        )
        require(_is_count(self.progress_every), "progress_every", self.progress_every, "use an integer >= 1")
        require(isinstance(self.figures, bool), "figures", self.figures, "give true or false")

    def resolve_device(self) -> torch.device:
        """The device to run on; one this machine lacks is refused now, before any data is read."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        kind, _, index = self.device.partition(":")
        fallback = "use trainer.device=auto (CUDA when present, else the CPU) or trainer.device=cpu"
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise invalid(
                    "trainer.device", self.device, f"CUDA is not available on this machine: {fallback}"
                )
            count = torch.cuda.device_count()
            if index and not (index.isdigit() and int(index) < count):
                raise invalid(
                    "trainer.device",
                    self.device,
                    f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}: pick one of them, "
                    "or use trainer.device=cuda",
                )
        if kind == "mps" and not torch.backends.mps.is_available():
            raise invalid("trainer.device", self.device, f"MPS is not available on this machine: {fallback}")
        return torch.device(self.device)
