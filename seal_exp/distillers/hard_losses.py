"""The supervised ("hard") losses on per-timestep logits ``[T, B, K]``; each distiller picks one."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tet_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over timesteps of the per-timestep cross-entropy (one CE over the ``T·B`` rows)."""
    T = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat(T))


def mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the time-mean logits."""
    return F.cross_entropy(logits.mean(0), labels)


def tet(logits: torch.Tensor, labels: torch.Tensor, lam: float = 1e-3, phi: float = 1.0) -> torch.Tensor:
    """TET: ``(1-λ)·tet_ce + λ·mean((Z-φ)²)``, the per-timestep CE with a pull of the logits towards φ."""
    return (1 - lam) * tet_ce(logits, labels) + lam * (logits - phi).pow(2).mean()
