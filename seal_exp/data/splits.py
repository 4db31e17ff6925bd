"""How a dataset is cut into train / validation / test, identically on every machine.

Splits are index arrays over a base dataset; :class:`TransformedSubset` serves a part with its own
transform, so the validation part of a training set is evaluated without augmentation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataSplits:
    """The parts of a dataset a run needs, plus the fingerprint of how it was cut.

    ``teacher_train`` is the ANN teacher's training part when its augmentation differs from the
    student's (CIFAR: crop + flip only); ``None`` means the same as ``train``. ``time_major`` marks
    event-frame samples ``[T, C, H, W]``, batched as ``[T, B, C, H, W]``. ``val_is_test`` is set when
    no validation part was held out (``dataset.val_fraction=0``, the papers' protocol): the test part
    then also selects the model, and the summary says so. ``normalisation`` is ``(mean, std)`` per
    channel of images whose pixels lie in [0, 1] (``x = (pixels - mean) / std``), so that adversarial
    budgets can be set in pixel units; ``None`` for event frames (counts of events, not pixels).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    split_id: str
    teacher_train: Dataset | None = None
    time_major: bool = False
    val_is_test: bool = False
    in_memory: bool = False
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None


class TransformedSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the sample (the label is kept)."""

    def __init__(self, base: Any, indices: Sequence[int] | np.ndarray, transform: Callable | None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        sample, label = self.base[int(self.indices[i])]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, int(label)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (sorted) of the train, validation and test parts, stratified by class.

    Each class is shuffled by numpy's PCG64 generator (stable across platforms and numpy versions)
    and cut into test, validation and train in that order, so every split keeps the class balance.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held_out)`` indices: ``fraction`` of every class held out (for validation)."""
    kept, held, _ = stratified_split(np.asarray(labels), fraction, 0.0, seed)
    return kept, held


def random_split_indices(n: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``torch.utils.data.random_split(range(n), [n_train, n - n_train], generator=seed)`` cut.

    This is the published CIFAR10-DVS protocol (9000 / 1000 with seed 42): the first ``n_train``
    entries of ``torch.randperm(n)`` under a generator seeded with ``seed`` train, the rest test.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[:n_train].astype(np.int64), perm[n_train:].astype(np.int64)


def split_fingerprint(*index_arrays: np.ndarray) -> str:
    """A short hash of the split, recorded with every run so results on different machines compare."""
    h = hashlib.sha256()
    for a in index_arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:12]
