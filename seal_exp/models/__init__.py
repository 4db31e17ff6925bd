"""Factories for the networks of a composed config; the engine, tests and tools all go through them."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import build, invalid

# the papers train at T <= 20; far beyond, a run's memory grows until the machine runs out
MAX_TIMESTEPS = 1024


def neuron_factory(cfg: DictConfig) -> Callable[[], nn.Module]:
    """A zero-argument constructor of the configured neuron, called once per spiking layer.

    ``neuron.T`` belongs to the group (it is the run's number of timesteps) but not to the neuron.
    """
    T = cfg.neuron.T
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= MAX_TIMESTEPS:
        raise invalid(
            "neuron.T",
            T,
            f"the number of timesteps must be an integer >= 1, at most {MAX_TIMESTEPS}: training keeps every "
            "timestep's activations for backpropagation through time, so memory grows with T",
        )
    node = OmegaConf.masked_copy(cfg.neuron, [k for k in cfg.neuron if k != "T"])
    return build(node, "neuron", probe_partial=True)


def build_student(cfg: DictConfig) -> nn.Module:
    """The spiking student of ``cfg.student``.

    Input channels and class count come from the dataset group, T and the neuron from the neuron group.
    """
    return build(
        cfg.student,
        "student",
        in_channels=cfg.dataset.in_channels,
        num_classes=cfg.dataset.num_classes,
        T=cfg.neuron.T,
        neuron=neuron_factory(cfg),
    )


def build_teacher(cfg: DictConfig) -> nn.Module:
    """The (untrained) ANN teacher of ``cfg.teacher.model`` for this dataset."""
    return build(
        cfg.teacher.model,
        "teacher.model",
        in_channels=cfg.dataset.in_channels,
        num_classes=cfg.dataset.num_classes,
    )
